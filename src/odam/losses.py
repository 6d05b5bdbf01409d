"""Odam-Train's auxiliary losses (paper Sec. 3.2, Eq. 3): consistent heat maps for one object, distinct
heat maps for different objects.

For the positive predictions of a batch, each with an ODAM map ``H_n`` (flattened to a vector), the ground-truth
object ``gt_index[n]`` it was assigned to, and its box's IoU with that object:

* for each object ``p``, the *best* prediction ``b(p)`` is its positive with the highest IoU (the first on ties);
* ``L_con = sum_p sum_{n in P(p), n != b(p)}  -log cos(H_b(p), H_n)``
* ``L_sep = sum_p sum_{m not in P(p)}          -log (1 - cos(H_b(p), H_m))``, with ``m`` from the same image;
* the loss is ``weight * (L_con + L_sep) / N`` with ``N`` the number of (best, other) pairs summed.

Cosines are clamped to ``[eps, 1 - eps]`` (half-precision maps are computed in float32), so a pair of
orthogonal maps of one object (or identical maps of two) costs ``-log eps`` and passes no gradient. The pair of
the best prediction with itself is not counted: its cosine is 1 by definition. ``negatives="overlapping"`` keeps
in ``L_sep`` only the predictions whose box overlaps the best one's (IoU > 0); the paper's Eq. 3 uses ``"all"``.

The maps themselves, inside a detector's training step, are built by :mod:`odam.train.odam_train`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

NEGATIVES: tuple[str, ...] = ("all", "overlapping")


def odam_train_loss(maps: Tensor, gt_index: Tensor, ious: Tensor, *, boxes: Tensor | None = None,
                    image_index: Tensor | None = None, negatives: str = "all", weight: float = 1.0,
                    eps: float = 1e-6) -> tuple[Tensor, dict[str, Tensor]]:
    """Odam-Train's consistency and separation loss on the maps of the positive predictions.

    Args:
        maps: ``Tensor[N, D]``, one ODAM map per positive prediction, all resized to one grid and flattened
            (non-negative maps give cosines in [0, 1]).
        gt_index: ``Tensor[N]`` int, the ground-truth object each positive was assigned to by the detector's
            matcher. Ids need only be unique within an image.
        ious: ``Tensor[N]``, each positive's box IoU with its ground-truth object.
        boxes: ``Tensor[N, 4]`` predicted boxes (xyxy); needed for ``negatives="overlapping"``.
        image_index: ``Tensor[N]`` int, which image of the batch each positive comes from; pairs never cross
            images. ``None``: all from one image.
        negatives: ``"all"`` (Eq. 3) or ``"overlapping"``.
        weight: the loss weight lambda.
        eps: the cosine clamp.

    Returns:
        ``(loss, stats)``: the scalar loss (differentiable w.r.t. ``maps``), and detached ``stats`` with
        ``"con"`` and ``"sep"`` (``L_con / N`` and ``L_sep / N``, so that they add up to ``loss / weight``),
        ``"con_pairs"`` and ``"sep_pairs"`` (pair counts). With no pair at all the loss is 0.

    Example:
        >>> maps = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])  # two of object 0, one of object 1
        >>> # con: -log cos(a, b) = 0.00614; sep: 3 pairs of orthogonal maps, 1e-6 each; N = 4
        >>> loss, stats = odam_train_loss(maps, torch.tensor([0, 0, 1]), torch.tensor([0.9, 0.7, 0.8]))
        >>> int(stats["con_pairs"]), int(stats["sep_pairs"]), round(loss.item(), 4)
        (1, 3, 0.0015)
    """
    if maps.ndim != 2:
        raise ValueError(f"maps must be Tensor[N, D], got shape {tuple(maps.shape)}")
    n = maps.shape[0]
    for name, t in (("gt_index", gt_index), ("ious", ious), ("image_index", image_index)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be Tensor[{n}] like maps' first dimension, got shape {tuple(t.shape)}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if negatives == "overlapping" and (boxes is None or tuple(boxes.shape) != (n, 4)):
        got = None if boxes is None else tuple(boxes.shape)
        raise ValueError(f"negatives='overlapping' needs boxes of shape [{n}, 4], got {got}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    if maps.dtype in (torch.float16, torch.bfloat16):  # under AMP: 1 - eps is 1 in half precision
        maps = maps.float()
    image = torch.zeros_like(gt_index) if image_index is None else image_index
    zero = maps.sum() * 0.0
    empty = {"con": zero.detach(), "sep": zero.detach(), "con_pairs": torch.tensor(0), "sep_pairs": torch.tensor(0)}
    if n == 0:
        return zero, empty
    # One group per (image, object); its best member has the highest IoU (stable: the first on ties).
    keys = torch.stack([image, gt_index], 1)
    groups, group_of = torch.unique(keys, dim=0, return_inverse=True)
    order = torch.argsort(ious.detach(), descending=True, stable=True)
    # The best of a group is its member that comes first in ``order``.
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=maps.device)
    first = torch.full((len(groups),), n, dtype=torch.int64, device=maps.device)
    first.scatter_reduce_(0, group_of, rank, reduce="amin", include_self=True)
    best = order[first]

    unit = F.normalize(maps, dim=1)
    cos = (unit[best] @ unit.T).clamp(eps, 1 - eps)  # [G, N]
    same_image = image[best][:, None] == image[None]
    same = (group_of[None] == torch.arange(len(groups), device=maps.device)[:, None])
    same[torch.arange(len(groups), device=maps.device), best] = False
    other = same_image & (group_of[None] != torch.arange(len(groups), device=maps.device)[:, None])
    if negatives == "overlapping":
        other &= box_iou(boxes[best].detach(), boxes.detach()) > 0
    con = -(torch.log(cos) * same).sum()
    sep = -(torch.log1p(-cos) * other).sum()
    pairs = int(same.sum()) + int(other.sum())
    if pairs == 0:
        return zero, empty
    stats = {"con": (con / pairs).detach(), "sep": (sep / pairs).detach(),
             "con_pairs": same.sum().detach(), "sep_pairs": other.sum().detach()}
    return weight * (con + sep) / pairs, stats


class OdamTrainLoss(nn.Module):
    """:func:`odam_train_loss` as a module: the options are fixed at construction.

    Example:
        >>> loss_fn = OdamTrainLoss(weight=0.5)
        >>> maps = torch.rand(4, 16, requires_grad=True)
        >>> loss, stats = loss_fn(maps, torch.tensor([0, 0, 1, 1]), torch.tensor([0.9, 0.6, 0.7, 0.8]))
        >>> loss.backward(); maps.grad.shape
        torch.Size([4, 16])
    """

    def __init__(self, *, negatives: str = "all", weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives, self.weight, self.eps = negatives, weight, eps

    def forward(self, maps: Tensor, gt_index: Tensor, ious: Tensor, boxes: Tensor | None = None,
                image_index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return odam_train_loss(maps, gt_index, ious, boxes=boxes, image_index=image_index,
                               negatives=self.negatives, weight=self.weight, eps=self.eps)


def pair_margin_loss(embeddings: Tensor, gt_index: Tensor, *, image_index: Tensor | None = None,
                     alpha: float = 0.2, beta: float = 1.0, weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """FeatureNMS's embedding loss (Salscheider 2021), the margin loss of Wu et al. (2017) on pairs.

    For every pair ``(i, j)``, ``i < j``, of positive predictions in one image, with Euclidean embedding
    distance ``D_ij``: ``max(0, alpha + y_ij * (D_ij - beta))``, where ``y_ij = +1`` if both were assigned to the
    same ground-truth object and ``-1`` otherwise. Same-object pairs are pulled within ``beta - alpha``,
    different-object pairs pushed beyond ``beta + alpha``; FeatureNMS then calls two predictions one object when
    their distance is at most ``beta``. The loss is ``weight * (mean over same-object pairs + mean over
    different-object pairs)``, so crowded images with many more different-object pairs do not drown the rest.

    Args:
        embeddings: ``Tensor[N, E]`` (L2-normalised by the embedding head).
        gt_index: ``Tensor[N]`` int, each positive's object; ids need only be unique within an image.
        image_index: ``Tensor[N]`` int, each positive's image; ``None`` for one image.

    Returns:
        ``(loss, stats)`` with stats ``same`` and ``different`` (the two means, detached) and ``same_pairs``,
        ``different_pairs``.

    Example:
        >>> e = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1]]), dim=1)
        >>> loss, stats = pair_margin_loss(e, torch.tensor([0, 0, 1]))
        >>> round(loss.item(), 4), int(stats["same_pairs"]), int(stats["different_pairs"])
        (0.0, 1, 2)
    """
    if embeddings.ndim != 2 or gt_index.shape != embeddings.shape[:1]:
        raise ValueError(f"expected embeddings [N, E] and gt_index [N], got {tuple(embeddings.shape)} and "
                         f"{tuple(gt_index.shape)}")
    if image_index is None:
        image_index = torch.zeros_like(gt_index)
    e = embeddings if embeddings.dtype == torch.float64 else embeddings.float()  # half precision: in float32
    i, j = torch.triu_indices(len(e), len(e), 1, device=e.device)
    together = image_index[i] == image_index[j]
    i, j = i[together], j[together]
    same = gt_index[i] == gt_index[j]
    distance = (e[i] - e[j]).pow(2).sum(1).clamp_min(1e-12).sqrt()
    y = torch.where(same, 1.0, -1.0)
    margin = F.relu(alpha + y * (distance - beta))
    parts = {}
    for name, mask in (("same", same), ("different", ~same)):
        parts[name] = margin[mask].sum() / mask.sum().clamp_min(1)
    loss = weight * (parts["same"] + parts["different"]) + 0 * e.sum()  # keeps the graph with no pairs
    stats = {"same": parts["same"].detach(), "different": parts["different"].detach(),
             "same_pairs": same.sum().detach(), "different_pairs": (~same).sum().detach()}
    return loss, stats
