"""COCO box mAP of a detector on an odam dataset, computed by pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import batched_nms, box_iou
from tqdm import tqdm

from odam.data import Dataset, to_coco_dict
from odam.train.samples import load_image_tensor


def ground_truth(dataset: Dataset) -> COCO:
    """A pycocotools ``COCO`` of ``dataset``: exactly what :func:`odam.data.write_coco` writes to
    ``annotations.json``, so pycocotools run on that file gives the same numbers. Its ``bbox`` is the full box
    clipped to the image (detectors predict inside it) and its ignored objects are ``iscrowd`` regions, which
    COCOeval neither rewards nor penalises."""
    coco = COCO()
    coco.dataset = to_coco_dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@torch.no_grad()
def detections_as_coco(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Run ``model`` (eval mode) over ``dataset``; COCO result dicts with ``bbox`` as ``[x, y, w, h]``."""
    device = next(model.parameters()).device
    results = []
    images = dataset.images
    for start in tqdm(range(0, len(images), batch_size), desc="evaluate", unit="batch", disable=not progress):
        chunk = images[start:start + batch_size]
        outputs = model([load_image_tensor(r).to(device) for r in chunk])
        for record, out in zip(chunk, outputs, strict=True):
            boxes = out["boxes"].cpu().numpy().astype(np.float64)
            scores, labels = out["scores"].cpu().tolist(), out["labels"].cpu().tolist()
            for box, score, label in zip(boxes, scores, labels, strict=True):
                results.append({"image_id": record.id, "category_id": int(label),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    return results


def oracle_results(dataset: Dataset, nms_thresh: float, *, seed: int = 0) -> list[dict]:
    """What a detector that predicts every ground-truth box exactly would output after class-wise NMS.

    Each box (clipped to the image; ignored objects included, as a detector would find them too) gets a random
    score, and NMS at ``nms_thresh`` removes the boxes that overlap a higher-scored one too much. Its AP is the
    most any detector whose boxes match the ground truth can reach with that NMS: a measure of how crowded a
    dataset is.

    Example:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from odam.data import Dataset, ImageRecord
        >>> boxes = np.array([[0, 0, 10, 20], [1, 0, 11, 20]], np.float32)  # IoU 0.82
        >>> rec = ImageRecord(1, Path("a.png"), 32, 32, boxes, np.array([1, 1]), np.array([False, False]),
        ...                   boxes * np.nan, boxes * np.nan, None, np.array([1, 2]))
        >>> len(oracle_results(Dataset([rec], ("person",)), 0.6)), len(oracle_results(Dataset([rec], ("person",)), 0.9))
        (1, 2)
    """
    generator = torch.Generator().manual_seed(seed)
    results = []
    for record in dataset.images:
        boxes = record.clipped_boxes_tensor()
        labels = torch.from_numpy(np.asarray(record.labels, np.int64))
        scores = torch.rand(len(boxes), generator=generator)
        for k in batched_nms(boxes, scores, labels, nms_thresh).tolist():
            x0, y0, x1, y1 = boxes[k].tolist()
            results.append({"image_id": record.id, "category_id": int(labels[k]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(scores[k])})
    return results


def evaluate_coco(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, progress: bool = True) -> dict:
    """COCO box AP over IoU 0.50:0.95 (``mAP``) and at IoU 0.5 (``AP50``), by pycocotools' COCOeval.

    Category ids are the dataset's labels (1-based), which odam-trained detectors predict directly. A value is
    ``None`` when there are detections but no object that is not ignored, and 0.0 when there are no detections.

    Example:
        >>> from odam.data import Dataset
        >>> evaluate_coco(nn.Linear(1, 1), Dataset([], ("person",)), progress=False)
        {'mAP': 0.0, 'AP50': 0.0, 'detections': 0}
    """
    was_training = model.training
    model.eval()
    try:
        results = detections_as_coco(model, dataset, batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    return coco_metrics(dataset, results)


def coco_metrics(dataset: Dataset, results: list[dict]) -> dict:
    """``mAP``, ``AP50`` and the number of detections of COCO ``results`` on ``dataset`` (see :func:`evaluate_coco`).

    Example:
        >>> from odam.data import Dataset
        >>> coco_metrics(Dataset([], ("person",)), [])
        {'mAP': 0.0, 'AP50': 0.0, 'detections': 0}
    """
    gt = ground_truth(dataset)
    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 when there is nothing to evaluate (no ground truth that is not ignored)
    stats = [None if s < 0 else round(float(s), 4) for s in ev.stats[:2]]
    return {"mAP": stats[0], "AP50": stats[1], "detections": len(results)}


@torch.no_grad()
def error_breakdown(model: nn.Module, dataset: Dataset, thresholds: list[float]) -> dict[float, dict[str, float]]:
    """Sort a detector's detections at each score threshold into true positives and three kinds of error.

    Detections are taken in score order and matched greedily, one to one, to the unmatched objects that are
    not ignored, at IoU >= 0.5 with full boxes clipped to the image. An unmatched detection is a
    ``duplicate`` if it still overlaps some object (found already, or ignored) with IoU >= 0.5,
    ``mislocalised`` if its best IoU is in [0.1, 0.5) (typically part of a body), and ``background``
    otherwise. ``precision`` is ``true / detections`` and ``recall`` is ``true / objects``.

    Example:
        >>> from odam.data import Dataset
        >>> error_breakdown(nn.Linear(1, 1), Dataset([], ("person",)), [0.5])[0.5]["true"]
        0
    """
    counts = {t: {"true": 0, "duplicate": 0, "mislocalised": 0, "background": 0, "objects": 0} for t in thresholds}
    if not dataset.images or not counts:  # no threshold: nothing to count, so no pass over the images
        return counts
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for record in dataset.images:
            out = model([load_image_tensor(record).to(device)])[0]
            truth = record.clipped_boxes_tensor()
            ignored = torch.from_numpy(np.asarray(record.ignore, bool))
            iou = box_iou(out["boxes"].cpu().float(), truth)
            scores = out["scores"].cpu()
            for t, c in counts.items():
                c["objects"] += int((~ignored).sum())
                taken = ignored.clone()
                for row in iou[scores >= t]:
                    free = row.masked_fill(taken, -1.0)
                    j = int(free.argmax()) if len(free) else 0
                    if len(free) and free[j] >= 0.5:
                        taken[j] = True
                        c["true"] += 1
                    else:
                        best = float(row.max()) if len(row) else 0.0
                        c["duplicate" if best >= 0.5 else "mislocalised" if best >= 0.1 else "background"] += 1
    finally:
        model.train(was_training)
    for c in counts.values():
        found = c["true"] + c["duplicate"] + c["mislocalised"] + c["background"]
        c["precision"] = round(c["true"] / found, 3) if found else 0.0
        c["recall"] = round(c["true"] / c["objects"], 3) if c["objects"] else 0.0
    return counts
