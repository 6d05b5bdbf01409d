"""What odam draws and writes for people to read.

Heat-map overlays, per-detection panels and the numbered overview of an image (:mod:`odam.viz.overlays`):
:func:`overlay`, :func:`panel`, :func:`overview`, :func:`save_overlay`, :func:`save_panel`, :func:`save_overview`;
their colours (:mod:`odam.viz.colors`).

Reports (:mod:`odam.viz.report`): :func:`explanations_html`, the page ``odam explain`` writes beside its panels,
and :func:`detector_report`, the Markdown tables of ``odam evaluate detector``.

Drawing uses matplotlib's object API with the Agg canvas, never ``pyplot``: it works headless and leaves
matplotlib's global state alone.
"""

from odam.viz.overlays import overlay, overview, panel, save_overlay, save_overview, save_panel
from odam.viz.report import DetectorRow, detector_report, explanations_html, format_metric

__all__ = [
    "DetectorRow",
    "detector_report",
    "explanations_html",
    "format_metric",
    "overlay",
    "overview",
    "panel",
    "save_overlay",
    "save_overview",
    "save_panel",
]
