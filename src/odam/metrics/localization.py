"""Localisation and object-discrimination metrics of a heat map (paper Sec. 4.2).

Conventions shared by every function here:

- A saliency map is ``Tensor[H, W]`` (float, any device) at image resolution. Negative values are clipped to 0
  first (maps from ODAM or Grad-CAM are non-negative anyway); energies are sums of the clipped map, in float64.
- A region is a box ``Tensor[4]`` ``(x1, y1, x2, y2)`` in pixels or a bool mask ``Tensor[H, W]`` of the map's
  shape. Pixel ``(row i, col j)`` covers ``[j, j + 1) x [i, i + 1)``; it lies inside a box iff its centre
  ``(j + 0.5, i + 0.5)`` satisfies ``x1 <= cx <= x2`` and ``y1 <= cy <= y2`` (see :func:`region_mask`).
- Points are ``(x, y) = (col, row)`` pixel indices; the peak of a map is its first maximum in row-major order.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PointingGame:
    """Result of :func:`pointing_game`.

    Attributes:
        hit: whether the peak pixel lies inside the region (``False`` when the map has no positive value).
        point: the peak ``(x, y) = (col, row)``, or ``None`` when the map has no positive value.
    """

    hit: bool
    point: tuple[int, int] | None


@dataclass(frozen=True)
class EnergyPointingGame:
    """Result of :func:`energy_pointing_game`.

    Attributes:
        share: ``inside / total`` in [0, 1]; 0.0 for an all-zero map.
        inside: energy (sum of the clipped map) inside the region.
        total: energy of the whole map.
    """

    share: float
    inside: float
    total: float


@dataclass(frozen=True)
class Compactness:
    """Result of :func:`compactness`.

    Attributes:
        value: the paper's compactness (smaller is more concentrated); ``nan`` for an all-zero map.
        peak: the peak ``(x, y) = (col, row)`` the distances are measured from, or ``None`` for an all-zero map.
    """

    value: float
    peak: tuple[int, int] | None


@dataclass(frozen=True)
class ObjectDiscrimination:
    """Result of :func:`object_discrimination_index`.

    Attributes:
        value: ``other / all`` in [0, 1] (the paper reports it in percent); ``nan`` when ``all == 0``.
        other: energy inside the union of the other objects' regions.
        all: energy inside the union of all objects' regions.
    """

    value: float
    other: float
    all: float


def check_saliency(saliency: Tensor) -> None:
    """Raise a one-line ``ValueError`` unless ``saliency`` is a non-empty floating-point ``Tensor[H, W]`` (what every
    metric of this package takes)."""
    if not isinstance(saliency, Tensor) or saliency.ndim != 2 or saliency.numel() == 0:
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"expected saliency of shape [H, W] with H, W >= 1, got {shape}")
    if not saliency.is_floating_point():
        raise ValueError(f"expected a floating-point saliency map, got {saliency.dtype}")


def energy_map(saliency: Tensor) -> Tensor:
    """The clipped map in float64, detached: ``max(S, 0)``."""
    return saliency.detach().to(torch.float64).clamp_min(0)


def _peak(energy: Tensor) -> tuple[int, int] | None:
    """First maximum of a clipped map in row-major order as ``(col, row)``; ``None`` if the map is all zero."""
    flat = energy.flatten()
    index = int(flat.argmax())  # torch documents argmax as returning the first maximal index
    if not flat[index] > 0:
        return None
    return index % energy.shape[1], index // energy.shape[1]


def region_mask(region: Tensor, shape: tuple[int, int] | torch.Size) -> Tensor:
    """Pixels of a ``shape = (H, W)`` image that lie inside a region.

    A box ``Tensor[4]`` ``(x1, y1, x2, y2)`` contains pixel ``(row i, col j)`` iff its centre satisfies
    ``x1 <= j + 0.5 <= x2`` and ``y1 <= i + 0.5 <= y2`` (compared in float64). A bool mask ``Tensor[H, W]`` is
    returned as is (it must have the requested shape).

    Args:
        region: a box ``Tensor[4]`` in pixels, or a bool mask ``Tensor[H, W]``.
        shape: ``(H, W)`` of the image.

    Returns:
        ``Tensor[H, W]`` bool, on the region's device.

    Example:
        >>> import torch
        >>> region_mask(torch.tensor([0.5, 0.0, 2.0, 1.5]), (2, 3)).int().tolist()
        [[1, 1, 0], [1, 1, 0]]
    """
    H, W = (int(n) for n in shape)
    if not isinstance(region, Tensor):
        raise ValueError(f"expected a region tensor (box [4] or bool mask [H, W]), got {type(region).__name__}")
    if region.shape == (4,):
        box = region.detach().to(torch.float64)
        cx = torch.arange(W, dtype=torch.float64, device=box.device) + 0.5
        cy = torch.arange(H, dtype=torch.float64, device=box.device) + 0.5
        cols = (box[0] <= cx) & (cx <= box[2])
        rows = (box[1] <= cy) & (cy <= box[3])
        return rows[:, None] & cols[None, :]
    if region.ndim == 2:
        if region.shape != (H, W):
            raise ValueError(f"expected a mask of shape {(H, W)}, got {tuple(region.shape)}")
        if region.dtype != torch.bool:
            raise ValueError(f"expected a bool mask, got {region.dtype}")
        return region
    raise ValueError(f"expected a box of shape [4] or a mask of shape [H, W], got {tuple(region.shape)}")


def pointing_game(saliency: Tensor, region: Tensor) -> PointingGame:
    """Pointing game (Zhang et al., 2018): does the map's peak fall inside the object?

    ``hit = region[argmax S]``, with the peak the first maximum in row-major order. A map whose maximum is
    ``<= 0`` (e.g. all zero) has no peak and scores a miss. Zhang et al.'s 15-pixel tolerance margin is not
    used, as the ODAM paper does not mention one.

    Args:
        saliency: ``Tensor[H, W]`` heat map.
        region: the ground-truth box ``Tensor[4]`` or bool mask ``Tensor[H, W]`` (see :func:`region_mask`).

    Returns:
        :class:`PointingGame` with ``hit`` and the peak ``point = (x, y)``.

    Example:
        >>> import torch
        >>> s = torch.zeros(4, 4)
        >>> s[1, 2] = 1.0
        >>> pointing_game(s, torch.tensor([2.0, 0.0, 4.0, 2.0]))
        PointingGame(hit=True, point=(2, 1))
    """
    check_saliency(saliency)
    mask = region_mask(region, saliency.shape)
    point = _peak(energy_map(saliency))
    if point is None:
        return PointingGame(hit=False, point=None)
    return PointingGame(hit=bool(mask[point[1], point[0]]), point=point)


def energy_pointing_game(saliency: Tensor, region: Tensor) -> EnergyPointingGame:
    """Energy-based pointing game (Wang et al., 2020): the share of the map's energy inside the object.

    ``share = sum_{x in R} S+_x / sum_x S+_x`` with ``S+ = max(S, 0)``; an all-zero map has ``share = 0.0``.

    Args:
        saliency: ``Tensor[H, W]`` heat map.
        region: the ground-truth box ``Tensor[4]`` or bool mask ``Tensor[H, W]`` (see :func:`region_mask`).

    Returns:
        :class:`EnergyPointingGame` with ``share``, ``inside`` and ``total``.

    Example:
        >>> import torch
        >>> energy_pointing_game(torch.tensor([[3.0, 1.0]]), torch.tensor([0.0, 0.0, 1.0, 1.0]))
        EnergyPointingGame(share=0.75, inside=3.0, total=4.0)
    """
    check_saliency(saliency)
    mask = region_mask(region, saliency.shape).to(saliency.device)
    energy = energy_map(saliency)
    inside = float(energy[mask].sum())
    total = float(energy.sum())
    return EnergyPointingGame(share=inside / total if total > 0 else 0.0, inside=inside, total=total)


def compactness(saliency: Tensor, box: Tensor) -> Compactness:
    """Heat-map compactness: the energy-weighted spread around the peak, relative to the object's size.

    ``Comp = ( (1 / sum_x S_x) * sum_x S_x * ||x - x_hat||^2 / ((h^2 + w^2) / 4) )^(1/2)``

    with ``S = max(S, 0)``, ``x`` the pixel centres, ``x_hat`` the centre of the peak pixel (first maximum in
    row-major order) and ``(w, h) = (x2 - x1, y2 - y1)`` the size of the ground-truth box. Smaller is more
    concentrated; a value of 1 means a typical distance of half the box diagonal. An all-zero map gives
    ``nan``.

    Args:
        saliency: ``Tensor[H, W]`` heat map.
        box: the ground-truth box ``Tensor[4]`` ``(x1, y1, x2, y2)`` in pixels (a mask has no width and height).

    Returns:
        :class:`Compactness` with ``value`` and the ``peak`` ``(x, y)``.

    Raises:
        ValueError: if the box has zero width and height.

    Example:
        >>> import torch
        >>> compactness(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([0.0, 0.0, 2.0, 0.0]))
        Compactness(value=1.4142135623730951, peak=(0, 0))
    """
    check_saliency(saliency)
    if not isinstance(box, Tensor) or box.shape != (4,):
        shape = tuple(box.shape) if isinstance(box, Tensor) else type(box).__name__
        raise ValueError(f"expected box of shape [4], got {shape}")
    x1, y1, x2, y2 = box.detach().to(torch.float64).tolist()
    half_diagonal_sq = ((x2 - x1) ** 2 + (y2 - y1) ** 2) / 4
    if not half_diagonal_sq > 0:
        raise ValueError(f"expected a box with a non-zero diagonal, got {[x1, y1, x2, y2]}")
    energy = energy_map(saliency)
    peak = _peak(energy)
    if peak is None:
        return Compactness(value=math.nan, peak=None)
    H, W = energy.shape
    dx = torch.arange(W, dtype=torch.float64, device=energy.device) - peak[0]
    dy = torch.arange(H, dtype=torch.float64, device=energy.device) - peak[1]
    dist_sq = dy[:, None] ** 2 + dx[None, :] ** 2
    spread = float((energy * dist_sq).sum() / energy.sum())
    return Compactness(value=math.sqrt(spread / half_diagonal_sq), peak=peak)


def object_discrimination_index(saliency: Tensor, target: int, regions: Tensor) -> ObjectDiscrimination:
    """Object discrimination index (ODI, paper Sec. 4.2): how much energy leaks onto the *other* objects.

    ``ODI = sum_{x in U_other} S_x / sum_{x in U_all} S_x`` with ``S = max(S, 0)``, ``U_all`` the union of all
    objects' regions and ``U_other`` the union of all but the target's. A pixel in the overlap of the target
    and another object counts as "other"; background pixels count in neither. With a single object
    ``ODI = 0``; when the map has no energy on any object (``all == 0``) it is ``nan``.

    Args:
        saliency: ``Tensor[H, W]`` heat map explaining one object.
        target: index in ``regions`` of the explained object.
        regions: all ground-truth objects of the image, boxes ``Tensor[N, 4]`` or bool masks ``Tensor[N, H, W]``.

    Returns:
        :class:`ObjectDiscrimination` with ``value`` (a fraction, not percent), ``other`` and ``all``.

    Raises:
        ValueError: for bad shapes or a ``target`` outside ``[0, N)``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[3.0, 1.0, 5.0]])
        >>> boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
        >>> object_discrimination_index(s, 0, boxes)
        ObjectDiscrimination(value=0.25, other=1.0, all=4.0)
    """
    check_saliency(saliency)
    if not isinstance(regions, Tensor) or not (
        (regions.ndim == 2 and regions.shape[1] == 4) or (regions.ndim == 3 and regions.shape[1:] == saliency.shape)
    ):
        shape = tuple(regions.shape) if isinstance(regions, Tensor) else type(regions).__name__
        raise ValueError(f"expected regions of shape [N, 4] or [N, {', '.join(map(str, saliency.shape))}], got {shape}")
    n = regions.shape[0]
    target = operator.index(target)
    if not 0 <= target < n:
        raise ValueError(f"target {target} out of range for {n} regions")
    masks = torch.stack([region_mask(r, saliency.shape).to(saliency.device) for r in regions])
    others = torch.cat([masks[:target], masks[target + 1:]])
    energy = energy_map(saliency)
    other = float(energy[others.any(dim=0)].sum())
    total = float(energy[masks.any(dim=0)].sum())
    return ObjectDiscrimination(value=other / total if total > 0 else math.nan, other=other, all=total)
