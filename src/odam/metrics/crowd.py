"""Crowd detection metrics, as CrowdHuman's evaluation (CrowdDet, Chu et al. 2020) computes them: AP, MR^-2,
JI, and recall split into crowded and sparse ground truth.

Inputs are per image: ground-truth boxes ``[G, 4]`` ``xyxy`` with an ``ignore`` flag ``[G]``, and detections
``[D, 4]`` with scores ``[D]``. :func:`read_ground_truth` reads a CrowdHuman ``.odgt`` file (full-body boxes
``fbox``) and :func:`read_detections` a JSON-lines file of detections; :func:`evaluate` takes either.

Conventions (each tested by hand in ``tests/test_crowd_metrics.py``):

* **Ignore regions.** A ground-truth box is an ignore region when its ``tag`` is not ``"person"`` or its
  ``extra.ignore`` is 1. Boxes are clipped to the image when its size is known.
* **Matching** (AP, MR^-2 and recall). Per image, detections are visited by descending score (equal scores in
  the order given). A detection matches the unmatched, non-ignored ground-truth box with the highest IoU, if
  that IoU is > 0.5 (the first such box on ties). Failing that, a detection whose IoA (intersection over the
  detection's area) with some ignore region is > 0.5 is dropped, and any other detection is a false positive.
  Ignore regions can absorb any number of detections.
* **AP.** All images' non-dropped detections are sorted by descending score (ties: image order, then
  detection order). After each one, recall = TP / (non-ignored ground truth) and precision = TP / (TP + FP);
  AP is the trapezoid rule over these raw points, from the first to the last (no interpolation, no added
  point at recall 0).
* **MR^-2.** Over the same sorted list, miss rate = 1 - recall and FPPI = FP / images. At each of the 9 FPPI
  references (:data:`FPPI_POINTS`, CrowdDet's rounded ``10 ** linspace(-2, 0, 9)``) the miss rate is taken at the
  first point whose FPPI is >= the reference (the last point when none is); MR^-2 is the geometric mean of the 9 (0
  if one of them is 0). With no detections at all it is 1. * **JI.** For each score threshold ``t`` in 0.0, 0.1,
  ..., 0.9, per image: keep detections scoring > ``t``; match them to non-ignored ground truth by a maximum-weight
  bipartite matching on IoU, over pairs with IoU > 0.5 (``scipy.optimize.linear_sum_assignment``); ``k`` matches.
  Unmatched detections whose largest IoA with an ignore region is > 0.5 leave ``n`` (the detections), unmatched
  ground truth likewise leaves ``m``. The image's JI is ``k / (m + n - k)``, 0 when ``m + n - k`` is 0; the
  dataset's is the mean over images where ``m`` or ``n`` is non-zero. The best threshold's JI is reported. *
  **Recall** (``recall``) is at the end of the sorted list, i.e. with every detection. ``crowd`` ground truth is a
  non-ignored box whose IoU with another non-ignored box of its image is >= 0.5 (the paper's A.4.2 writes > 0.5;
  our issue specified >=; exact ties are rare with real boxes), ``sparse`` the rest;
  ``recall_total``/``recall_crowd``/``recall_sparse`` (the paper's Tables 7 and 9) count the ground truth matched
  by detections scoring > the best JI threshold, with the matching above. """

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from odam._atomic import atomic_path

#: FPPI references of MR^-2: ``10 ** linspace(-2, 0, 9)`` rounded to 4 decimals, as CrowdDet lists them.
FPPI_POINTS = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000)
#: Score thresholds of JI.
JI_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
_IOU = 0.5


@dataclass(frozen=True)
class GroundTruth:
    """One image's ground truth: ``boxes [G, 4]`` ``xyxy`` and ``ignore [G]`` bool."""

    boxes: np.ndarray
    ignore: np.ndarray


@dataclass(frozen=True)
class DetectionSet:
    """One image's detections: ``boxes [D, 4]`` ``xyxy`` and ``scores [D]``."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class CrowdResult:
    """Crowd metrics of one set of detections (see the module docstring); fractions in [0, 1]."""

    ap: float
    mr: float
    ji: float
    ji_threshold: float
    recall: float
    recall_total: float
    recall_sparse: float
    recall_crowd: float
    gt_total: int
    gt_sparse: int
    gt_crowd: int
    matched_total: int
    matched_sparse: int
    matched_crowd: int
    images: int
    detections: int


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[A, B]`` of ``xyxy`` boxes (0 where the union is empty)."""
    inter = _intersection(a, b)
    area_a = _area(a)[:, None]
    area_b = _area(b)[None]
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def ioa_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the area of ``a``'s box, ``[A, B]`` (0 for an empty ``a`` box)."""
    inter = _intersection(a, b)
    area_a = _area(a)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area_a > 0, inter / area_a, 0.0)


def match_image(gt: GroundTruth, dets: DetectionSet) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one image (see the module docstring).

    Returns:
        ``(status [D], matched [G])``: per detection 1 (true positive), 0 (false positive) or -1 (dropped on
        an ignore region); per ground-truth box the index of its detection, or -1.

    Example:
        >>> gt = GroundTruth(np.array([[0.0, 0, 10, 10], [20, 0, 30, 10]]), np.array([False, True]))
        >>> dets = DetectionSet(np.array([[0.0, 0, 10, 9], [1, 0, 10, 10], [21, 0, 29, 10]]), np.array([0.9, 0.8, 0.7]))
        >>> status, matched = match_image(gt, dets)
        >>> status.tolist(), matched.tolist()
        ([1, 0, -1], [0, -1])
    """
    boxes, scores = _as_boxes(dets.boxes), np.asarray(dets.scores, np.float64).reshape(-1)
    gt_boxes, ignore = _as_boxes(gt.boxes), np.asarray(gt.ignore, bool).reshape(-1)
    status = np.zeros(len(boxes), np.int64)
    matched = np.full(len(gt_boxes), -1, np.int64)
    if len(boxes) == 0:
        return status, matched
    order = np.argsort(-scores, kind="stable")
    iou = iou_matrix(boxes, gt_boxes)
    iou[:, ignore] = -1.0
    ioa = ioa_matrix(boxes, gt_boxes[ignore]).max(1) if ignore.any() else np.zeros(len(boxes))
    for d in order:
        candidates = np.where(matched < 0, iou[d], -1.0)
        g = int(np.argmax(candidates)) if len(candidates) else -1
        if g >= 0 and candidates[g] > _IOU:
            matched[g] = d
            status[d] = 1
        elif ioa[d] > _IOU:
            status[d] = -1
    return status, matched


def crowd_flags(gt: GroundTruth) -> np.ndarray:
    """``[G]`` bool: non-ignored boxes whose IoU with another non-ignored box is >= 0.5."""
    boxes, ignore = _as_boxes(gt.boxes), np.asarray(gt.ignore, bool).reshape(-1)
    keep = np.where(~ignore)[0]
    flags = np.zeros(len(boxes), bool)
    if len(keep) > 1:
        iou = iou_matrix(boxes[keep], boxes[keep])
        np.fill_diagonal(iou, 0.0)
        flags[keep] = (iou >= _IOU).any(1)
    return flags


def average_precision(labels: np.ndarray, num_gt: int) -> float:
    """AP from the sorted TP (1) / FP (0) labels of all images and the number of non-ignored ground truth.

    Example:
        >>> round(average_precision(np.array([1, 0, 1]), 2), 4)  # points (0.5, 1), (0.5, 0.5), (1, 2/3)
        0.2917
    """
    recall, precision = _curve(labels, num_gt)
    if len(recall) < 2:
        return 0.0
    return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2))


def log_average_miss_rate(labels: np.ndarray, num_gt: int, num_images: int) -> float:
    """MR^-2 from the sorted TP/FP labels, the number of non-ignored ground truth and of images.

    Example:
        >>> log_average_miss_rate(np.array([1, 1, 0]), 4, 1)  # FPPI reaches 1 only at the third detection
        0.5
    """
    if len(labels) == 0 or num_gt == 0:
        return 1.0
    tp = np.cumsum(labels == 1)
    fp = np.cumsum(labels == 0)
    miss = 1.0 - tp / num_gt
    fppi = fp / max(num_images, 1)
    picked = []
    for ref in FPPI_POINTS:
        at = np.flatnonzero(fppi >= ref)
        picked.append(miss[at[0]] if len(at) else miss[-1])
    picked = np.asarray(picked)
    if (picked <= 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(picked))))


def jaccard_index(gt: GroundTruth, dets: DetectionSet, threshold: float) -> tuple[int, int, int]:
    """One image's ``(k, m, n)`` at score threshold ``threshold`` (see the module docstring).

    Example:
        >>> gt = GroundTruth(np.array([[0.0, 0, 10, 10], [5, 0, 15, 10]]), np.array([False, False]))
        >>> dets = DetectionSet(np.array([[4.0, 0, 14, 10], [0, 0, 9, 10]]), np.array([0.9, 0.8]))
        >>> jaccard_index(gt, dets, 0.0), jaccard_index(gt, dets, 0.85)
        ((2, 2, 2), (1, 2, 1))
    """
    boxes, scores = _as_boxes(dets.boxes), np.asarray(dets.scores, np.float64).reshape(-1)
    gt_boxes, ignore = _as_boxes(gt.boxes), np.asarray(gt.ignore, bool).reshape(-1)
    boxes = boxes[scores > threshold]
    real, regions = gt_boxes[~ignore], gt_boxes[ignore]
    k, det_matched, gt_matched = 0, np.zeros(len(boxes), bool), np.zeros(len(real), bool)
    if len(boxes) and len(real):
        iou = iou_matrix(boxes, real)
        weight = np.where(iou > _IOU, iou, 0.0)
        rows, cols = linear_sum_assignment(weight, maximize=True)
        good = weight[rows, cols] > 0
        rows, cols = rows[good], cols[good]
        k = len(rows)
        det_matched[rows] = True
        gt_matched[cols] = True
    n, m = len(boxes), len(real)
    if len(regions):
        n -= int((ioa_matrix(boxes[~det_matched], regions).max(1, initial=0.0) > _IOU).sum())
        m -= int((ioa_matrix(real[~gt_matched], regions).max(1, initial=0.0) > _IOU).sum())
    return k, m, n


def crowd_metrics(ground_truth: Mapping[str, GroundTruth], detections: Mapping[str, DetectionSet]) -> CrowdResult:
    """Every metric of the module docstring over the images of ``ground_truth`` (an image missing from
    ``detections`` has none; detections of an image without ground truth are an error).

    Example:
        >>> gt = {"a": GroundTruth(np.array([[0.0, 0, 10, 10], [2, 0, 12, 10]]), np.array([False, False]))}
        >>> boxes = np.array([[0.0, 0, 10, 10], [2, 0, 12, 10], [20, 20, 30, 30]])
        >>> r = crowd_metrics(gt, {"a": DetectionSet(boxes, np.array([0.9, 0.7, 0.5]))})
        >>> r.ap, r.recall, r.ji, r.ji_threshold, r.gt_crowd, r.recall_crowd
        (0.5, 1.0, 1.0, 0.5, 2, 1.0)
    """
    unknown = sorted(set(detections) - set(ground_truth))
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) with no ground truth, e.g. {unknown[0]!r}")
    empty = DetectionSet(np.zeros((0, 4)), np.zeros(0))
    ids = list(ground_truth)
    rows = []  # (score, image order, detection order, label) of every non-dropped detection
    num_gt = 0
    per_image = []
    for order, image_id in enumerate(ids):
        gt, dets = ground_truth[image_id], detections.get(image_id, empty)
        status, matched = match_image(gt, dets)
        scores = np.asarray(dets.scores, np.float64).reshape(-1)
        for d in np.flatnonzero(status >= 0):
            rows.append((-scores[d], order, d, status[d]))
        num_gt += int((~np.asarray(gt.ignore, bool)).sum())
        per_image.append((gt, dets, matched, scores))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    labels = np.array([r[3] for r in rows], np.int64)
    ap = average_precision(labels, num_gt)
    mr = log_average_miss_rate(labels, num_gt, len(ids))
    recall = float(labels.sum() / num_gt) if num_gt else 0.0
    best_ji, best_t = -1.0, JI_THRESHOLDS[0]
    for t in JI_THRESHOLDS:
        ratios = []
        for gt, dets, _, _ in per_image:
            k, m, n = jaccard_index(gt, dets, t)
            if m or n:
                ratios.append(k / (m + n - k) if m + n - k > 0 else 0.0)
        ji = float(np.mean(ratios)) if ratios else 0.0
        if ji > best_ji:
            best_ji, best_t = ji, t
    counts = {"total": [0, 0], "sparse": [0, 0], "crowd": [0, 0]}
    for gt, _, matched, scores in per_image:
        ignore = np.asarray(gt.ignore, bool).reshape(-1)
        crowd = crowd_flags(gt)
        found = np.array([m >= 0 and scores[m] > best_t for m in matched], bool)
        for name, mask in (("total", ~ignore), ("sparse", ~ignore & ~crowd), ("crowd", crowd)):
            counts[name][0] += int(mask.sum())
            counts[name][1] += int((mask & found).sum())

    def fraction(name: str) -> float:
        total, hit = counts[name]
        return hit / total if total else math.nan

    return CrowdResult(ap=ap, mr=mr, ji=best_ji, ji_threshold=best_t, recall=recall,
                       recall_total=fraction("total"), recall_sparse=fraction("sparse"),
                       recall_crowd=fraction("crowd"), gt_total=counts["total"][0], gt_sparse=counts["sparse"][0],
                       gt_crowd=counts["crowd"][0], matched_total=counts["total"][1],
                       matched_sparse=counts["sparse"][1], matched_crowd=counts["crowd"][1], images=len(ids),
                       detections=sum(len(np.asarray(d.scores).reshape(-1)) for _, d, _, _ in per_image))


def read_ground_truth(path: str | Path) -> dict[str, GroundTruth]:
    """Full-body ground truth from a CrowdHuman ``.odgt`` file, by ``ID``.

    Boxes are clipped to the image when the line has ``width`` and ``height`` (CrowdHuman's own files do not:
    CrowdDet clips with the image sizes, which this function does not read). A box is an ignore region when
    its ``tag`` is not ``"person"`` or its ``extra.ignore`` is 1.

    Raises:
        ValueError: one line ``"<file>: line <n>: <problem>"`` (plus ``gtboxes[j]`` for one box) for a line that
            is not a JSON object, a missing or mistyped key, a duplicate ``ID``, a size that is not a positive
            number, or an ``fbox`` that is not 4 numbers ``[x, y, w, h]`` with ``w, h >= 0`` and every value
            within float32's range.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "gt.odgt"
        >>> _ = path.write_text(json.dumps({"ID": "a", "width": 20, "height": 20, "gtboxes": [
        ...     {"tag": "person", "fbox": [-5, 0, 10, 10]}, {"tag": "mask", "fbox": [12, 0, 4, 4]}]}) + "\\n")
        >>> gt = read_ground_truth(path)["a"]
        >>> gt.boxes.tolist(), gt.ignore.tolist()
        ([[0.0, 0.0, 5.0, 10.0], [12.0, 0.0, 16.0, 4.0]], [False, True])
    """
    out: dict[str, GroundTruth] = {}
    for number, obj in _json_lines(path):
        where = f"{path}: line {number}"
        image_id, boxes = obj.get("ID"), obj.get("gtboxes")
        if not isinstance(image_id, str) or not isinstance(boxes, list):
            raise ValueError(f"{where}: expected 'ID' (string) and 'gtboxes' (list)")
        if image_id in out:
            raise ValueError(f"{where}: duplicate ID {image_id!r}")
        size = [obj.get(key) for key in ("width", "height")]
        if any(v is not None for v in size) and not all(_number(v) and 0 < v < _FLOAT32_MAX for v in size):
            raise ValueError(f"{where}: width and height must both be positive numbers, got {_shown(size)}")
        xyxy, ignore = [], []
        for j, box in enumerate(boxes):
            fbox = box.get("fbox") if isinstance(box, dict) else None
            if not (isinstance(fbox, list) and len(fbox) == 4):
                raise ValueError(f"{where}: gtboxes[{j}]: each gtbox needs 'fbox' [x, y, w, h]")
            xyxy.append(_xyxy(fbox, f"{where}: gtboxes[{j}]: fbox"))
            extra = box.get("extra") if isinstance(box.get("extra"), dict) else {}
            ignore.append(box.get("tag") != "person" or extra.get("ignore", 0) == 1)
        array = np.asarray(xyxy, np.float64).reshape(-1, 4)
        if size[0] is not None:
            array[:, 0::2] = array[:, 0::2].clip(0, size[0])
            array[:, 1::2] = array[:, 1::2].clip(0, size[1])
        out[image_id] = GroundTruth(array, np.asarray(ignore, bool))
    return out


def read_detections(path: str | Path) -> dict[str, DetectionSet]:
    """Detections from JSON lines ``{"ID": str, "dtboxes": [{"box": [x, y, w, h], "score": s}, ...]}`` (the
    format CrowdDet writes), by ``ID``; several lines of one ID are merged.

    Raises:
        ValueError: one line ``"<file>: line <n>: <problem>"`` (plus ``dtboxes[j]`` for one box) for a line
            that is not a JSON object, a missing or mistyped key, a ``box`` that is not 4 numbers with
            ``w, h >= 0`` and every value within float32's range, or a score that is not a finite number.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "dets.jsonl"
        >>> _ = path.write_text('{"ID": "a", "dtboxes": [{"box": [1, 2, 3, 4], "score": 0.5}]}\\n')
        >>> dets = read_detections(path)["a"]
        >>> dets.boxes.tolist(), dets.scores.tolist()
        ([[1.0, 2.0, 4.0, 6.0]], [0.5])
    """
    parts: dict[str, list] = {}
    for number, obj in _json_lines(path):
        where = f"{path}: line {number}"
        image_id, boxes = obj.get("ID"), obj.get("dtboxes")
        if not isinstance(image_id, str) or not isinstance(boxes, list):
            raise ValueError(f"{where}: expected 'ID' (string) and 'dtboxes' (list)")
        for j, box in enumerate(boxes):
            b, s = (box.get("box"), box.get("score")) if isinstance(box, dict) else (None, None)
            if not (isinstance(b, list) and len(b) == 4 and _number(s)):
                raise ValueError(f"{where}: dtboxes[{j}]: each dtbox needs 'box' [x, y, w, h] and 'score'")
            if not abs(s) < _FLOAT32_MAX:
                raise ValueError(f"{where}: dtboxes[{j}]: score must be a finite number, got {_shown(s)}")
            parts.setdefault(image_id, []).append([*_xyxy(b, f"{where}: dtboxes[{j}]: box"), float(s)])
        parts.setdefault(image_id, [])
    arrays = {k: np.asarray(v, np.float64).reshape(-1, 5) for k, v in parts.items()}
    return {k: DetectionSet(a[:, :4], a[:, 4]) for k, a in arrays.items()}


def write_detections(path: str | Path, detections: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Write ``(ID, boxes [D, 4] xyxy, scores [D])`` as the JSON lines :func:`read_detections` reads (atomically:
    a killed writer leaves the previous file)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for image_id, boxes, scores in detections:
            b = np.asarray(boxes, np.float64).reshape(-1, 4)
            dt = [{"box": [x1, y1, x2 - x1, y2 - y1], "score": float(s), "tag": 1}
                  for (x1, y1, x2, y2), s in zip(b.tolist(), np.asarray(scores).reshape(-1).tolist(), strict=True)]
            f.write(json.dumps({"ID": image_id, "dtboxes": dt}) + "\n")


def evaluate(ground_truth: str | Path | Mapping[str, GroundTruth],
             detections: str | Path | Mapping[str, DetectionSet]) -> CrowdResult:
    """:func:`crowd_metrics` from files (``.odgt`` ground truth, JSON-lines detections) or mappings."""
    gt = read_ground_truth(ground_truth) if isinstance(ground_truth, (str, Path)) else ground_truth
    dets = read_detections(detections) if isinstance(detections, (str, Path)) else detections
    return crowd_metrics(gt, dets)


def _json_lines(path: str | Path) -> Iterable[tuple[int, dict]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}: line {number}: JSON nested too deeply to parse") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object")
        yield number, obj


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(value: object) -> bool:
    """A JSON number: an int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _xyxy(box: list, where: str) -> list[float]:
    """``[x, y, w, h]`` as ``[x1, y1, x2, y2]``: numbers, ``w, h >= 0``, every value within float32's range."""
    if not all(map(_number, box)):
        raise ValueError(f"{where} must be 4 numbers [x, y, w, h], got {_shown(box)}")
    try:
        x, y, w, h = (float(v) for v in box)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{where} {_shown(box)} does not fit float32") from None
    corners = [x, y, x + w, y + h]
    if not all(abs(v) < _FLOAT32_MAX for v in [w, h, *corners]):
        raise ValueError(f"{where} {_shown(box)} does not fit float32 (or is not finite)")
    if w < 0 or h < 0:
        raise ValueError(f"{where} {_shown(box)} has negative size")
    return corners


def _shown(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except RecursionError:  # nested too deeply to show
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_boxes(boxes: object) -> np.ndarray:
    array = np.asarray(boxes, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"expected boxes of shape [N, 4], got {tuple(array.shape)}")
    return array


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _as_boxes(a), _as_boxes(b)
    w = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    h = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    return w * h


def _curve(labels: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if len(labels) == 0 or num_gt == 0:
        return np.zeros(0), np.zeros(0)
    tp = np.cumsum(labels == 1)
    fp = np.cumsum(labels == 0)
    return tp / num_gt, tp / (tp + fp)
