"""Similarity of two heat maps, for the sanity check by parameter randomisation (Adebayo et al., 2018).

Both are computed in float64 and return a plain float. :func:`ssim` reproduces
``skimage.metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` on the min-max normalised maps, in torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: SSIM constants of Wang et al. (2004) and scikit-image: Gaussian window sigma, truncated at 3.5 sigma.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _check_pair(a: Tensor, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ValueError(f"expected two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"expected maps of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing the average of their ranks (``scipy.stats.rankdata``)."""
    sorted_values, order = torch.sort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # 1-based rank of the last member of each group of ties
    group_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(group_rank[inverse])
    ranks[order] = group_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps of equal shape.

    The Pearson correlation of the ranks of the flattened maps, ties receiving their average rank::

        rho = sum (ra - mean ra)(rb - mean rb) / sqrt(sum (ra - mean ra)^2 * sum (rb - mean rb)^2)

    A constant map has no ranking: the result is ``nan``.

    Args:
        a: ``Tensor[H, W]`` map (any shape is flattened).
        b: map of the same shape as ``a``.

    Returns:
        ``rho`` in [-1, 1], or ``nan``.

    Example:
        >>> import torch
        >>> spearman(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 4.0], [9.0, 16.0]]))
        1.0
    """
    _check_pair(a, b)
    if a.numel() == 0:
        raise ValueError(f"expected non-empty maps, got shape {tuple(a.shape)}")
    ra = _average_ranks(a.detach().flatten().to(torch.float64))
    rb = _average_ranks(b.detach().flatten().to(torch.float64))
    da, db = ra - ra.mean(), rb - rb.mean()
    denominator = float((da.square().sum() * db.square().sum()).sqrt())
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, float((da * db).sum()) / denominator))


def _min_max(x: Tensor) -> Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _gaussian_filter_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable correlation of a batch ``Tensor[B, H, W]`` with ``kernel``, rows then columns, without padding.

    The output ``[B, H - 2r, W - 2r]`` is ``scipy.ndimage.gaussian_filter(x)`` cropped by the kernel radius ``r``:
    those values never reach the boundary, so the boundary mode does not matter.
    """
    x = F.conv2d(x[:, None], kernel.view(1, 1, -1, 1))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))[:, 0]


def ssim(a: Tensor, b: Tensor) -> float:
    """Structural similarity (Wang et al., 2004) of two heat maps after min-max normalising each to [0, 1].

    A constant map normalises to zeros. With local Gaussian-weighted means ``mu``, variances ``var`` and
    covariance ``cov`` (sigma 1.5, truncated at radius ``int(3.5 * 1.5 + 0.5) = 5``)::

        SSIM = mean over the map cropped by 5 pixels of
               (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))

    with ``C1 = 0.01^2`` and ``C2 = 0.03^2`` (data range 1). The crop equals the window radius, so the cropped
    values never reach the boundary and the boundary mode does not matter. This equals scikit-image's
    ``structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` on the normalised maps.

    Args:
        a: ``Tensor[H, W]`` map, ``H, W >= 11`` (the window size).
        b: map of the same shape as ``a``.

    Returns:
        The mean SSIM, at most 1.

    Example:
        >>> import torch
        >>> a = torch.arange(144.0).view(12, 12)
        >>> ssim(a, 3 * a + 1), round(ssim(a, -a), 4)
        (1.0, -0.9317)
    """
    _check_pair(a, b)
    radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    window = 2 * radius + 1
    if a.ndim != 2 or min(a.shape) < window:
        raise ValueError(f"expected maps of shape [H, W] with H, W >= {window}, got {tuple(a.shape)}")
    x = torch.stack([_min_max(a.detach().to(torch.float64)), _min_max(b.detach().to(torch.float64))])
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * offsets.square() / _SSIM_SIGMA**2)
    kernel = kernel / kernel.sum()
    # one filtering pass for mu_a, mu_b, E[a^2], E[b^2], E[ab]
    moments = _gaussian_filter_valid(torch.cat([x, x.square(), (x[0] * x[1])[None]]), kernel)
    mu_a, mu_b, aa, bb, ab = moments
    var_a, var_b, cov = aa - mu_a.square(), bb - mu_b.square(), ab - mu_a * mu_b
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return float(s.mean())
