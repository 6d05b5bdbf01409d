"""``odam evaluate nms``: NMS, Soft-NMS, FeatureNMS and Odam-NMS on one crowd dataset (paper Sec. 4.3, Tables 5,
7 to 9 and Fig. 9).

Per image, the detector runs once and gives its candidates before NMS: those above its score threshold, the
``max_candidates`` best (:class:`odam.nms.Suppression`). Every method then suppresses the *same* candidates,
class by class, with ``T_iou = iou_threshold`` for NMS and Odam-NMS, Gaussian Soft-NMS (sigma 0.5, final
threshold 0.05) and FeatureNMS's IoU range (0.1, 0.9) and distance 1.0, as in the paper; the first
``detections_per_img`` survivors are the detections. FeatureNMS needs a model with an embedding head
(``feature_model``), so it has its own candidates. The metrics are :mod:`odam.metrics.crowd`'s.

Seconds per image are for the whole pipeline of each method, as the paper's Table 5 times them: the detector's
forward pass (same for all), plus the ODAM maps of every candidate for Odam-NMS (or the embeddings for
FeatureNMS), plus the suppression itself. The first image of each process is not timed (warm-up); on CUDA the
clock is read after the device has finished. Each image's row records its device.

``sweep=True`` also runs Odam-NMS over ``T_l`` in 0, 0.1, ..., 0.5 and ``T_h`` in 0.5, 0.6, ..., 1.0 (Fig. 9) on the
same maps; ``T_l = 0, T_h = 1`` is the point the paper calls classical NMS.

Per image, the candidates and the indices each method keeps are written to ``images.jsonl`` as they are computed,
so a rerun resumes. Under ``torchrun`` the images are shared among the ranks (every ``world``-th), each rank writes
``images.rank{r}.jsonl`` (its first image untimed) and rank 0 writes the summary, the same as one process's apart
from the seconds (:mod:`odam.evaluation.journal`, docs/EVALUATION.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from odam._atomic import atomic_path, atomic_write
from odam._distributed import process_group, shard, sync_point
from odam.evaluation.config import NmsConfig
from odam.evaluation.journal import Journal, check_settings, image_key, image_rows
from odam.metrics.crowd import CrowdResult, DetectionSet, GroundTruth, crowd_metrics

SWEEP_LOW = tuple(round(0.1 * i, 1) for i in range(6))
SWEEP_HIGH = tuple(round(0.5 + 0.1 * i, 1) for i in range(6))
LABELS = {"nms": "NMS", "soft-nms": "Soft-NMS", "feature-nms": "FeatureNMS", "odam-nms": "Odam-NMS"}


def run(config: NmsConfig, out: Path, *, device: torch.device | str = "cpu", progress: bool = True) -> dict | None:
    """Evaluate ``config`` over its dataset; returns the summary, also written to ``out/summary.json``.

    Under ``torchrun`` each rank runs every ``world``-th image (of the first ``max_images``) that no journal holds
    yet, and rank 0 summarises them all once every rank is done; the other ranks return ``None``.
    """
    import odam
    from odam.data import read_dataset

    with process_group(device) as (rank, world, device):
        with sync_point(world):
            config.check()
            data = read_dataset(config.data)
            if len(data.categories) != 1:
                raise ValueError(f"evaluate nms measures one class (CrowdHuman's person); {config.data} has "
                                 f"{len(data.categories)} categories: {', '.join(data.categories)}")
            records = data.images[: config.max_images] if config.max_images else data.images
            path = out / "images.jsonl"
            detector = odam.load_detector(config.model, nms=config.suppression("nms"))
            detector.model.to(device)
            featurer = None
            if "feature-nms" in config.methods:
                featurer = odam.load_detector(config.feature_model or config.model,
                                              nms=config.suppression("feature-nms"))
                if not isinstance(getattr(featurer.model, "embedding_head", None), torch.nn.Module):
                    raise ValueError(f"feature-nms needs a model with an embedding head; "
                                     f"{config.feature_model or config.model} has none (pass --feature-model, "
                                     "trained with 'odam train --feature-embedding')")
                featurer.model.to(device)
        with sync_point(world):  # every rank has checked the settings, the data and the models: now claim the folder
            if rank == 0:
                check_settings(out, asdict(config), asdict(NmsConfig(data="", model="")), [path])
        with sync_point(world):
            journal = Journal(path, image_key, rank)
            todo = [r for r in shard(records, rank, world) if r.id not in journal]
            _suppress_all(config, detector, featurer, todo, journal, torch.device(device), progress and rank == 0)
    if rank != 0:
        return None
    rows = image_rows(path)
    rows = [rows[r.id] for r in records if r.id in rows]
    summary = summarize(config, records, rows)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if config.sweep:
        write_sweep(summary, out)
    return summary


def _suppress_all(config: NmsConfig, detector: Any, featurer: Any, todo: list, journal: Journal,
                  device: torch.device, progress: bool) -> None:
    """Run every method on each image of ``todo`` and add the image's record to ``journal``."""
    import odam
    from odam.nms import decide

    explainer = odam.ODAM(detector.detector, frozen_norm=config.frozen_norm)
    cap = detector.max_detections
    warm = True  # the first image of each process is not timed

    def clock() -> float:  # wall time after the device has finished what was queued
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for record in tqdm(todo, desc=f"nms {Path(config.model).name}", unit="image", disable=not progress,
                       dynamic_ncols=True):
        image = record.load_image()
        row: dict = {"image_id": record.id, "device": str(device), "seconds": {}, "keep": {}}
        started = clock()
        trace = detector.trace(image, candidates=True, max_candidates=config.max_candidates)
        cands = trace.detections
        t_trace = clock() - started
        row["candidates"] = _boxes(cands.boxes, cands.scores, cands.labels)
        vectors = None
        if "odam-nms" in config.methods or config.sweep:
            started = clock()
            vectors = explainer.vectors(trace, cands, config.short_edge)
            t_maps = clock() - started
        for method in config.methods:
            if method == "feature-nms":
                continue
            started = clock()
            decided = decide(cands, config.suppression(method), vectors=vectors, max_detections=cap)
            keep, scores = decided.keep, decided.scores[decided.keep]
            t = clock() - started
            row["seconds"][method] = t_trace + t + (t_maps if method == "odam-nms" else 0.0)
            row["keep"][method] = keep.tolist()
            if method == "soft-nms":
                row["soft_scores"] = [round(float(s), 6) for s in scores]
        if featurer is not None:
            started = clock()
            ftrace = featurer.trace(image, candidates=True, max_candidates=config.max_candidates)
            keep = featurer.suppress(ftrace).keep
            row["seconds"]["feature-nms"] = clock() - started
            row["feature_candidates"] = _boxes(ftrace.detections.boxes, ftrace.detections.scores,
                                               ftrace.detections.labels)
            row["keep"]["feature-nms"] = keep.tolist()
        if config.sweep:
            row["sweep"] = {}
            for lo in SWEEP_LOW:
                for hi in SWEEP_HIGH:
                    s = replace(config.suppression("odam-nms"), low=lo, high=hi)
                    row["sweep"][f"{lo:g},{hi:g}"] = decide(cands, s, vectors=vectors, max_detections=cap).keep.tolist()
        row["timed"] = not warm
        warm = False
        journal.extend([row])


def ground_truth(records: list) -> dict[str, GroundTruth]:
    """Crowd-metric ground truth of dataset records (full boxes clipped to the image, their ignore flags)."""
    out = {}
    for r in records:
        boxes = r.clipped_boxes.astype(np.float64)  # float32 boxes: clipping them in float64 gives the same values
        out[str(r.id)] = GroundTruth(boxes, np.asarray(r.ignore, bool))
    return out


def detections(rows: list[dict], method: str, sweep_key: str | None = None) -> dict[str, DetectionSet]:
    """Each image's detections by ``method`` (or by Odam-NMS at a sweep point ``"T_l,T_h"``)."""
    out = {}
    for row in rows:
        cands = np.asarray(row["feature_candidates" if method == "feature-nms" else "candidates"],
                           np.float64).reshape(-1, 6)
        keep = row["sweep"][sweep_key] if sweep_key else row["keep"][method]
        scores = np.asarray(row["soft_scores"]) if method == "soft-nms" and not sweep_key else cands[keep, 4]
        out[str(row["image_id"])] = DetectionSet(cands[keep, :4], np.asarray(scores, np.float64).reshape(-1))
    return out


def summarize(config: NmsConfig, records: list, rows: list[dict]) -> dict:
    """Metrics per method (and per sweep point), over the images in ``rows``."""
    ids = {row["image_id"] for row in rows}
    gt = ground_truth([r for r in records if r.id in ids])
    summary: dict = {"data": config.data, "model": config.model, "feature_model": config.feature_model,
                     "images": len(rows), "candidates_per_image": _mean([len(r["candidates"]) for r in rows]),
                     "devices": sorted({r.get("device", "cpu") for r in rows}), "methods": {}}
    for method in config.methods:
        result = crowd_metrics(gt, detections(rows, method))
        timed = [r["seconds"][method] for r in rows if r.get("timed", True)]
        summary["methods"][method] = {**asdict(result), "seconds": _mean(timed)}
    if config.sweep and rows and all("sweep" in r for r in rows):
        summary["sweep"] = {key: _short(crowd_metrics(gt, detections(rows, "odam-nms", key)))
                            for key in rows[0]["sweep"]}
    return summary


def table5(summaries: list[dict]) -> str:
    """The layout of the paper's Table 5 (and 8): AP, JI, MR^-2, recall and seconds per image, in %."""
    lines = ["| model | method | AP ↑ | JI ↑ | MR⁻² ↓ | Recall | s/img |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        for method, m in s["methods"].items():
            lines.append(f"| {Path(s['model']).name} | {_label(s, method)} | {100 * m['ap']:.1f} | "
                         f"{100 * m['ji']:.1f} | {100 * m['mr']:.1f} | {100 * m['recall']:.1f} | {m['seconds']:.3f} |")
    return "\n".join(lines)


def table7(summaries: list[dict]) -> str:
    """The layout of Tables 7 and 9: ground truth matched on total, sparse and crowd ground truth, at each
    method's best-JI score threshold."""
    lines = ["| model | method | conf. | total | sparse | crowd |", "|---|---|---|---|---|---|"]
    for s in summaries:
        first = next(iter(s["methods"].values()))
        lines.append(f"| {Path(s['model']).name} | ground truth | | {first['gt_total']} | {first['gt_sparse']} | "
                     f"{first['gt_crowd']} |")
        for method, m in s["methods"].items():
            cells = [f"{m[f'matched_{k}']} ({100 * m[f'recall_{k}']:.1f}%)" for k in ("total", "sparse", "crowd")]
            lines.append(f"| {Path(s['model']).name} | {_label(s, method)} | {m['ji_threshold']:.1f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep(summary: dict, out: Path) -> None:
    """``sweep.csv`` and ``sweep.png`` (Fig. 9: MR, JI and AP over T_l x T_h, classical NMS starred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = summary["sweep"]
    csv = ["T_l,T_h,AP,JI,MR,recall_crowd"]
    csv += [f"{key},{m['ap']:.4f},{m['ji']:.4f},{m['mr']:.4f},{m['recall_crowd']:.4f}" for key, m in sweep.items()]
    atomic_write(out / "sweep.csv", "\n".join(csv) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, label) in zip(axes, (("mr", "MR⁻² (%) ↓"), ("ji", "JI (%) ↑"), ("ap", "AP (%) ↑")), strict=True):
        grid = np.array([[100 * sweep[f"{lo:g},{hi:g}"][name] for hi in SWEEP_HIGH] for lo in SWEEP_LOW])
        im = ax.imshow(grid, cmap="viridis_r" if name == "mr" else "viridis", origin="lower", aspect="auto")
        for i in range(len(SWEEP_LOW)):
            for j in range(len(SWEEP_HIGH)):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        ax.plot(len(SWEEP_HIGH) - 1 + 0.32, -0.28, marker="*", color="k", markersize=10, markeredgecolor="w")
        ax.set_xticks(range(len(SWEEP_HIGH)), [f"{v:g}" for v in SWEEP_HIGH])
        ax.set_yticks(range(len(SWEEP_LOW)), [f"{v:g}" for v in SWEEP_LOW])
        ax.set_xlabel("T_h")
        ax.set_ylabel("T_l")
        ax.set_title(label)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"Odam-NMS thresholds, {Path(summary['model']).name} ({summary['images']} images); "
                 "★ T_l = 0, T_h = 1 (classical NMS)", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(out / "sweep.png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _label(summary: dict, method: str) -> str:
    if method == "feature-nms" and summary.get("feature_model"):
        return f"{LABELS[method]} ({Path(summary['feature_model']).name})"
    return LABELS[method]


def _short(r: CrowdResult) -> dict:
    return {"ap": r.ap, "ji": r.ji, "mr": r.mr, "recall": r.recall, "recall_crowd": r.recall_crowd}


def _boxes(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list:
    table = torch.cat([boxes.detach().cpu().double(), scores.detach().cpu().double()[:, None],
                       labels.detach().cpu().double()[:, None]], 1)
    return [[round(v, 2) for v in row[:4]] + [round(row[4], 6), int(row[5])] for row in table.tolist()]


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else math.nan
