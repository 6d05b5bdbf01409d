"""Crowd statistics of a dataset, as reported in docs/SYNTHCROWD.md (``odam data stats``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odam._atomic import atomic_write
from odam.data.dataset import Dataset

#: Occlusion bins as in CrowdHuman's paper: bare, partial and heavy occlusion.
OCCLUSION_BINS: tuple[float, ...] = (0.0, 0.3, 0.7, 1.0)


@dataclass(frozen=True)
class CrowdStatistics:
    """Per-dataset crowd statistics.

    Attributes:
        name: the dataset's name (its folder).
        images: number of images.
        objects_per_image: annotated objects per image (ignored ones included).
        per_class: objects per image of each category.
        ignored_share: share of objects marked ignore.
        overlap_pairs_per_image: pairs of same-class objects whose full boxes have IoU > 0.5, per image.
        occlusion: share of objects in each :data:`OCCLUSION_BINS` bin of ``1 - area(vbox) / area(fbox)``.
        occlusion_histogram: the same in ten bins of width 0.1.
    """

    name: str
    images: int
    objects_per_image: float
    per_class: dict[str, float]
    ignored_share: float
    overlap_pairs_per_image: float
    occlusion: tuple[float, ...]
    occlusion_histogram: tuple[float, ...]


def _pairwise_iou(b: np.ndarray) -> np.ndarray:
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod((rb - lt).clip(min=0), axis=2)
    return inter / (area[:, None] + area[None, :] - inter)


def crowd_statistics(dataset: Dataset, name: str = "") -> CrowdStatistics:
    """Measure ``dataset``.

    Occlusion uses the visible box where there is one: ``1 - area(vbox) / area(fbox)``, the box-based ratio
    CrowdHuman reports; objects without a visible box are left out of the histograms.

    Example:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from odam.data import Dataset, ImageRecord
        >>> boxes = np.array([[0, 0, 10, 20], [2, 0, 12, 20]], np.float32)  # IoU 8/12
        >>> vboxes = np.array([[0, 0, 10, 20], [2, 0, 12, 10]], np.float32)  # second half hidden
        >>> rec = ImageRecord(1, Path("a.png"), 32, 32, boxes, np.array([1, 1]), np.array([False, False]),
        ...                   vboxes, vboxes * np.nan, None, np.array([1, 2]))
        >>> s = crowd_statistics(Dataset([rec], ("person",)))
        >>> s.objects_per_image, s.overlap_pairs_per_image, s.occlusion
        (2.0, 1.0, (0.5, 0.5, 0.0))
    """
    n = max(len(dataset), 1)
    counts = np.zeros(len(dataset.categories))
    pairs, ignored, total = 0, 0, 0
    occlusion: list[float] = []
    for rec in dataset.images:
        labels = np.asarray(rec.labels)
        counts += np.bincount(labels - 1, minlength=len(dataset.categories))[: len(dataset.categories)]
        ignored += int(np.asarray(rec.ignore).sum())
        total += len(rec)
        for label in np.unique(labels):
            b = np.asarray(rec.boxes, np.float64)[labels == label]
            if len(b) > 1:
                pairs += int(np.triu(_pairwise_iou(b) > 0.5, 1).sum())
        v = np.asarray(rec.vboxes, np.float64)
        has = ~np.isnan(v).any(1)
        if has.any():
            f = np.asarray(rec.boxes, np.float64)[has]
            ratio = np.prod(v[has, 2:] - v[has, :2], 1) / np.prod(f[:, 2:] - f[:, :2], 1)
            occlusion += list(np.clip(1.0 - ratio, 0.0, 1.0))
    occ = np.asarray(occlusion)
    m = max(len(occ), 1)
    coarse = np.histogram(occ, bins=OCCLUSION_BINS)[0] / m
    fine = np.histogram(occ, bins=np.linspace(0, 1, 11))[0] / m
    return CrowdStatistics(
        name=name, images=len(dataset), objects_per_image=round(total / n, 2),
        per_class={c: round(float(k) / n, 2) for c, k in zip(dataset.categories, counts, strict=True)},
        ignored_share=round(ignored / max(total, 1), 3), overlap_pairs_per_image=round(pairs / n, 2),
        occlusion=tuple(round(float(x), 3) for x in coarse),
        occlusion_histogram=tuple(round(float(x), 3) for x in fine),
    )


def markdown(rows: list[CrowdStatistics]) -> str:
    """The statistics as two Markdown tables: density and overlap, and the occlusion histogram."""
    lines = ["| dataset | images | objects / image | per class / image | ignored | pairs IoU>0.5 / image "
             "| occlusion <0.3 | 0.3-0.7 | >=0.7 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{c} {v:.2f}" for c, v in r.per_class.items())
        lines.append(f"| {r.name} | {r.images} | {r.objects_per_image:.2f} | {per} | {r.ignored_share:.1%} "
                     f"| {r.overlap_pairs_per_image:.2f} | " + " | ".join(f"{x:.1%}" for x in r.occlusion) + " |")
    lines += ["", "Occlusion histogram (share of objects per bin of 1 - area(vbox) / area(fbox)):", "",
              "| dataset | " + " | ".join(f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)) + " |",
              "|---|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.name} | " + " | ".join(f"{x:.1%}" for x in r.occlusion_histogram) + " |")
    return "\n".join(lines)


def write_block(path: Path, key: str, text: str) -> None:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path`` (appended if absent)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in old and end in old:
        new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    atomic_write(path, new)  # a Ctrl-C never leaves the user's Markdown file cut
