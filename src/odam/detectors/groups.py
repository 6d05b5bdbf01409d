"""Feature groups that several adapters share, and the receptive radius of a head.

A :class:`~odam.detectors.base.FeatureGroup` says which tensor a detection's attributes are differentiated with
respect to, and how a map on it is placed on the image. Besides the whole-map :class:`MapGroup` (in ``base``):

* :func:`leaf_groups`: one ``MapGroup`` per feature level, each detection on its own level's map;
* :class:`CropGroup`: batched crops of one level around each detection, for heads whose outputs see only a few
  cells (:func:`receptive_radius`), one row per detection;
* :class:`RoIGroup` and :class:`RoILevelGroup`: a two-stage detector's RoI-pooled features, and the FPN level they
  were pooled from through RoIAlign's adjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from odam.detectors.base import FeatureGroup, Geometry, LayerError, MapGroup, Windows


def conv_reach(conv: nn.Conv2d) -> int | None:
    """Cells a stride-1 "same" convolution (odd kernel, zero padding ``dilation * (kernel - 1) / 2``) sees on each
    side, or ``None`` for any other convolution.

    Example:
        >>> conv_reach(nn.Conv2d(4, 4, 3, padding=1)), conv_reach(nn.Conv2d(4, 4, 3, stride=2, padding=1))
        (1, None)
    """
    k, d, p = conv.kernel_size, conv.dilation, conv.padding
    if conv.stride != (1, 1) or conv.padding_mode != "zeros" or isinstance(p, str):
        return None
    if any(ki % 2 == 0 or pi != di * (ki - 1) // 2 for ki, di, pi in zip(k, d, p, strict=True)):
        return None
    return max(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))


def receptive_radius(chain: Iterable[nn.Module], pointwise: tuple[type, ...]) -> int | None:
    """How many cells an output of a chain of layers sees in each direction: the sum of its convolutions'
    :func:`conv_reach`, or ``None`` when a layer is neither such a convolution nor one of ``pointwise`` (layers
    that act on each position alone). ``chain`` lists the layers in the order they run.

    Example:
        >>> tower = [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2)]
        >>> receptive_radius(tower, (nn.ReLU,)), receptive_radius(tower, ())
        (3, None)
    """
    radius = 0
    for layer in chain:
        if isinstance(layer, nn.Conv2d):
            reach = conv_reach(layer)
            if reach is None:
                return None
            radius += reach
        elif not isinstance(layer, pointwise):
            return None
    return radius


def leaf_groups(leaves: dict[str, Tensor], levels: Tensor, geometry: Geometry, level_names: list[str],
                 centres: dict[str, tuple[float, float]] | None = None) -> tuple[list[FeatureGroup], Tensor]:
    """One :class:`MapGroup` per leaf, centred as ``centres`` says (by leaf name; ``0`` by default). With one leaf
    per level, each detection goes to its own level's leaf."""
    centres = centres or {}
    if len(leaves) == 1:
        chosen, group_of = list(leaves.items()), torch.zeros_like(levels)
    elif all(n in leaves for n in level_names):
        chosen, group_of = [(n, leaves[n]) for n in level_names], levels.clone()
    else:
        raise LayerError(
            f"the chosen layer returns maps {sorted(leaves)} but the detector's levels are {level_names};"
            " pick a module that returns one tensor or one map per level"
        )
    groups: list[FeatureGroup] = []
    for g, (name, leaf) in enumerate(chosen):
        rows = torch.zeros(int((group_of == g).sum()), dtype=torch.int64, device=levels.device)
        groups.append(MapGroup(leaf, rows, geometry, centre=centres.get(name, 0.0)))
    return groups, group_of


class CropGroup(MapGroup):
    """Crops of one FPN level around one-stage detections (see ``OneStageAdapter._crops``), one per row."""

    def __init__(self, input: Tensor, rows: Tensor, geometry: Geometry, level_map: Tensor, windows: Windows,
                 centre: float | tuple[float, float] = 0.0) -> None:
        super().__init__(input, rows, geometry, explained=level_map, rowwise=True, centre=centre)
        self.windows = windows

    def pullback(self, grads: Tensor, rows: Tensor) -> Tensor:
        crops = self.windows[rows]
        return _scatter(grads, crops.origin, crops.size, crops.grid)

    def item_numel(self) -> int:
        return self.input[0].numel() * 9

    def weighted(self, grads: Tensor, rows: Tensor, smooth: Callable[[Tensor], Tensor] | None, radius: int
                 ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        # The gradient is zero outside the crop, and smoothing spreads it by ``radius``.
        crops = self.windows[rows]
        size = torch.tensor(crops.size, device=crops.origin.device)
        win = Windows.covering(crops.origin - radius, crops.origin + size + radius, crops.grid)
        kernels = getattr(smooth, "kernels", None) if smooth is not None else (lambda h, w, dtype: None)
        if kernels is not None:  # separable smoothing: two band matrices per item, on the crop itself
            maps = _banded_weighted(grads, crops.origin - win.origin, win, self.explained.detach(),
                                    kernels(*win.size, grads.dtype))
            return maps, lambda m: self.to_image(win.scatter(m), rows)
        g = _scatter(grads, crops.origin - win.origin, crops.size, win.size)
        if smooth is not None:
            g = smooth(g)
        maps = (g * win.gather(self.explained.detach())).sum(1)
        return maps, lambda m: self.to_image(win.scatter(m), rows)


def _scatter(values: Tensor, origin: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """:meth:`Windows.scatter` for windows that may reach past the grid (crops of a map's border cells, whose
    values there are zero): the parts outside are dropped."""
    lo, hi = (origin.amin(0).tolist(), origin.amax(0).tolist()) if len(origin) else ([0, 0], [0, 0])
    top, left = max(0, -lo[0]), max(0, -lo[1])
    if not (top or left or hi[0] + size[0] > grid[0] or hi[1] + size[1] > grid[1]):
        return Windows(origin, size, grid).scatter(values)
    wide = (top + max(grid[0], hi[0] + size[0]), left + max(grid[1], hi[1] + size[1]))
    out = Windows(origin + origin.new_tensor([top, left]), size, wide).scatter(values)
    return out[..., top:top + grid[0], left:left + grid[1]]


def _band(kernel: Tensor | None, cells: int, size: int, offset: Tensor) -> Tensor:
    """``Tensor[B, cells, size]``: ``M[b, i, p] = kernel[b, i - p - offset[b] + r]`` (0 past the kernel's ends),
    the smoothing of one axis as a matrix from ``size`` crop cells starting at ``offset`` (``Tensor[B]``) to the
    window's ``cells``, zero padding at the window's ends. ``kernel`` is ``Tensor[B, 2r+1]``, or ``None`` for
    placement alone (``[[1]]``)."""
    if kernel is None:
        kernel = torch.ones(len(offset), 1, device=offset.device)
    r = kernel.shape[1] // 2
    i = torch.arange(cells, device=offset.device)
    p = torch.arange(size, device=offset.device)
    d = i[None, :, None] - p[None, None, :] - offset[:, None, None] + r  # [B, cells, size]
    inside = (d >= 0) & (d <= 2 * r)
    taps = kernel.gather(1, d.clamp(0, 2 * r).flatten(1)).view(d.shape)
    return torch.where(inside, taps, torch.zeros((), device=taps.device, dtype=taps.dtype))


def _banded_weighted(grads: Tensor, offset: Tensor, win: Windows, level: Tensor, kernel: Tensor | None) -> Tensor:
    """``sum_c Phi(g_c) * A_c`` on each window (``Tensor[B, *win.size]``) for crop gradients ``grads``
    (``Tensor[B, C, sy, sx]``, their top-left cell at ``offset`` (``[B, 2]``) in the window, zero where they
    lie outside it), with ``Phi`` the separable smoothing ``M_y g M_x^T`` (:func:`_band`)."""
    _, _, sy, sx = grads.shape
    my = _band(kernel, win.size[0], sy, offset[:, 0]).to(grads.dtype)
    mx = _band(kernel, win.size[1], sx, offset[:, 1]).to(grads.dtype)
    return _separable_weighted(grads, my, mx, win, level)


def _separable_weighted(grads: Tensor, my: Tensor, mx: Tensor, win: Windows, level: Tensor) -> Tensor:
    """``sum_c (M_y g_c M_x^T) * A_c`` on each window (``Tensor[B, *win.size]``): ``grads`` is ``Tensor[B, C, sy,
    sx]``, ``my`` ``Tensor[B, wy, sy]``, ``mx`` ``Tensor[B, wx, sx]`` and ``A`` the windows of ``level``
    (``Tensor[1, C, h, w]``).

    Written as ``sum_q M_x[j, q] sum_c A_c[i, j] (M_y g_c)[i, q]``: two batched products, the channels last."""
    b, c, sy, sx = grads.shape
    wy, wx = win.size
    t = torch.bmm(my, grads.permute(0, 2, 3, 1).reshape(b, sy, sx * c)).view(b * wy, sx, c)  # (M_y g)[i, q, c]
    _, ys, xs = win.index()
    a = level[0].permute(1, 2, 0)[ys.expand(-1, -1, wx), xs.expand(-1, wy, -1)]  # [B, wy, wx, C]
    w = torch.bmm(a.reshape(b * wy, wx, c), t.transpose(1, 2)).view(b, wy, wx, sx)
    return (w * mx[:, None]).sum(-1)


def _band_smooth(x: Tensor, kernel: Tensor) -> Tensor:
    """:func:`odam.explainers.odam.gaussian_smooth` of ``x`` (``Tensor[B, K, h, w]``) with its kernels
    ``kernel`` (``Tensor[B, 2r+1]``, from the smoothing's ``kernels``) as two banded matrices per item,
    ``M_y x_k M_x^T``: batched matrix products, which on a CPU run many times faster than as many depthwise
    convolutions (one per map) with long kernels."""
    b, k, h, w = x.shape
    zero = torch.zeros(b, dtype=torch.int64, device=x.device)
    my = _band(kernel, h, h, zero).to(x.dtype)
    mx = _band(kernel, w, w, zero).to(x.dtype)
    t = torch.bmm(x.reshape(b, k * h, w), mx.transpose(1, 2)).view(b, k, h, w)  # along x
    t = torch.bmm(t.transpose(2, 3).reshape(b, k * w, h), my.transpose(1, 2))  # along y: [B, K * w, h]
    return t.view(b, k, w, h).transpose(2, 3)


class RoIGroup(FeatureGroup):
    """RoI-pooled features ``[K, C, 7, 7]``, one row per detection, explained on their own grid.

    Maps are pasted into the proposal box the features were pooled from, shifted by the level's cell centre
    ``c``: torchvision's RoIAlign (``aligned=False``) samples the level at cell coordinate ``x / s`` for a
    proposal coordinate ``x``, and cell ``u`` of the level is centred on model-input pixel ``u * s + c``
    (:class:`MapGroup`), so a bin reads the image at pixel ``x + c``.

    Args:
        centre: ``(c_y, c_x)`` of the level each proposal was pooled from (``Tensor[K, 2]``) or of all of them.
    """

    rowwise = True

    def __init__(self, input: Tensor, rows: Tensor, proposals: Tensor, geometry: Geometry,
                 centre: float | tuple[float, float] = 0.0) -> None:
        self.input, self.rows, self.geometry = input, rows, geometry
        cy, cx = (centre, centre) if isinstance(centre, int | float) else centre
        self.centre = (float(cy), float(cx))
        self.proposals = proposals + proposals.new_tensor([cx, cy, cx, cy])

    def features(self, rows: Tensor) -> Tensor:
        return self.input.detach()[rows]

    def cells(self, boxes: Tensor, rows: Tensor) -> Tensor:
        return torch.full((len(rows),), float(self.input.shape[-1]), device=boxes.device)

    def to_image(self, maps: Tensor, rows: Tensor) -> Tensor:
        box = self.proposals[rows].to(maps.dtype)  # model-input pixels
        ys, xs = self.geometry.input_pixels(maps.device, maps.dtype)
        gx = 2 * (xs[None] - box[:, 0:1]) / (box[:, 2:3] - box[:, 0:1]).clamp_min(1e-6) - 1  # [B, W]
        gy = 2 * (ys[None] - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]).clamp_min(1e-6) - 1  # [B, H]
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return torch.nn.functional.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)[:, 0]


def _roi_axis(start: Tensor, end: Tensor, scale: float, bins: int, cells: int, sampling_ratio: int,
              dtype: torch.dtype) -> Tensor:
    """``Tensor[B, bins, cells]``: the weights with which torchvision's RoIAlign (``aligned=False``) averages
    ``cells`` cells of one axis into each of ``bins`` bins, for RoIs from ``start`` to ``end`` (``Tensor[B]``,
    model-input pixels; cell ``u`` at ``u / scale``).

    RoIAlign's weight of cell ``(u, v)`` in bin ``(i, j)`` is this axis' weight of ``u`` in ``i`` times the other
    axis' of ``v`` in ``j``: each sample's bilinear weights, its clamping at the border and the dropping of
    samples past it all act on one axis at a time, and a bin averages a grid of samples."""
    lo, hi = start.to(dtype) * scale, end.to(dtype) * scale
    length = (hi - lo).clamp_min(1.0)
    size = length / bins
    grid = torch.full_like(lo, sampling_ratio) if sampling_ratio > 0 else torch.ceil(length / bins)
    n = int(grid.max()) if len(grid) else 1
    k = torch.arange(n, device=lo.device, dtype=dtype)[None, None, :]
    i = torch.arange(bins, device=lo.device, dtype=dtype)[None, :, None]
    size, grid = size[:, None, None], grid[:, None, None]
    pos = lo[:, None, None] + i * size + (k + 0.5) * size / grid  # [B, bins, n] sample positions in cells
    used = (k < grid) & (pos >= -1) & (pos <= cells)
    pos = pos.clamp_min(0)
    low = pos.floor()
    top = low >= cells - 1
    low = torch.where(top, torch.full_like(low, cells - 1), low)
    frac = torch.where(top, torch.zeros_like(pos), pos - low)
    high = torch.where(top, low, low + 1)
    out = torch.zeros(len(lo), bins, cells, device=lo.device, dtype=dtype)
    out.scatter_add_(2, low.long().clamp(0, cells - 1), torch.where(used, (1 - frac) / grid, 0.0))
    out.scatter_add_(2, high.long().clamp(0, cells - 1), torch.where(used, frac / grid, 0.0))
    return out


class RoILevelGroup(MapGroup):
    """RoI-pooled rows of one FPN level, explained on that level's map through the adjoint of RoIAlign."""

    def __init__(self, input: Tensor, rows: Tensor, geometry: Geometry, level_map: Tensor, rois: Tensor,
                 spatial_scale: float, sampling_ratio: int, centre: float | tuple[float, float] = 0.0) -> None:
        super().__init__(input, rows, geometry, explained=level_map, rowwise=True, centre=centre)
        self.rois, self.spatial_scale, self.sampling_ratio = rois, spatial_scale, sampling_ratio

    def pullback(self, grads: Tensor, rows: Tensor) -> Tensor:
        zero = torch.zeros(len(rows), 2, dtype=torch.int64, device=grads.device)
        return self._adjoint(grads, rows, zero, tuple(self.explained.shape[-2:]))

    def _adjoint(self, grads: Tensor, rows: Tensor, origin: Tensor, size: tuple[int, int]) -> Tensor:
        """RoIAlign's adjoint onto windows of ``size`` cells whose top-left cells are ``origin`` (``[B, 2]``)."""
        rois = self.rois[rows].clone()
        rois[:, 0] = torch.arange(len(rows), dtype=rois.dtype, device=rois.device)
        shift = origin.flip(1).to(rois.dtype) / self.spatial_scale  # (x, y) in model-input pixels
        rois[:, 1:] -= shift.repeat(1, 2)
        ph, pw = grads.shape[-2:]
        return torch.ops.torchvision._roi_align_backward(
            grads.contiguous(), rois, self.spatial_scale, ph, pw, len(rows), grads.shape[1], size[0], size[1],
            self.sampling_ratio, False,
        )

    def item_numel(self) -> int:
        extent = (self.rois[:, 3:] - self.rois[:, 1:3]) * self.spatial_scale
        area = float(((extent + 4) * (1 + 2 * 0.375)).prod(1).mean()) if len(extent) else 1.0  # 3 sigma margins
        return int(self.explained.shape[1] * min(area, self.explained.shape[-2] * self.explained.shape[-1]))

    def weighted(self, grads: Tensor, rows: Tensor, smooth: Callable[[Tensor], Tensor] | None, radius: int
                 ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        # 1. The adjoint of RoIAlign is zero outside the RoI's cells (plus one for bilinear sampling), and
        #    smoothing spreads it by ``radius``: work on a window that holds both. Windows are clipped to the
        #    map, so RoIAlign's clamping at the border is unchanged; elsewhere the window leaves a margin.
        # 2. RoIAlign applies the same spatial weights w(bin, q) to every channel, so with G = dY/dX:
        #    sum_c Phi(adj(G)_c)(q) A_c(q) = sum_bin Phi(w(bin, .))(q) * sum_c G_c(bin) A_c(q).
        #    Smoothing then acts on 49 bin maps instead of 256 channels, and the rest is one matrix product.
        # 3. RoIAlign's weights are separable (:func:`_roi_axis`), and so is the smoothing: with a smoothing that
        #    gives its kernels, Phi(w(bin, .)) is an outer product of two small matrices per RoI, and the sum is
        #    that of a crop (:func:`_separable_weighted`), without the 49 bin maps.
        level = self.explained.detach()
        b, c, ph, pw = grads.shape
        box = self.rois[rows, 1:] * self.spatial_scale
        extent = (box[:, 2:] - box[:, :2]).clamp_min(1.0)
        lo = torch.floor(box[:, [1, 0]]) - 1 - radius  # (y, x)
        hi = torch.floor(box[:, [1, 0]] + extent[:, [1, 0]]) + 3 + radius
        win = Windows.covering(lo, hi, tuple(level.shape[-2:]))
        kernels = getattr(smooth, "kernels", None) if smooth is not None else (lambda h, w, dtype: None)
        if kernels is not None:
            kernel = kernels(*win.size, grads.dtype)
            rois = self.rois[rows]
            shift = win.origin.to(rois.dtype) / self.spatial_scale  # (y, x) in model-input pixels, as _adjoint
            wy = _roi_axis(rois[:, 2] - shift[:, 0], rois[:, 4] - shift[:, 0], self.spatial_scale, ph, win.size[0],
                           self.sampling_ratio, grads.dtype)
            wx = _roi_axis(rois[:, 1] - shift[:, 1], rois[:, 3] - shift[:, 1], self.spatial_scale, pw, win.size[1],
                           self.sampling_ratio, grads.dtype)
            zero = torch.zeros(b, dtype=torch.int64, device=grads.device)
            if kernel is not None:
                wy = torch.bmm(wy, _band(kernel, win.size[0], win.size[0], zero).to(grads.dtype).transpose(1, 2))
                wx = torch.bmm(wx, _band(kernel, win.size[1], win.size[1], zero).to(grads.dtype).transpose(1, 2))
            maps = _separable_weighted(grads, wy.transpose(1, 2), wx.transpose(1, 2), win, level)
            return maps, lambda m: self.to_image(win.scatter(m), rows)
        bins = torch.eye(ph * pw, dtype=grads.dtype, device=grads.device).view(1, ph * pw, ph, pw)
        spread = self._adjoint(bins.expand(b, -1, -1, -1), rows, win.origin, win.size)  # [B, bins, wh, ww]
        kernel = smooth.kernels(*win.size, grads.dtype) if hasattr(smooth, "kernels") else None
        if kernel is not None and kernel.shape[1] > 1:
            spread = _band_smooth(spread, kernel)
        elif smooth is not None and kernel is None:
            spread = smooth(spread)
        g = grads.reshape(b, c, ph * pw).transpose(1, 2)  # [B, bins, C]
        if win.size == tuple(level.shape[-2:]):  # every window is the whole level: one product, nothing gathered
            mixed = (g.reshape(b * ph * pw, c) @ level[0].flatten(1)).view(b, ph * pw, -1)
        else:
            mixed = torch.bmm(g, win.gather(level).flatten(2))
        maps = (spread * mixed.view(b, ph * pw, *win.size)).sum(1)  # spread may be a transposed view
        return maps, lambda m: self.to_image(win.scatter(m), rows)
