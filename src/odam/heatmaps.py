"""Heat maps as vectors, and their correlation: the one comparison Odam-NMS decides on and the correlation study
(``odam evaluate correlation``) measures.

A map is block-averaged to a short edge of ``short_edge`` cells and flattened (:func:`heatmap_vectors`, paper
Sec. 3.3). Two vectors are compared by Pearson's correlation, the cosine of the mean-centred vectors (the paper's
"normalized correlation"), or by the plain cosine (:func:`correlation`). ODAM maps are non-negative, so the plain
cosine of two maps of neighbouring people is pulled up by their shared support and background level; centring
removes that (docs/RESULTS.md, "Heat-map correlation").

A constant vector has no Pearson correlation (for the cosine: an all-zero vector has none). :func:`correlation`
scores it 0 against everything, no evidence either way, which is what Odam-NMS needs; :func:`undefined` says which
vectors these are, so that a study can leave their pairs out instead.

This module imports nothing of odam: explainers, NMS and the evaluation runners all build on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Short edge, in cells, to which heat maps are averaged before they are compared (paper Sec. 3.3).
SHORT_EDGE = 50


def heatmap_vectors(maps: Tensor, short_edge: int = SHORT_EDGE) -> Tensor:
    """Heat maps ``Tensor[N, H, W]`` block-averaged to a short edge of ``short_edge`` cells and flattened:
    ``Tensor[N, h * w]`` float32, what :func:`odam.nms.odam_nms` compares.

    Example:
        >>> heatmap_vectors(torch.rand(3, 100, 150)).shape
        torch.Size([3, 3750])
    """
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape [N, H, W], got {tuple(maps.shape)}")
    if isinstance(short_edge, bool) or not isinstance(short_edge, int) or short_edge < 1:
        raise ValueError(f"short_edge must be a positive int, got {short_edge!r}")
    return F.adaptive_avg_pool2d(maps[:, None].float(), vector_grid(*maps.shape[-2:], short_edge)).flatten(1)


def vector_grid(height: int, width: int, short_edge: int = SHORT_EDGE) -> tuple[int, int]:
    """``(rows, columns)`` of the cells :func:`heatmap_vectors` averages an ``height x width`` map to: a vector
    ``.view(rows, columns)`` is a small map again.

    Example:
        >>> vector_grid(100, 150)
        (50, 75)
    """
    scale = short_edge / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def pooling_matrix(size: int, cells: int, device: torch.device | None = None) -> Tensor:
    """``Tensor[cells, size]``: the weights with which :func:`heatmap_vectors` averages ``size`` pixels of one axis
    into ``cells`` (``F.adaptive_avg_pool1d``'s bins). The block average of a map ``M`` (``[H, W]``) is
    ``pooling_matrix(H, rows) @ M @ pooling_matrix(W, columns).T``: the pooling is separable.

    Example:
        >>> pooling_matrix(4, 2).tolist()
        [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    eye = torch.eye(size, device=device, dtype=torch.float32)
    return F.adaptive_avg_pool1d(eye[None], cells)[0].T.contiguous()


def unit_vectors(vectors: Tensor, centred: bool = True, *, rows: Tensor | None = None) -> Tensor:
    """``Tensor[N, D]`` float32: each vector mean-centred (``centred=True``) and scaled to unit length, so that
    ``unit_vectors(a) @ unit_vectors(b).T`` is :func:`correlation`; vectors in :func:`undefined` become zero.

    ``rows`` (``Tensor[M]`` int64) takes those rows, in that order: ``unit_vectors(v, rows=i)`` equals
    ``unit_vectors(v[i])`` with one copy of the vectors fewer (Odam-NMS visits them by score).

    Example:
        >>> unit_vectors(torch.tensor([[1.0, 3.0], [2.0, 2.0]])).tolist()
        [[-0.7071067690849304, 0.7071067690849304], [0.0, 0.0]]
        >>> unit_vectors(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), rows=torch.tensor([1, 0])).tolist()
        [[0.0, 0.0], [-0.7071067690849304, 0.7071067690849304]]
    """
    if vectors.ndim != 2:
        raise ValueError(f"expected vectors of shape [N, D], got {tuple(vectors.shape)}")
    x = vectors.float()
    owned = x is not vectors  # a float32 copy was made: ours to change in place
    if rows is not None:
        x, owned = x.index_select(0, rows.to(x.device)), True
    if not centred:
        return F.normalize(x, dim=1)
    mean = x.mean(1, keepdim=True)
    # max |x| without an |x| copy of the vectors; amax and amin separately, because torch.aminmax(dim=1) is 20x
    # slower than the two together on the CPU (6.8 against 0.33 ms for 1000 x 2500 float32, torch 2.14, one thread)
    peak = torch.maximum(x.amax(1), -x.amin(1))
    centred_x = x.sub_(mean) if owned else x - mean
    norm = centred_x.norm(dim=1)
    flat = _flat(norm, peak)  # what undefined() says, from the same norm (one pass fewer over the vectors)
    # Dividing by infinity zeroes the flat rows in the same pass (x / inf is 0 for every finite x).
    return centred_x.div_(torch.where(flat, torch.inf, norm.clamp_min(1e-30))[:, None])


def undefined(vectors: Tensor, centred: bool = True) -> Tensor:
    """``Tensor[N]`` bool: the vectors whose correlation is undefined, constant up to float32 rounding
    (``centred=True``) or all zero (``centred=False``).

    Example:
        >>> undefined(torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])).tolist()
        [False, True, True]
    """
    x = vectors.float()
    if not centred:
        return x.norm(dim=1) == 0
    return _flat((x - x.mean(1, keepdim=True)).norm(dim=1), torch.maximum(x.amax(1), -x.amin(1)))


def _flat(centred_norm: Tensor, peak: Tensor) -> Tensor:
    """:func:`undefined` (centred) from the norms of the centred vectors and each vector's largest ``|x|``."""
    return centred_norm <= 1e-6 * peak.clamp_min(1e-30)


def correlation(vectors: Tensor, centred: bool = True) -> Tensor:
    """Pairwise normalised (Pearson) correlation ``Tensor[N, N]`` of heat-map vectors ``Tensor[N, D]``;
    ``centred=False`` gives the plain cosine instead.

    A vector in :func:`undefined` correlates 0 with everything, itself included.

    Example:
        >>> correlation(torch.tensor([[1.0, 0, 0, 1], [3.0, 1, 1, 3], [0.0, 1, 1, 0], [2.0, 2, 2, 2]])).tolist()
        [[1.0, 1.0, -1.0, 0.0], [1.0, 1.0, -1.0, 0.0], [-1.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    unit = unit_vectors(vectors, centred)
    return (unit @ unit.T).clamp(-1, 1)
