"""What odam draws and writes for people to read.

The explorer (:mod:`odam.viz.explorer`): :func:`explorer_image` and :func:`explorer_html`, the self-contained
interactive page ``odam explain`` writes as ``index.html``; :func:`explanation_html`, the same page for one
explanation, which a notebook shows for an :class:`~odam.Explanation` (installed here, on import, with
:func:`odam.structures.set_html_view`); :func:`read_explorer`, its data read back.

Heat-map overlays, per-detection panels and the numbered overview of an image (:mod:`odam.viz.overlays`):
:func:`overlay`, :func:`panel`, :func:`overview`, :func:`save_overlay`, :func:`save_panel`, :func:`save_overview`;
their colours (:mod:`odam.viz.colors`).

Reports (:mod:`odam.viz.report`): :func:`detector_report`, the Markdown tables of ``odam evaluate detector``.

Drawing uses matplotlib's object API with the Agg canvas, never ``pyplot``: it works headless and leaves
matplotlib's global state alone.
"""

from odam.structures import Explanation, set_html_view
from odam.viz.explorer import explanation_html, explorer_html, explorer_image, read_explorer
from odam.viz.overlays import overlay, overview, panel, save_overlay, save_overview, save_panel
from odam.viz.report import DetectorRow, detector_report, format_metric


def _notebook_view(explanation: Explanation) -> str:
    return explanation_html(explanation.image, explanation)


set_html_view(_notebook_view)

__all__ = [
    "DetectorRow",
    "detector_report",
    "explanation_html",
    "explorer_html",
    "explorer_image",
    "format_metric",
    "overlay",
    "overview",
    "panel",
    "read_explorer",
    "save_overlay",
    "save_overview",
    "save_panel",
]
