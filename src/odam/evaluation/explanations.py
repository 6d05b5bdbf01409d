"""``odam evaluate explanations``: the paper's explanation metrics over a dataset, resumable.

Which objects are explained follows the paper (Sec. 4.2): for each ground-truth object that is not
ignored, in dataset order, the detection of the same class with the highest IoU, if that IoU is above 0.9.
Each method explains the same detections; each (object, method) gives one JSON line in ``objects.jsonl``,
written as soon as the image's maps are measured. A rerun of the same command skips what is there, so a
killed run loses at most the image in progress, and the summary (:mod:`odam.evaluation.report`) is computed
from the lines alone, sorted, so it does not depend on how often the run was interrupted.
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
from odam._atomic import atomic_write
from odam.data import read_dataset
from odam.data.dataset import Dataset, ImageRecord
from odam.detectors import DetectorAdapter
from odam.evaluation.journal import append_rows, complete_lines, has_records
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

#: Method names on the command line, in the order of the paper's tables.
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "drise", "odam")
#: Methods whose sanity check is run (D-RISE would cost one full D-RISE run per randomised block).
SANITY_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "odam")


#: Settings a resumed run must share with the run it resumes; the others (which methods, how many objects)
#: may grow between runs, adding records to the same journal.
IDENTITY: tuple[str, ...] = ("data", "model", "match_iou", "steps", "eval_every", "seed", "drise_masks")


@dataclass(frozen=True)
class EvaluationConfig:
    """What an evaluation measures. A rerun into the same folder must agree on :data:`IDENTITY`.

    Attributes:
        data: dataset folder or annotation file.
        model: detector spec for :func:`odam.load_detector`.
        methods: subset of :data:`METHODS`.
        max_objects: explain at most this many objects (the first ones in dataset order).
        drise_objects: D-RISE explains only the first this many of them (``None``: all).
        drise_masks: D-RISE masks per image.
        drise_batch: masked images per forward pass.
        match_iou: a detection explains an object when their IoU is above this.
        steps, eval_every: Deletion and Insertion steps and how often the detector is re-run.
        sanity_objects: the sanity check runs on the first this many objects.
        seed: seeds D-RISE's masks and Deletion's noise (per image and object).
    """

    data: str
    model: str
    methods: tuple[str, ...] = METHODS
    max_objects: int = 200
    drise_objects: int | None = None
    drise_masks: int = 5000
    drise_batch: int = 32
    match_iou: float = 0.9
    steps: int = 100
    eval_every: int = 10
    sanity_objects: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method {unknown[0] if unknown else '(none)'!r}; choose from {','.join(METHODS)}")
        for name in ("max_objects", "drise_masks", "drise_batch", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.drise_objects is not None and self.drise_objects < 0:
            raise ValueError(f"drise-objects must be >= 0, got {self.drise_objects}")
        if not 0 <= self.match_iou < 1:
            raise ValueError(f"match IoU must be in [0, 1), got {self.match_iou}")


@dataclass(frozen=True)
class Target:
    """One explained object: a ground-truth object and the detection that explains it."""

    order: int  # position among all explained objects
    record: ImageRecord
    index: int  # the object's index in the record
    detection: int  # the detection's index in the image's detections
    iou: float


def run(config: EvaluationConfig, out: Path, *, device: str | torch.device = "cpu", progress: bool = True,
        imports: Sequence[Path] = ()) -> Path:
    """Measure every method on every selected object; append to ``out/objects.jsonl`` and ``out/sanity.jsonl``.

    First the records of the runs in ``imports`` are added (see :func:`import_records`). Returns ``out``.
    Raises ``ValueError`` (one line) for a dataset or model that cannot be used, or when ``out`` holds a run
    with other settings; ``out`` is claimed only once the dataset and the model are known to fit.
    """
    out = Path(out)
    data = read_dataset(config.data)
    detector = odam.load_detector(config.model)
    detector.model.to(device).eval()
    labels = _label_map(data, detector, config)
    _claim(out, config)
    for other in imports:
        tqdm.write(f"imported {import_records(out, other)} records from {other}", file=sys.stderr)
    done = _Journal(out / "objects.jsonl")
    sanity = _Journal(out / "sanity.jsonl")
    explainers = {m: _explainer(m, detector, config) for m in config.methods}
    bar = tqdm(total=config.max_objects, desc="objects", unit="obj", disable=not progress)
    with bar:
        for record, image, dets, targets in _targets(data, detector, labels, config):
            for method in config.methods:
                todo = [t for t in targets if (record.id, _ann(t), method) not in done
                        and (method != "drise" or config.drise_objects is None or t.order < config.drise_objects)]
                if todo:
                    done.extend(_measure(method, explainers[method], detector, image, dets, todo, config))
                sane = [t for t in targets if t.order < config.sanity_objects and method in SANITY_METHODS
                        and (record.id, _ann(t), method) not in sanity]
                if sane:
                    sanity.extend(_sanity(method, detector, image, dets, sane, config))
            bar.update(len(targets))
    return out


def import_records(out: Path, other: Path) -> int:
    """Add to ``out``'s journals the records of the run in ``other`` that ``out`` lacks; return how many.

    For work done elsewhere (D-RISE on a GPU machine, say) on the same images: ``other`` must agree on every
    :data:`IDENTITY` setting but the dataset's path, and each imported record's image file name must be the
    one with that image id in ``out``'s dataset.
    """
    mine = json.loads((out / "config.json").read_text(encoding="utf-8"))
    theirs = json.loads((other / "config.json").read_text(encoding="utf-8"))
    changed = sorted(k for k in IDENTITY if k != "data" and mine.get(k) != theirs.get(k))
    if changed:
        raise ValueError(f"cannot import {other}: it was measured with other settings ({', '.join(changed)})")
    files = {r.id: r.file.name for r in read_dataset(mine["data"]).images}
    added = 0
    for name in ("objects.jsonl", "sanity.jsonl"):
        journal = _Journal(out / name)
        new = [r for r in read_journal(other / name) if (r["image_id"], r["ann_id"], r["method"]) not in journal]
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


def _claim(out: Path, config: EvaluationConfig) -> None:
    """Create ``out`` with ``config.json``, or check that the run there measures the same way (a run there
    without a record yet is replaced)."""
    path = out / "config.json"
    settings = _identity(config)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        same_data = Path(str(old.get("data"))).resolve() == Path(config.data).resolve()
        changed = sorted(k for k in IDENTITY if old.get(k) != settings.get(k) and not (k == "data" and same_data))
        if not changed:
            return
        if has_records([out / "objects.jsonl", out / "sanity.jsonl"]):
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(settings, indent=2) + "\n")


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
        image = odam.load_image(record.file).to(detector.device)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise ValueError(f"{record.file}: image is {image.shape[-1]}x{image.shape[-2]}, annotations say "
                             f"{record.width}x{record.height}")
        dets = detector.detect(image)
        targets = []
        for j, k, iou in _match(record, dets, labels, config.match_iou):
            if count >= config.max_objects:
                break
            targets.append(Target(count, record, j, k, iou))
            count += 1
        if targets:
            yield record, image, dets, targets


def _match(record: ImageRecord, dets: Detections, labels: dict[int, int], threshold: float
           ) -> list[tuple[int, int, float]]:
    """(object, detection, IoU): each object's best same-class detection above ``threshold``, each used once."""
    if len(dets) == 0 or len(record) == 0:
        return []
    gt = _clipped(record)
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


def _clipped(record: ImageRecord) -> Tensor:
    """``Tensor[N, 4]`` float32: the objects' full boxes clipped to the image."""
    limit = np.array([record.width, record.height, record.width, record.height], dtype=np.float32)
    return torch.from_numpy(np.clip(record.boxes, 0, limit).astype(np.float32))


def _masks(record: ImageRecord) -> Tensor | None:
    """``Tensor[N, H, W]`` bool visible masks, or ``None`` when the dataset has none."""
    if record.masks is None:
        return None
    with warnings.catch_warnings():  # pycocotools' decode under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = [mask_utils.decode(rle) for rle in record.masks]
    return torch.from_numpy(np.stack(decoded)).bool() if decoded else torch.zeros(0, record.height, record.width,
                                                                                    dtype=torch.bool)


def _explainer(method: str, detector: DetectorAdapter | nn.Module, config: EvaluationConfig) -> Any:
    if method == "odam":
        return odam.ODAM(detector)
    if method == "gradcam":
        return odam.GradCAM(detector)
    if method == "gradcam++":
        return odam.GradCAMPlusPlus(detector)
    return odam.DRISE(detector, num_masks=config.drise_masks, batch_size=config.drise_batch, progress=False)


def _seed(config: EvaluationConfig, *keys: int) -> int:
    return int(np.random.SeedSequence([config.seed, *keys]).generate_state(1)[0])


def _measure(method: str, explainer: Any, detector: DetectorAdapter, image: Tensor, dets: Detections,
             targets: list[Target], config: EvaluationConfig) -> list[dict]:
    """Explain the targets' detections in one call and measure each map."""
    record = targets[0].record
    if method == "drise":
        explainer.seed = _seed(config, record.id)
    picked = dets[[t.detection for t in targets]]
    start = time.perf_counter()
    maps = explainer.explain(image, detections=picked).maps[:, 0]
    seconds = (time.perf_counter() - start) / len(targets)
    boxes, masks = _clipped(record).to(image.device), _masks(record)
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


class _Journal:
    """An append-only JSON-lines file of records keyed by (image id, annotation id, method).

    Each call of :meth:`extend` (one image's records) is flushed and synced. A line cut short by a killed
    process is dropped when the journal is opened again, so the next append starts on a fresh line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[tuple[int, int, str]] = set()
        for n, line in enumerate(complete_lines(path), 1):
            try:
                row = json.loads(line)
                self.keys.add((int(row["image_id"]), int(row["ann_id"]), str(row["method"])))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a record of this evaluation ({err})") from None

    def __contains__(self, key: tuple[int, int, str]) -> bool:
        return key in self.keys

    def extend(self, rows: list[dict]) -> None:
        append_rows(self.path, rows)
        self.keys.update((row["image_id"], row["ann_id"], row["method"]) for row in rows)


def read_journal(path: Path) -> list[dict]:
    """The records of a journal, one per key (the first written), sorted by object order and method."""
    if not path.exists():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill; _Journal drops it on the next run
        key = (row["image_id"], row["ann_id"], row["method"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["order"], METHODS.index(r["method"])))
