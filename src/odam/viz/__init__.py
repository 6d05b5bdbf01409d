"""What odam draws and writes for people to read.

Heat-map overlays and per-detection panels (:mod:`odam.viz.overlays`): :func:`overlay`, :func:`panel`,
:func:`save_overlay`, :func:`save_panel`.

Reports (:mod:`odam.viz.report`): :func:`explanations_html`, the page ``odam explain`` writes beside its panels,
and :func:`detector_report`, the Markdown tables of ``odam evaluate detector``.

Drawing uses matplotlib's object API with the Agg canvas, never ``pyplot``: it works headless and leaves
matplotlib's global state alone.
"""

from odam.viz.overlays import overlay, panel, save_overlay, save_panel
from odam.viz.report import DetectorRow, detector_report, explanations_html, format_metric

__all__ = [
    "DetectorRow",
    "detector_report",
    "explanations_html",
    "format_metric",
    "overlay",
    "panel",
    "save_overlay",
    "save_panel",
]
