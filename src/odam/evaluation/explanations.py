"""``odam evaluate explanations``: the paper's explanation metrics over a dataset, resumable.

Which objects are explained follows the paper (Sec. 4.2): for each ground-truth object that is not
ignored, in dataset order, the detection of the same class with the highest IoU, if that IoU is above 0.9.
Each method explains the same detections; each (object, method) gives one JSON line in ``objects.jsonl``,
written as soon as the image's maps are measured. A rerun of the same command skips what is there, so a
killed run loses at most the image in progress, and the summary (:mod:`odam.evaluation.report`) is computed
from the lines alone, sorted, so it does not depend on how often the run was interrupted.

Under ``torchrun`` the dataset's images are shared among the ranks (image ``i`` to rank ``i % world``). Every
rank runs the detector over the images in order to number the objects as one process does, and measures the
objects of its own images; rank ``r`` writes ``objects.rank{r}.jsonl`` and ``sanity.rank{r}.jsonl``
(:mod:`odam.evaluation.journal`), and the summary, written once by rank 0, reads them all (docs/EVALUATION.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor, nn
from torchvision.ops import box_iou
from tqdm.auto import tqdm

import odam
from odam._distributed import process_group, shard, sync_point
from odam.data import Dataset, ImageRecord, read_dataset
from odam.detectors import DetectorAdapter
from odam.evaluation.config import IDENTITY, METHODS, SANITY_METHODS, EvaluationConfig
from odam.evaluation.journal import ObjectJournal, claim, object_records
from odam.explainers import create_explainer
from odam.metrics import (
    compactness,
    deletion,
    energy_pointing_game,
    insertion,
    object_discrimination_index,
    pointing_game,
    visual_explanation_accuracy,
)
from odam.metrics.sanity import cascading_randomization
from odam.structures import Detections


@dataclass(frozen=True)
class Target:
    """One explained object: a ground-truth object and the detection that explains it."""

    order: int  # position among all explained objects
    record: ImageRecord
    index: int  # the object's index in the record
    detection: int  # the detection's index in the image's detections
    iou: float


def run(config: EvaluationConfig, out: Path, *, device: str | torch.device = "cpu", progress: bool = True,
        imports: Sequence[Path] = ()) -> Path | None:
    """Measure every method on every selected object; append to ``out/objects.jsonl`` and ``out/sanity.jsonl``.

    First the records of the runs in ``imports`` are added (see :func:`import_records`). Returns ``out``.
    Raises ``ValueError`` (one line) for a dataset or model that cannot be used, or when ``out`` holds a run
    with other settings; ``out`` is claimed only once the dataset and the model are known to fit.

    Under ``torchrun`` rank ``r`` measures the objects of the images ``r``, ``r + world``, ... of the dataset that
    no journal holds yet, into ``objects.rank{r}.jsonl`` and ``sanity.rank{r}.jsonl`` (rank 0: the usual names);
    rank 0 alone claims ``out`` and imports, all ranks wait for each other at the end, and ranks other than 0
    return ``None``.
    """
    out = Path(out)
    with process_group(device) as (rank, world, device):
        with sync_point(world):
            data = read_dataset(config.data)
            detector = odam.load_detector(config.model)
            detector.model.to(device).eval()
            labels = _label_map(data, detector, config)
        with sync_point(world):  # every rank has checked the data and the model: only now is the folder claimed
            if rank == 0:
                claim(out, _identity(config), [out / "objects.jsonl", out / "sanity.jsonl"], paths=("data",))
                for other in imports:
                    tqdm.write(f"imported {import_records(out, other)} records from {other}", file=sys.stderr)
        with sync_point(world):
            _measure_all(config, data, detector, labels, out, rank, world, progress and rank == 0)
    return out if rank == 0 else None


def _measure_all(config: EvaluationConfig, data: Dataset, detector: DetectorAdapter, labels: dict[int, int],
                 out: Path, rank: int, world: int, progress: bool) -> None:
    """Measure the objects of this rank's images that no journal holds yet."""
    done = ObjectJournal(out / "objects.jsonl", rank)
    sanity = ObjectJournal(out / "sanity.jsonl", rank)
    mine = {record.id for record in shard(data.images, rank, world)}
    explainers = {m: _explainer(m, detector, config) for m in config.methods}
    limits = _object_limits(config)
    bar = tqdm(total=config.max_objects, desc="objects", unit="obj", disable=not progress)
    with bar:
        for record, image, dets, targets in _targets(data, detector, labels, config):
            if record.id not in mine:  # another rank's: detected only to number the objects
                bar.update(len(targets))
                continue
            for method in config.methods:
                limit = limits.get(method)
                todo = [t for t in targets if (record.id, _ann(t), method) not in done
                        and (limit is None or t.order < limit)]
                if todo:
                    done.extend(_measure(method, explainers[method], detector, image, dets, todo, config))
                sane = [t for t in targets if t.order < config.sanity_objects and method in SANITY_METHODS
                        and (record.id, _ann(t), method) not in sanity]
                if sane:
                    sanity.extend(_sanity(method, detector, image, dets, sane, config))
            bar.update(len(targets))


def import_records(out: Path, other: Path) -> int:
    """Add to ``out``'s journals the records of the run in ``other`` that ``out`` lacks; return how many.

    For work done elsewhere (D-RISE on a GPU machine, say) on the same images: ``other`` must agree on every
    :data:`IDENTITY` setting but the dataset's path, and each imported record's image file name must be the
    one with that image id in ``out``'s dataset. Both may be runs of several processes: every rank's journal of
    ``other`` is read, and a record any rank of ``out`` holds is not imported again.
    """
    mine = json.loads((out / "config.json").read_text(encoding="utf-8"))
    theirs = json.loads((other / "config.json").read_text(encoding="utf-8"))
    changed = sorted(k for k in IDENTITY if k != "data" and mine.get(k) != theirs.get(k))
    if changed:
        raise ValueError(f"cannot import {other}: it was measured with other settings ({', '.join(changed)})")
    files = {r.id: r.file.name for r in read_dataset(mine["data"]).images}
    added = 0
    for name in ("objects.jsonl", "sanity.jsonl"):
        journal = ObjectJournal(out / name)
        new = [r for r in object_records(other / name, METHODS)
               if (r["image_id"], r["ann_id"], r["method"]) not in journal]
        wrong = [r for r in new if files.get(r["image_id"]) != r["file"]]
        if wrong:
            raise ValueError(f"cannot import {other / name}: image {wrong[0]['image_id']} is "
                             f"{wrong[0]['file']!r} there but {files.get(wrong[0]['image_id'])!r} here")
        journal.extend(new)
        added += len(new)
    return added


def _ann(t: Target) -> int:
    return int(t.record.ann_ids[t.index])


def _identity(config: EvaluationConfig) -> dict[str, Any]:
    settings = asdict(config)
    return {k: settings[k] for k in IDENTITY}


def _label_map(data: Dataset, detector: DetectorAdapter, config: EvaluationConfig) -> dict[int, int]:
    """Dataset label -> detector label, by category name."""
    names = detector.categories
    if names is None:
        raise ValueError(f"{config.model} has no category names; evaluate a checkpoint that records them")
    mapping = {i + 1: names.index(c) for i, c in enumerate(data.categories) if c in names}
    if not mapping:
        raise ValueError(f"{config.model} predicts {list(names[1:])}, none of {list(data.categories)} in {config.data}")
    return mapping


def _targets(data: Dataset, detector: DetectorAdapter, labels: dict[int, int], config: EvaluationConfig
             ) -> Iterator[tuple[ImageRecord, Tensor, Detections, list[Target]]]:
    """Images in order with their explained objects, until ``max_objects`` objects."""
    count = 0
    for record in data.images:
        if count >= config.max_objects:
            return
        image = record.load_image().to(detector.device)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise ValueError(f"{record.file}: image is {image.shape[-1]}x{image.shape[-2]}, annotations say "
                             f"{record.width}x{record.height}")
        dets = detector.detect(image)
        targets = []
        for j, k, iou in match_objects(record, dets, labels, config.match_iou):
            if count >= config.max_objects:
                break
            targets.append(Target(count, record, j, k, iou))
            count += 1
        if targets:
            yield record, image, dets, targets


def match_objects(record: ImageRecord, dets: Detections, labels: dict[int, int], threshold: float
                  ) -> list[tuple[int, int, float]]:
    """The detections that explain a record's objects (paper Sec. 4.2).

    For each object that is not ignored, in order, the detection of the same class (dataset label ``l`` is
    detector label ``labels[l]``; unmapped labels never match) with the highest IoU with the object's clipped
    box, if that IoU is above ``threshold``; a detection explains one object only, so a later object takes its
    best unused detection.

    Returns:
        ``(object index, detection index, IoU)`` for each matched object, in object order.

    Example:
        >>> from pathlib import Path
        >>> box = np.array([[0, 0, 10, 10]], np.float32)
        >>> record = ImageRecord(1, Path("a.png"), 20, 20, box, np.array([1]), np.array([False]), box, box, None,
        ...                      np.array([1]))
        >>> dets = Detections(torch.tensor([[0.0, 0, 10, 11], [0, 0, 10, 10]]), torch.tensor([0.9, 0.8]),
        ...                   torch.tensor([1, 1]))
        >>> match_objects(record, dets, {1: 1}, 0.9)
        [(0, 1, 1.0)]
    """
    if len(dets) == 0 or len(record) == 0:
        return []
    gt = record.clipped_boxes_tensor()
    iou = box_iou(gt, dets.boxes.detach().cpu().float())
    mapped = torch.tensor([labels.get(int(lb), -1) for lb in record.labels])
    same = mapped[:, None] == dets.labels.cpu()[None, :]
    iou = torch.where(same & torch.from_numpy(~record.ignore)[:, None], iou, torch.zeros_like(iou))
    pairs, used = [], set()
    for j in range(len(record)):
        for k in torch.argsort(iou[j], descending=True, stable=True).tolist():
            if iou[j, k] <= threshold:
                break
            if k not in used:
                used.add(k)
                pairs.append((j, k, float(iou[j, k])))
                break
    return pairs


def visible_masks(record: ImageRecord) -> Tensor | None:
    """The record's visible instance masks decoded from COCO RLE: ``Tensor[N, H, W]`` bool on the CPU, or
    ``None`` when the dataset has no masks.

    Example:
        >>> from pathlib import Path
        >>> rle = mask_utils.encode(np.asfortranarray(np.eye(3, 4, dtype=np.uint8)))
        >>> box = np.zeros((1, 4), np.float32)
        >>> record = ImageRecord(1, Path("a.png"), 4, 3, box, np.array([1]), np.array([False]), box, box, [rle],
        ...                      np.array([1]))
        >>> masks = visible_masks(record)
        >>> tuple(masks.shape), masks.sum().item()
        ((1, 3, 4), 3)
    """
    if record.masks is None:
        return None
    with warnings.catch_warnings():  # pycocotools' decode under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = [mask_utils.decode(rle) for rle in record.masks]
    return torch.from_numpy(np.stack(decoded)).bool() if decoded else torch.zeros(0, record.height, record.width,
                                                                                    dtype=torch.bool)


def _explainer(method: str, detector: DetectorAdapter | nn.Module, config: EvaluationConfig) -> Any:
    """The method's explainer, with its settings from ``config`` (the other methods take their defaults)."""
    settings = {"drise": {"num_masks": config.drise_masks, "batch_size": config.drise_batch, "progress": False}}
    return create_explainer(method, detector, **settings.get(method, {}))


def _object_limits(config: EvaluationConfig) -> dict[str, int | None]:
    """Per method: it explains only the objects of ``order`` below this (``None`` or absent: all of them)."""
    return {"drise": config.drise_objects}


def _seed(config: EvaluationConfig, *keys: int) -> int:
    return int(np.random.SeedSequence([config.seed, *keys]).generate_state(1)[0])


def _measure(method: str, explainer: Any, detector: DetectorAdapter, image: Tensor, dets: Detections,
             targets: list[Target], config: EvaluationConfig) -> list[dict]:
    """Explain the targets' detections in one call and measure each map."""
    record = targets[0].record
    if hasattr(explainer, "seed"):  # a random explainer (D-RISE): its draws are seeded per image
        explainer.seed = _seed(config, record.id)
    picked = dets[[t.detection for t in targets]]
    start = time.perf_counter()
    maps = explainer.explain(image, detections=picked).maps[:, 0]
    seconds = (time.perf_counter() - start) / len(targets)
    boxes, masks = record.clipped_boxes_tensor(image.device), visible_masks(record)
    masks = None if masks is None else masks.to(image.device)
    rows = []
    for n, t in enumerate(targets):
        s, box = maps[n].detach().float(), boxes[t.index]
        label = int(picked.labels[n])
        explained = picked.boxes[n].detach()

        def score(batch: Tensor, explained: Tensor = explained, label: int = label) -> Tensor:
            return detector.candidates(batch).tracked_scores(explained, label)

        noise = torch.Generator().manual_seed(_seed(config, record.id, _ann(t)))
        common = {"box": explained, "steps": config.steps, "eval_every": config.eval_every}
        dele = deletion(image, s, score, generator=noise, **common)
        ins = insertion(image, s, score, **common)
        row = {
            "order": t.order, "image_id": int(record.id), "ann_id": _ann(t), "method": method,
            "file": record.file.name, "label": label, "score": float(picked.scores[n]), "iou": t.iou,
            "seconds": seconds,
            "deletion": _curve(dele), "insertion": _curve(ins),
            "pg_box": pointing_game(s, box).hit, "enpg_box": energy_pointing_game(s, box).share,
            "compactness": _num(compactness(s, box).value),
            "odi_box": _num(object_discrimination_index(s, t.index, boxes).value),
            "vea": None, "pg_mask": None, "enpg_mask": None, "odi_mask": None,
        }
        if masks is not None and bool(masks[t.index].any()):
            m = masks[t.index]
            row |= {"vea": _curve(visual_explanation_accuracy(s, m)), "pg_mask": pointing_game(s, m).hit,
                    "enpg_mask": energy_pointing_game(s, m).share,
                    "odi_mask": _num(object_discrimination_index(s, t.index, masks).value)}
        rows.append(row)
    return rows


def _sanity(method: str, detector: DetectorAdapter, image: Tensor, dets: Detections, targets: list[Target],
            config: EvaluationConfig) -> list[dict]:
    picked = dets[[t.detection for t in targets]]
    check = cascading_randomization(
        detector.model, lambda model: _explainer(method, model, config).explain(image, detections=picked).maps[:, 0],
        seed=_seed(config, 7),
    )
    return [{"order": t.order, "image_id": int(t.record.id), "ann_id": _ann(t), "method": method,
             "file": t.record.file.name, "blocks": list(check.blocks),
             "spearman": [_num(v) for v in check.spearman[:, n].tolist()],
             "ssim": [_num(v) for v in check.ssim[:, n].tolist()]} for n, t in enumerate(targets)]


def _curve(curve: Any) -> dict:
    return {"auc": _num(curve.auc), "x": [round(v, 6) for v in curve.x.tolist()],
            "y": [_num(v) for v in curve.y.tolist()]}


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined values are ``null``."""
    value = float(value)
    return None if math.isnan(value) else value
