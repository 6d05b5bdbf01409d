"""Matching the outputs of two runs by box, not by position.

Random-init detectors score many boxes almost alike. Two runs that compute the same thing in another order (a batch
against one image, a fused model, float64, another CPU or thread count) round those scores apart by ~1e-7, and
near-tied boxes then swap places or trade the last place of a top-k. Tests that compare such outputs pair them with
:func:`match_by_box` first, and compare the paired rows.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def match_by_box(boxes_a: Tensor, boxes_b: Tensor, *, atol: float = 1e-3, scores_a: Tensor | None = None,
                 scores_b: Tensor | None = None, score_atol: float = 1e-5, labels_a: Tensor | None = None,
                 labels_b: Tensor | None = None, subset: bool = False) -> Tensor:
    """A one-to-one pairing of the rows of ``a`` with rows of ``b`` whose boxes (and scores, labels) agree.

    Args:
        boxes_a: ``Tensor[N, ..., 4]``; the trailing dimensions are compared whole (e.g. a candidate's box for
            every label, ``[N, L, 4]``).
        boxes_b: ``Tensor[M, ..., 4]``, the same trailing shape.
        atol: the largest coordinate difference of a pair, in pixels.
        scores_a: ``Tensor[N, ...]``, optional; a pair's scores must then agree within ``score_atol`` too.
        scores_b: ``Tensor[M, ...]``, given with ``scores_a``.
        score_atol: the largest score difference of a pair.
        labels_a: ``Tensor[N]``, optional; a pair's labels must then be equal.
        labels_b: ``Tensor[M]``, given with ``labels_a``.
        subset: ``False``: ``N == M`` and every row of ``b`` is used. ``True``: every row of ``a`` is paired with
            a distinct row of ``b``, and rows of ``b`` may be left over (``a`` is a top-k of ``b``'s list).

    Returns:
        ``Tensor[N]`` (int64) ``perm``: row ``i`` of ``a`` pairs with row ``perm[i]`` of ``b``, so
        ``boxes_b[perm]`` lines up with ``boxes_a``.

    Raises:
        AssertionError: when no one-to-one pairing exists; the message names a row of ``a`` left without a
            partner and its nearest row of ``b``.
    """
    n, m = len(boxes_a), len(boxes_b)
    if not subset and n != m:
        raise AssertionError(f"match_by_box: {n} rows against {m}; expected as many")
    if n > m:
        raise AssertionError(f"match_by_box: {n} rows cannot pair one-to-one with {m}")
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    a = boxes_a.detach().double().cpu().reshape(n, -1)
    b = boxes_b.detach().double().cpu().reshape(m, -1)
    if a.shape[1] != b.shape[1]:
        raise AssertionError(f"match_by_box: boxes of shape {tuple(boxes_a.shape[1:])} and "
                             f"{tuple(boxes_b.shape[1:])}")
    dist = (a[:, None] - b[None]).abs().amax(-1)  # [N, M], L-inf in pixels
    ok = dist <= atol
    cost = dist / max(atol, 1e-12)
    if (scores_a is None) != (scores_b is None) or (labels_a is None) != (labels_b is None):
        raise AssertionError("match_by_box: give scores (labels) for both lists or for neither")
    if scores_a is not None:
        sa = scores_a.detach().double().cpu().reshape(n, -1)
        sb = scores_b.detach().double().cpu().reshape(m, -1)
        sdist = (sa[:, None] - sb[None]).abs().amax(-1)
        ok &= sdist <= score_atol
        cost = cost + sdist / max(score_atol, 1e-12)
    if labels_a is not None:
        ok &= labels_a.cpu().reshape(n, 1) == labels_b.cpu().reshape(1, m)
    # Inadmissible pairs cost more than any complete admissible pairing, so the cheapest pairing uses one
    # whenever one exists.
    big = 10.0 * (float(cost[ok].sum()) + 1.0) if bool(ok.any()) else 1.0
    cost = torch.where(ok, cost, big + cost.clamp_max(1e6))
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = torch.from_numpy(np.asarray(cols, dtype=np.int64))[np.argsort(rows)]
    bad = [i for i in range(n) if not bool(ok[i, perm[i]])]
    if bad:
        i = bad[0]
        j = int(dist[i].argmin())
        lonely = [i for i in range(n) if not bool(ok[i].any())]
        why = (f"{len(lonely)} row(s) of a have no partner in b at all" if lonely
               else "each row has a partner, but not one each")
        detail = f"box {a[i].tolist()}"
        if scores_a is not None:
            detail += f", score {sa[i].tolist()}"
        nearest = f"box {b[j].tolist()} at {float(dist[i, j]):.3g} px"
        if scores_a is not None:
            nearest += f", score {sb[j].tolist()}"
        raise AssertionError(f"match_by_box: no one-to-one pairing within atol={atol}, score_atol={score_atol} "
                             f"({why}; {len(bad)} of {n} unpaired): row {i} of a ({detail}); nearest row {j} of "
                             f"b: {nearest}")
    return perm

