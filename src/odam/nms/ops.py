"""Non-maximum suppression for crowds: Odam-NMS (paper Sec. 3.3, Algorithm 1) and its baselines.

All functions take boxes ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` and scores ``Tensor[N]`` and return the indices
of the kept boxes as ``Tensor[K]`` int64 on the caller's device, sorted by (final) score, like
``torchvision.ops.nms``. Candidates are visited in descending score order; equal scores are visited in index
order. Every method except Soft-NMS is *greedy*: a candidate is dropped when it is a duplicate of a box kept
before it, and kept otherwise. Only what makes two boxes duplicates differs:

* :func:`nms`: IoU > ``iou_threshold`` (torchvision's rule).
* :func:`odam_nms`: IoU >= ``iou_threshold`` and corr > ``low``, or IoU < ``iou_threshold`` and corr >
  ``high`` (Algorithm 1), where corr is the normalised correlation of the two boxes' ODAM heat maps.
* :func:`feature_nms` (Salscheider 2021): IoU > ``high``, or ``low`` <= IoU <= ``high`` and the distance between
  the two boxes' learned embeddings is at most ``distance``.

The greedy pass builds the pairwise IoU (and correlation or distance) rows in blocks, on the caller's device: the
next 64 candidates still alive. :func:`odam_nms` first decides a block among itself (a 64 x 64 tile), then only
the kept ones' rows go against the later candidates still alive (one matrix product of unit vectors per block),
so no suppressed candidate ever gets a row. On a CPU whose oneDNN has bfloat16 (from 256 candidates on), the
products go through bfloat16 first, at half the cost of float32 ones; each pair that bfloat16's rounding could have
put on the wrong side of its threshold (within :func:`_coarse_margin`, a proven bound, 0.016 for 2500 cells) has
its row recomputed in float32, so the kept set is float32's, up to pairs within float32 rounding of a threshold
(which any two float32 passes of different shapes, the reference's included, may already decide differently).
FeatureNMS's pass computes the block's rows against every later candidate still alive at once; a member suppressed
within its own block wastes its row there.
The ``batched_*`` variants never let boxes of different classes suppress each other.

**The correlation** (:func:`correlation`) is Pearson's: the cosine of the mean-centred heat-map vectors. The
paper calls it "normalized correlation". Centring matters here: ODAM maps are non-negative, so the plain cosine
of two maps of neighbouring people is pulled up by their shared support and background level. On SynthCrowd the
centred version separates same-object from different-object pairs by a wider gap (docs/RESULTS.md,
"Heat-map correlation"). A constant map has no correlation; it counts as 0 (no evidence either way).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou
from torchvision.ops import nms as _torchvision_nms

from odam.heatmaps import unit_vectors

_BLOCK = 64
_COARSE_FROM = 256  # candidates from which odam_nms tries the bfloat16 pre-pass (prepass_pays)
SOFT_METHODS = ("gaussian", "linear")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Classical NMS: drop a box whose IoU with a kept, higher-scoring box is > ``iou_threshold``.

    ``torchvision.ops.nms``, with the visiting order of this module (ties in index order).

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7])).tolist()
        [0, 2]
    """
    _check(boxes, scores)
    order = visit_order(scores)
    keep = _torchvision_nms(boxes[order].float(), torch.arange(len(order), 0, -1, device=boxes.device).float(),
                            iou_threshold)
    return order[keep]


def odam_nms(boxes: Tensor, scores: Tensor, vectors: Tensor, iou_threshold: float = 0.5, low: float = 0.2,
             high: float = 0.8, *, centred: bool = True, prepass: bool | None = None) -> Tensor:
    """Odam-NMS (Algorithm 1): suppress by box IoU *and* heat-map correlation.

    A candidate is a duplicate of a kept box when IoU >= ``iou_threshold`` and corr > ``low`` (overlapping and
    looking at the same thing), or when IoU < ``iou_threshold`` and corr > ``high`` (apart, but explained by the
    same object). ``low=0, high=1`` is classical NMS (with IoU >= rather than >), except that overlapping boxes
    whose maps do not correlate positively are both kept.

    Args:
        boxes: ``Tensor[N, 4]``.
        scores: ``Tensor[N]``.
        vectors: ``Tensor[N, D]``, each box's ODAM score map made by :func:`heatmap_vectors`.
        iou_threshold: ``T_iou``.
        low, high: ``T^l`` and ``T^h``; the paper's defaults.
        centred: Pearson correlation (the default); ``False`` compares by plain cosine.
        prepass: the bfloat16 pre-pass (module docstring): ``None`` where it pays (:func:`prepass_pays`),
            ``False`` float32 products only, ``True`` always. The kept set is the same either way.

    Returns:
        ``Tensor[K]`` int64: the kept indices, by descending score.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 20], [2, 0, 12, 20], [0, 0, 10, 20], [40, 0, 50, 20]])
        >>> maps = torch.zeros(4, 4, 8)
        >>> maps[0, :, 0:2] = 1; maps[1, :, 2:4] = 1; maps[2, :, 0:2] = 1; maps[3, :, 2:4] = 1
        >>> # 1 overlaps 0 but looks elsewhere: kept; 2 repeats 0; 3 is far away but looks where 1 does
        >>> odam_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), maps.flatten(1)).tolist()
        [0, 1]
    """
    return _odam(boxes, scores, vectors, None, iou_threshold, low, high, centred, prepass=prepass)


def batched_odam_nms(boxes: Tensor, scores: Tensor, vectors: Tensor, idxs: Tensor, iou_threshold: float = 0.5,
                     low: float = 0.2, high: float = 0.8, *, centred: bool = True,
                     prepass: bool | None = None) -> Tensor:
    """:func:`odam_nms` within each class ``idxs`` (``Tensor[N]`` int64); boxes of different classes never
    suppress each other.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
        >>> batched_odam_nms(boxes, torch.tensor([0.9, 0.8]), torch.eye(2), torch.tensor([0, 1]), high=-1).tolist()
        [0, 1]
    """
    _check(boxes, scores, idxs)
    return _odam(boxes, scores, vectors, idxs, iou_threshold, low, high, centred, prepass=prepass)


def _odam(boxes: Tensor, scores: Tensor, vectors: Tensor, idxs: Tensor | None, iou_threshold: float, low: float,
          high: float, centred: bool, *, prepass: bool | None = None) -> Tensor:
    """The pass of :func:`odam_nms` and :func:`batched_odam_nms`."""
    _check(boxes, scores)
    if vectors.ndim != 2 or len(vectors) != len(boxes):
        raise ValueError(f"expected vectors of shape [{len(boxes)}, D], got {tuple(vectors.shape)}")
    order = visit_order(scores)
    # Everything in visit order once, so that a run of later candidates is a view, not a copy.
    unit = unit_vectors(vectors.to(boxes.device), centred, rows=order)
    b = boxes.float()[order]
    overlaps = _Overlaps(b)
    labels = None if idxs is None else idxs[order]
    if prepass is None:
        prepass = prepass_pays(len(unit), unit.device)
    rough = unit.bfloat16() if prepass else None
    margin = _coarse_margin(unit.shape[1])

    def duplicate(rows: Tensor | slice, cols: Tensor | slice) -> Tensor:
        iou = overlaps(rows, cols)
        threshold = torch.where(iou >= iou_threshold, iou.new_tensor(low), iou.new_tensor(high))  # corr must exceed
        if rough is None:
            corr = unit[rows] @ unit[cols].T
        else:  # bfloat16 products, then float32 rows where the rounding could have put a pair on the wrong side
            corr = (rough[rows] @ rough[cols].T).float()
            unsure = ((corr - threshold).abs() <= margin).any(1)
            if bool(unsure.any()):  # whole rows: one product, however many pairs sit near a threshold
                corr[unsure] = unit[rows][unsure] @ unit[cols].T
        dup = corr > threshold
        return dup if labels is None else dup & (labels[rows][:, None] == labels[cols][None])

    return order[_greedy_sorted(len(order), duplicate, order.device)]


class _Overlaps:
    """``torchvision.ops.box_iou`` of two runs of the same boxes ``Tensor[N, 4]``, by the same operations (so the
    same floats), with each coordinate and area stored once as a column: a block's IoU rows then work on
    ``[R, C]`` planes instead of ``[R, C, 2]`` pairs and never recompute an area (a tenth of Odam-NMS's time when
    nothing is suppressed)."""

    def __init__(self, boxes: Tensor) -> None:
        self.x1, self.y1, self.x2, self.y2 = boxes.T.contiguous()
        self.area = (self.x2 - self.x1) * (self.y2 - self.y1)

    def __call__(self, rows: Tensor | slice, cols: Tensor | slice) -> Tensor:
        w = (torch.minimum(self.x2[rows, None], self.x2[None, cols])
             - torch.maximum(self.x1[rows, None], self.x1[None, cols])).clamp_(min=0)
        h = (torch.minimum(self.y2[rows, None], self.y2[None, cols])
             - torch.maximum(self.y1[rows, None], self.y1[None, cols])).clamp_(min=0)
        inter = w.mul_(h)
        return inter / (self.area[rows, None] + self.area[None, cols] - inter)


def _coarse_margin(dim: int) -> float:
    """How far a correlation of unit vectors computed from their bfloat16 roundings (products summed in float32,
    the result rounded to bfloat16) can be from the float32 one, bounded from above.

    bfloat16 keeps 8 significant bits: each element is off by a relative ``u = 2**-8`` at most, so each product by
    ``2u + u**2``, and their sum by that times ``sum |a_i b_i| <= |a| |b| = 1`` (Cauchy-Schwarz); summing ``dim``
    products in float32 adds at most ``dim * 2**-24`` relative to the same sum; rounding the result (at most about
    1) to bfloat16 adds ``u`` more. Together below ``2**-6 + dim * 2**-23`` (0.016 for 2500 cells).
    """
    return 2.0 ** -6 + dim * 2.0 ** -23


def prepass_pays(candidates: int, device: torch.device | str = "cpu") -> bool:
    """Whether :func:`odam_nms` takes the bfloat16 pre-pass by default: on a CPU whose oneDNN is enabled and has
    bfloat16 (AVX-512 or AMX: half the time of float32 for 1000 x 2500 vectors, one thread), from 256 candidates on
    (enough to repay rounding them). Elsewhere bfloat16 products can be far slower than float32 ones, and a GPU's
    float32 products are not what bounds it.

    Example:
        >>> prepass_pays(10), prepass_pays(1000, "meta")
        (False, False)
    """
    if torch.device(device).type != "cpu" or candidates < _COARSE_FROM:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False  # bfloat16 products without oneDNN: 2.5x float32's
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def odam_nms_reference(boxes: Tensor, scores: Tensor, vectors: Tensor, idxs: Tensor | None = None,
                       iou_threshold: float = 0.5, low: float = 0.2, high: float = 0.8, centred: bool = True) -> Tensor:
    """The block pass :func:`odam_nms` used before :func:`_greedy_sorted`: rows of the next ``_BLOCK`` candidates
    alive against every later one alive, gathered, a suppressed block member's row wasted. The same kept set; kept
    as the reference the faster pass is tested (``tests/test_nms_fast.py``) and timed (``bench_nms.py``) against.
    """
    _check(boxes, scores)
    unit = unit_vectors(vectors.to(boxes.device), centred)
    b = boxes.float()

    def duplicate(rows: Tensor, cols: Tensor) -> Tensor:
        iou = box_iou(b[rows], b[cols])
        corr = unit[rows] @ unit[cols].T
        dup = torch.where(iou >= iou_threshold, corr > low, corr > high)
        return dup if idxs is None else dup & (idxs[rows][:, None] == idxs[cols][None])

    return _greedy(visit_order(scores), duplicate)


def feature_nms(boxes: Tensor, scores: Tensor, embeddings: Tensor, low: float = 0.1, high: float = 0.9,
                distance: float = 1.0) -> Tensor:
    """FeatureNMS (Salscheider 2021): suppress by IoU, and by learned embeddings where IoU is ambiguous.

    A candidate is a duplicate of a kept box when their IoU is > ``high``, or when it is in
    ``[low, high]`` and the Euclidean distance between their embeddings is <= ``distance``. Below ``low`` they
    are distinct.

    Args:
        boxes: ``Tensor[N, 4]``.
        scores: ``Tensor[N]``.
        embeddings: ``Tensor[N, E]``, e.g. the L2-normalised 32-d output of an embedding head
            (``odam train --feature-embedding``).

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 20], [3, 0, 13, 20], [1, 0, 11, 20]])
        >>> emb = torch.tensor([[1.0, 0], [0, 1], [1, 0]])
        >>> feature_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), emb).tolist()  # 1 is apart in embedding space
        [0, 1]
    """
    _check(boxes, scores)
    if embeddings.ndim != 2 or len(embeddings) != len(boxes):
        raise ValueError(f"expected embeddings of shape [{len(boxes)}, E], got {tuple(embeddings.shape)}")
    e = embeddings.to(boxes.device).float()
    b = boxes.float()

    def duplicate(rows: Tensor, cols: Tensor) -> Tensor:
        iou = box_iou(b[rows], b[cols])
        near = torch.cdist(e[rows], e[cols]) <= distance
        return (iou > high) | ((iou >= low) & near)

    return _greedy(visit_order(scores), duplicate)


def soft_nms(boxes: Tensor, scores: Tensor, sigma: float = 0.5, score_threshold: float = 0.05,
             method: str = "gaussian", iou_threshold: float = 0.3) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): instead of dropping overlapping boxes, decay their scores.

    Repeatedly take the highest-scoring remaining box (the first on ties), keep it, and multiply every other
    remaining box's score by ``exp(-IoU^2 / sigma)`` (``"gaussian"``) or, where IoU > ``iou_threshold``, by
    ``1 - IoU`` (``"linear"``). Boxes whose score falls below ``score_threshold`` are dropped.

    Returns:
        ``(keep, decayed)``: the kept indices (``Tensor[K]`` int64) by descending decayed score, and their
        decayed scores (``Tensor[K]``). Use the decayed scores as the detections' scores: ranking by them is
        the point of the method.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10]])
        >>> keep, decayed = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.3]))
        >>> keep.tolist(), [round(s, 4) for s in decayed.tolist()]
        ([0, 1, 2], [0.9, 0.4852, 0.3])
    """
    keep, decayed, _, _ = soft_nms_record(boxes, scores, sigma, score_threshold, method, iou_threshold)
    return keep, decayed


def soft_nms_record(boxes: Tensor, scores: Tensor, sigma: float, score_threshold: float, method: str,
                    iou_threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`soft_nms`, and per candidate (``Tensor[N]`` each) the kept box whose decay dropped it below
    ``score_threshold`` (-1 if none did) and its final score: as kept, or the decayed score that fell below the
    threshold (the score itself for one that started below it)."""
    _check(boxes, scores)
    if method not in SOFT_METHODS:
        raise ValueError(f"method must be one of {SOFT_METHODS}, got {method!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    b = boxes.float()
    current = scores.float().clone()
    alive = current >= score_threshold
    dropped_by = torch.full_like(scores, -1, dtype=torch.int64)
    keep, decayed = [], []
    while bool(alive.any()):
        masked = torch.where(alive, current, torch.full_like(current, -float("inf")))
        i = int(torch.argmax(masked))  # the first maximum
        keep.append(i)
        decayed.append(current[i])
        alive[i] = False
        iou = box_iou(b[i:i + 1], b)[0]
        if method == "gaussian":
            weight = torch.exp(-(iou * iou) / sigma)
        else:
            weight = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        new = torch.where(alive, current * weight, current)
        dropped = alive & (new < score_threshold)
        dropped_by[dropped] = i
        current = new
        alive &= ~dropped
    index = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    values = torch.stack(decayed).to(scores.dtype) if decayed else scores.new_zeros(0)
    return index, values, dropped_by, current.to(scores.dtype)


def _check(boxes: Tensor, scores: Tensor, idxs: Tensor | None = None) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected scores of shape [{len(boxes)}], got {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"expected idxs of shape [{len(boxes)}], got {tuple(idxs.shape)}")


def visit_order(scores: Tensor) -> Tensor:
    """Indices by descending score, equal scores in index order."""
    return torch.sort(scores, descending=True, stable=True).indices


def _greedy_sorted(n: int, duplicate: Callable[[Tensor | slice, Tensor | slice], Tensor], device: torch.device,
                   block: int | None = None) -> Tensor:
    """Greedy suppression of ``n`` candidates already in visit order: ``Tensor[K]`` int64, the kept positions.

    ``duplicate(rows, cols)`` is ``Tensor[R, C]`` bool, whether candidate ``cols[c]`` is a duplicate of a kept
    ``rows[r]``, for positions given as an index tensor or a slice. Each step takes the next ``block``
    candidates still alive and decides them among themselves first (their ``R x R`` rows: a candidate is kept
    when no kept one before it, in this block or an earlier one, has it as a duplicate); then only the rows of
    the kept ones go against the candidates still alive after the block. No row of a suppressed candidate is
    ever computed. The later candidates are a contiguous slice (a view) while at least half of them are alive,
    else the alive ones are gathered.
    """
    block = _BLOCK if block is None else block
    alive = np.ones(n, dtype=bool)
    kept: list[np.ndarray] = []
    start = 0
    while True:
        ahead = np.flatnonzero(alive[start:]) + start
        if len(ahead) == 0:
            break
        rows = ahead[:block]
        inner = duplicate(*(_positions(rows, device),) * 2).cpu().numpy()  # [R, R]
        mine = np.zeros(len(rows), dtype=bool)
        for r in range(len(rows)):
            mine[r] = not inner[:r, r][mine[:r]].any()
        survivors = rows[mine]
        kept.append(survivors)
        start = int(rows[-1]) + 1
        later = ahead[len(rows):]
        if len(later) == 0 or len(survivors) == 0:
            continue
        r_t = _positions(survivors, device)
        if 2 * len(later) >= n - start:  # mostly alive: the run from ``start`` on, as a view
            hit = duplicate(r_t, slice(start, n)).any(0).cpu().numpy()
            alive[start:] &= ~hit
        else:
            hit = duplicate(r_t, torch.as_tensor(later, device=device)).any(0).cpu().numpy()
            alive[later[hit]] = False
    return torch.as_tensor(np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64), dtype=torch.int64,
                           device=device)


def _positions(positions: np.ndarray, device: torch.device) -> Tensor | slice:
    """Sorted ``positions`` as a slice where they are a run (rows taken as a view, not gathered), else a tensor."""
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return torch.as_tensor(positions, device=device)


def _greedy(order: Tensor, duplicate: Callable[[Tensor, Tensor], Tensor], block: int | None = None) -> Tensor:
    """Greedy suppression in ``order``; ``duplicate(rows, cols)`` is ``Tensor[R, C]`` bool for box indices.

    The rows of the next ``block`` candidates still alive are evaluated at once, against every candidate still
    alive from the first of them on; the sequential decisions then run on the host. A candidate suppressed by an
    earlier one of its own block wastes its row, at most ``block - 1`` rows per block.
    """
    block = _BLOCK if block is None else block
    n = len(order)
    alive = np.ones(n, dtype=bool)
    kept: list[int] = []
    start = 0
    while True:
        ahead = np.flatnonzero(alive[start:])
        if len(ahead) == 0:
            break
        rows = ahead[:block] + start
        cols = ahead + start  # every candidate still alive from the block's first one on
        dup = duplicate(order[torch.as_tensor(rows, device=order.device)],
                        order[torch.as_tensor(cols, device=order.device)]).cpu().numpy()
        for r, pos in enumerate(rows):
            if not alive[pos]:
                continue
            kept.append(int(pos))
            alive[pos] = False  # decided
            later = cols > pos
            alive[cols[later]] &= ~dup[r, later]
        start = int(rows[-1]) + 1
    return order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]
