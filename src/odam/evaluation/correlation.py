"""Heat-map correlation between predictions (paper Fig. 4): do two predictions' ODAM maps say they look at the
same object?

For each image, the detector's predictions *before* NMS that score above ``score_threshold`` are explained by
ODAM (score target, default settings). Each is assigned to the ground-truth object it overlaps most, if that IoU
is at least ``assign_iou`` (ignored objects never take predictions). Two kinds of pairs are then compared:

* **same object**: two predictions assigned to the same object;
* **different, overlapping objects**: predictions assigned to two objects whose ground-truth boxes have
  IoU > ``overlap_iou``.

Maps are block-averaged to a short edge of ``short_edge`` cells and compared by Pearson correlation (the
normalised correlation: cosine of the mean-centred maps) and by plain cosine (what Odam-Train's loss uses), with
the very functions Odam-NMS decides on (:mod:`odam.heatmaps`). A constant map (e.g. all zero;
:func:`odam.heatmaps.undefined`) has no Pearson correlation and its pairs are left out of the Pearson means; for
the cosine an all-zero map counts as 0. The pair counts reported are the cosine's.
A model that discriminates objects well has a high same-object correlation, a low different-object one, and a
wide gap between them.

Per-image sums are written to ``images.jsonl`` as they are computed, so a rerun resumes. Under ``torchrun`` the
images are shared among the ranks (every ``world``-th), each rank writes ``images.rank{r}.jsonl`` and rank 0
writes the summary, the same as one process's (:mod:`odam.evaluation.journal`, docs/EVALUATION.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm import tqdm

from odam._atomic import atomic_write
from odam._distributed import process_group, shard, sync_point
from odam.evaluation.config import CorrelationConfig
from odam.evaluation.journal import Journal, check_settings, image_key, image_rows
from odam.heatmaps import correlation, heatmap_vectors, undefined

KINDS = ("same", "different")
MEASURES = ("pearson", "cosine")


def correlations(vectors: Tensor) -> dict[str, Tensor]:
    """Pairwise ``pearson`` and ``cosine`` similarity (``Tensor[N, N]`` float32 each) of heat-map vectors
    ``Tensor[N, D]`` (:func:`odam.heatmaps.heatmap_vectors`), as the study counts them: by
    :func:`odam.heatmaps.correlation`, except that a constant vector (:func:`odam.heatmaps.undefined`) has no
    Pearson correlation, so its row and column are NaN, left out of the means.

    Example:
        >>> c = correlations(torch.tensor([[1.0, 0, 0, 1], [2.0, 0, 0, 2], [0.0, 1, 1, 0], [3.0, 3, 3, 3]]))
        >>> c["pearson"][0].tolist(), c["cosine"][0, 2].item(), c["cosine"][0, 3].item()
        ([1.0, 1.0, -1.0, nan], 0.0, 0.7071067690849304)
    """
    pearson = correlation(vectors)
    flat = undefined(vectors)
    pearson[flat] = float("nan")
    pearson[:, flat] = float("nan")
    return {"pearson": pearson, "cosine": correlation(vectors, centred=False)}


def pairs(pred_boxes: Tensor, gt_boxes: Tensor, gt_ignore: Tensor, assign_iou: float, overlap_iou: float
          ) -> dict[str, Tensor]:
    """Index pairs ``Tensor[P, 2]`` (i < j) of predictions on the ``same`` object and on ``different``,
    overlapping objects, from predicted boxes ``[N, 4]`` and ground truth ``[G, 4]`` (with ``gt_ignore[G]``).

    Example:
        >>> gt = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]])
        >>> pred = torch.tensor([[0.0, 0, 10, 10], [1, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 61]])
        >>> p = pairs(pred, gt, torch.zeros(3, dtype=torch.bool), 0.5, 0.3)
        >>> p["same"].tolist(), p["different"].tolist()
        ([[0, 1]], [[0, 2], [1, 2]])
    """
    n = len(pred_boxes)
    empty = torch.zeros(0, 2, dtype=torch.int64, device=pred_boxes.device)
    keep = torch.where(~gt_ignore)[0]
    if n < 2 or len(keep) == 0:
        return {"same": empty, "different": empty}
    gt = gt_boxes[keep]
    best, which = box_iou(pred_boxes, gt).max(1)
    assigned = torch.where(best >= assign_iou, which, torch.full_like(which, -1))
    i, j = torch.triu_indices(n, n, 1, device=pred_boxes.device)
    both = (assigned[i] >= 0) & (assigned[j] >= 0)
    same = both & (assigned[i] == assigned[j])
    gt_iou = box_iou(gt, gt)
    different = both & (assigned[i] != assigned[j])
    different &= gt_iou[assigned[i].clamp_min(0), assigned[j].clamp_min(0)] > overlap_iou
    return {"same": torch.stack([i[same], j[same]], 1), "different": torch.stack([i[different], j[different]], 1)}


def run(config: CorrelationConfig, out: Path, *, device: torch.device | str = "cpu",
        progress: bool = True) -> dict | None:
    """Measure the correlations over the first ``max_images`` images of ``config.data``; returns the summary,
    also written to ``out/summary.json`` and ``out/summary.md``.

    Under ``torchrun`` each rank measures every ``world``-th image (of the first ``max_images``) that no journal
    holds yet, and rank 0 summarises them all once every rank is done; the other ranks return ``None``.
    """
    import odam
    from odam.data import read_dataset
    from odam.models import configure

    with process_group(device) as (rank, world, device):
        with sync_point(world):
            config.check()
            data = read_dataset(config.data)
            records = data.images[: config.max_images]
            path = out / "images.jsonl"
            detector = odam.load_detector(config.model)
            configure(detector.model, score_threshold=config.score_threshold, nms_threshold=1.0,
                      max_detections=config.max_predictions)
            detector.model.to(device)
        with sync_point(world):  # every rank has checked the settings, the data and the model: now claim the folder
            if rank == 0:
                check_settings(out, asdict(config), asdict(CorrelationConfig(data="", model="")), [path])
        with sync_point(world):
            journal = Journal(path, image_key, rank)
            explainer = odam.ODAM(detector)
            todo = [r for r in shard(records, rank, world) if r.id not in journal]
            for record in tqdm(todo, desc="correlation", unit="image", disable=not (progress and rank == 0),
                               dynamic_ncols=True):
                journal.extend([_measure(config, explainer, record, device)])
    if rank != 0:
        return None
    rows = image_rows(path)
    summary = summarize(config, [rows[r.id] for r in records if r.id in rows])
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / "summary.md", markdown([summary]) + "\n")
    return summary


def _measure(config: CorrelationConfig, explainer: Any, record: Any, device: torch.device) -> dict:
    """One image's record: its prediction count and, per kind of pair and measure, the sum and the count."""
    image = record.load_image().to(device)
    explanation = explainer.explain(image)
    dets = explanation.detections
    gt = record.clipped_boxes_tensor(dets.boxes.device)
    ignore = torch.as_tensor(np.asarray(record.ignore, bool), device=gt.device)
    found = pairs(dets.boxes, gt, ignore, config.assign_iou, config.overlap_iou)
    row: dict = {"image_id": record.id, "predictions": len(dets)}
    if len(dets) >= 2:
        sims = correlations(heatmap_vectors(explanation.maps[:, 0], config.short_edge))
    for kind in KINDS:
        idx = found[kind]
        for measure in MEASURES:
            values = sims[measure][idx[:, 0], idx[:, 1]] if len(idx) else torch.zeros(0)
            values = values[~torch.isnan(values)]
            row[f"{kind}_{measure}_sum"] = float(values.double().sum())
            row[f"{kind}_{measure}_n"] = len(values)
    return row


def summarize(config: CorrelationConfig, rows: list[dict]) -> dict:
    """Means over all pairs of all images, and the gap same - different, per measure."""
    summary: dict = {"data": config.data, "model": config.model, "images": len(rows),
                     "predictions_per_image": float(np.mean([r["predictions"] for r in rows])) if rows else 0.0}
    for measure in MEASURES:
        for kind in KINDS:
            n = sum(r[f"{kind}_{measure}_n"] for r in rows)
            total = sum(r[f"{kind}_{measure}_sum"] for r in rows)
            summary[f"{kind}_{measure}"] = total / n if n else math.nan
            if measure == "cosine":  # defined for every pair (Pearson is not for a constant map)
                summary[f"{kind}_pairs"] = n
        summary[f"gap_{measure}"] = summary[f"same_{measure}"] - summary[f"different_{measure}"]
    return summary


def markdown(summaries: list[dict]) -> str:
    """One table row per run."""
    lines = ["| model | images | predictions per image | same-object pairs | different-object pairs "
             "| Pearson: same | different | **gap** | cosine: same | different | **gap** |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {Path(s['model']).name} | {s['images']} | {s['predictions_per_image']:.1f} | "
                     f"{s['same_pairs']} | {s['different_pairs']} | {s['same_pearson']:.3f} | "
                     f"{s['different_pearson']:.3f} | **{s['gap_pearson']:.3f}** | {s['same_cosine']:.3f} | "
                     f"{s['different_cosine']:.3f} | **{s['gap_cosine']:.3f}** |")
    return "\n".join(lines)

