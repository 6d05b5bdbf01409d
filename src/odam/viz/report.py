"""Reports for people to read: ``odam evaluate detector``'s tables (the page of ``odam explain`` is the explorer,
:mod:`odam.viz.explorer`).

Each function returns text (HTML or Markdown) and writes nothing: the caller decides where it goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def format_metric(value: float | None) -> str:
    """A metric with three decimals, or ``n/a`` for one that was not measured.

    Example:
        >>> format_metric(0.12345), format_metric(None)
        ('0.123', 'n/a')
    """
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class DetectorRow:
    """One evaluated detector, as :func:`detector_report` shows it.

    Attributes:
        name: how the user named it (a bundled name or a checkpoint directory).
        architecture: its model spec, e.g. ``torchvision:fcos_resnet50_fpn``.
        backbone: its backbone, or ``-``.
        parameters: its number of parameters.
        weights_bytes: the size of its weights file.
        training_data: the data it was trained on, or ``-``.
        epochs: the epochs it was trained for, or ``-``.
        training_seconds: its recorded training time, or ``None`` when not recorded.
        mAP: COCO mAP (``None``: not measured).
        AP50: COCO AP at IoU 0.5 (``None``: not measured).
        nms_ap50: AP50 at each final-NMS IoU threshold of the report's ``nms_thresholds``.
        errors: detection counts by kind (``true``, ``duplicate``, ``mislocalised``, ``background``, ``precision``,
            ``recall``) at each score threshold, as :func:`odam.train.evaluate.error_breakdown` returns them.
    """

    name: str
    architecture: str
    backbone: str
    parameters: int
    weights_bytes: int
    training_data: str
    epochs: str
    training_seconds: float | None
    mAP: float | None
    AP50: float | None
    nms_ap50: Sequence[float | None] = ()
    errors: Mapping[float, Mapping[str, Any]] = field(default_factory=dict)


def detector_report(
    rows: Sequence[DetectorRow],
    *,
    data: str,
    images: int,
    nms_thresholds: Sequence[float] = (),
    oracle_ap50: Sequence[float | None] | None = None,
    error_objects: int | None = None,
) -> str:
    """The Markdown of ``odam evaluate detector``: one table row per detector, then the optional tables.

    Args:
        rows: the detectors, in the order shown.
        data: the dataset's name as the user gave it; ``images``: its number of images.
        nms_thresholds: with any, a second table: each row's ``nms_ap50`` under these thresholds.
        oracle_ap50: a last row of that table, for exact ground-truth boxes with random scores.
        error_objects: with a number (of objects that are not ignored), a third table: each row's ``errors``.

    Returns:
        The Markdown text, with no newline at the end.

    Example:
        >>> row = DetectorRow("m", "torchvision:fcos", "resnet18", 2_000_000, 8_000_000, "d", "3", 120.0, 0.25, None)
        >>> print(detector_report([row], data="d", images=10))
        | model | architecture | backbone | parameters | weights file | training | epochs | training time | mAP | AP50 |
        |---|---|---|---|---|---|---|---|---|---|
        | m | torchvision:fcos | resnet18 | 2.00 M | 8.0 MB | d | 3 | 2.0 min | 0.250 | n/a |
        <BLANKLINE>
        Evaluated on `d` (10 images) by pycocotools' COCOeval.
    """
    lines = ["| model | architecture | backbone | parameters | weights file | training | epochs "
             "| training time | mAP | AP50 |", "|---|---|---|---|---|---|---|---|---|---|"]
    swept = ["| model | " + " | ".join(f"NMS {t:g}" for t in nms_thresholds) + " |",
             "|---|" + "---|" * len(nms_thresholds)]
    errors = ["| model | score >= | detections | true | duplicate | mislocalised | background | precision "
              "| recall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        took = "not recorded" if r.training_seconds is None else f"{r.training_seconds / 60:.1f} min"
        lines.append(f"| {r.name} | {r.architecture} | {r.backbone} | {r.parameters / 1e6:.2f} M "
                     f"| {r.weights_bytes / 1e6:.1f} MB | {r.training_data} | {r.epochs} | {took} "
                     f"| {format_metric(r.mAP)} | {format_metric(r.AP50)} |")
        swept.append(f"| {r.name} | " + " | ".join(map(format_metric, r.nms_ap50)) + " |")
        for t, c in r.errors.items():
            found = c["true"] + c["duplicate"] + c["mislocalised"] + c["background"]
            errors.append(f"| {r.name} | {t:g} | {found} | {c['true']} | {c['duplicate']} | {c['mislocalised']} "
                          f"| {c['background']} | {c['precision']:.3f} | {c['recall']:.3f} |")
    if oracle_ap50 is not None:
        swept.append("| exact ground-truth boxes, random scores | " + " | ".join(map(format_metric, oracle_ap50))
                     + " |")
    text = "\n".join(lines) + f"\n\nEvaluated on `{data}` ({images} images) by pycocotools' COCOeval."
    if nms_thresholds:
        text += "\n\nAP50 with other final-NMS IoU thresholds:\n\n" + "\n".join(swept)
    if error_objects is not None:
        text += ("\n\nDetections by kind (see `odam.train.evaluate.error_breakdown`) out of "
                 f"{error_objects} objects that are not ignored:\n\n" + "\n".join(errors))
    return text
