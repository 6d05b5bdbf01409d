"""The cheaper FCOS maps of Odam-NMS (frozen GroupNorm) against the paths they replace: one batch of unclipped
crops through "valid" convolutions against crops clipped at the border and batched by shape, and the smoothing
as band matrices on the crop against ``gaussian_smooth`` on the scattered window."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tests.conftest import build

import odam
from odam.detectors.base import Geometry, Windows
from odam.detectors.groups import CropGroup, RoILevelGroup
from odam.detectors.torchvision import OneStageAdapter
from odam.explainers.odam import ODAM, GaussianSmoothing, gaussian_kernels, gaussian_smooth


def _vectors(detector: odam.DetectorAdapter, image: torch.Tensor) -> tuple[torch.Tensor, list]:
    trace = detector.trace(image, candidates=True, max_candidates=40)
    _, groups, _ = trace.graph(trace.detections, frozen_norm=True)
    return ODAM(detector, frozen_norm=True).vectors(trace, trace.detections), groups


@pytest.mark.parametrize("model", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2", "synthcrowd-fcos-odamtrain"])
def test_one_batch_of_unclipped_crops_equals_crops_batched_by_shape(model: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if model.startswith("synthcrowd"):
        detector = odam.load_detector(model)
    else:
        detector = odam.wrap_detector(build(model, min_size=96, max_size=128))
    image = torch.rand(3, 90, 130, generator=torch.Generator().manual_seed(4))
    fast, groups = _vectors(detector, image)
    # one group per level, and some crops reach past their level (candidates at the border)
    levels = {id(g.explained) for g in groups}
    assert len(groups) == len(levels) and all(isinstance(g, CropGroup) for g in groups)
    assert any(bool(((g.windows.origin < 0) | (g.windows.origin + torch.tensor(g.windows.size)
                                               > torch.tensor(g.windows.grid))).any()) for g in groups)
    monkeypatch.setattr(OneStageAdapter, "_even_reach", lambda self, radius: False)
    slow, groups = _vectors(detector, image)
    assert len(groups) > len(levels)  # the previous path: crops clipped at the border, one batch per shape
    peak = slow.abs().amax(1, keepdim=True)
    assert bool((peak > 0).all())
    assert float(((fast - slow).abs() / peak).max()) < 1e-5
    assert not any("forward" in vars(m) for m in detector.model.modules())  # no patch left on the head


def _plain(sigma: list[float] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The smoothing as a bare callable (no ``kernels``): the groups' map-by-map path."""
    if sigma is None:
        return lambda x: x
    return lambda x: gaussian_smooth(x, torch.tensor(sigma, dtype=x.dtype))


@pytest.mark.parametrize("sigma", [None, [0.5, 1.3, 2.0, 4.0]])
def test_banded_smoothing_equals_gaussian_smooth_on_the_window(sigma: list[float] | None) -> None:
    g = torch.Generator().manual_seed(5)
    h, w, c = 9, 12, 3
    level = torch.rand(1, c, h, w, generator=g, dtype=torch.float64)
    # 5x5 crops, some reaching past the map (their gradients are zero there, as the masked head makes them)
    origin = torch.tensor([[-2, -1], [0, 4], [5, 9], [3, -3]])
    crops = Windows(origin, (5, 5), (h, w))
    grads = torch.rand(4, c, 5, 5, generator=g, dtype=torch.float64)
    ys = origin[:, :1] + torch.arange(5)
    xs = origin[:, 1:] + torch.arange(5)
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    grads = grads * inside[:, None]
    size = (8 * h, 8 * w)  # stride 8
    group = CropGroup(torch.zeros(4, c, 5, 5), torch.arange(4), Geometry(size, size, size), level, crops)
    rows = torch.arange(4)
    smooth = None if sigma is None else GaussianSmoothing(torch.tensor(sigma, dtype=torch.float64))
    radius = 0 if sigma is None else int(torch.ceil(3 * torch.tensor(sigma)).max())
    fast, _ = group.weighted(grads, rows, smooth, radius)
    plain = _plain(sigma)
    slow, _ = group.weighted(grads, rows, plain, radius)  # no kernels: scatter to the window, then smooth
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    # and against the whole map: pullback, smooth, weight, then cut the window out
    whole = plain(group.pullback(grads, rows))
    whole = (whole * level).sum(1)
    win = Windows.covering(origin - radius, origin + torch.tensor(crops.size) + radius, (h, w))
    torch.testing.assert_close(fast, win.gather(whole[:, None])[:, 0], rtol=1e-12, atol=1e-12)


def test_gaussian_kernels_are_gaussian_smooths() -> None:
    sigma = torch.tensor([0.3, 1.0, 2.5])
    kernel = gaussian_kernels(sigma, 21, 21)
    x = torch.zeros(3, 1, 21, 21)
    x[:, 0, 10, 10] = 1
    r = kernel.shape[1] // 2
    assert r == 8  # ceil(3 * 2.5)
    expected = torch.zeros(3, 21, 21)
    expected[:, 10 - r:11 + r, 10 - r:11 + r] = kernel[:, :, None] * kernel[:, None, :]
    torch.testing.assert_close(gaussian_smooth(x, sigma)[:, 0], expected)
    assert gaussian_kernels(torch.tensor([2.0]), 1, 1).tolist() == [[1.0]]  # a one-cell map: no smoothing


@pytest.mark.parametrize("size", [96, 320])
@pytest.mark.parametrize("smoothing", ["adaptive", None, 6.0])
def test_roi_bin_maps_smoothed_as_band_matrices_equal_gaussian_smooth(size: int, smoothing: str | float | None
                                                                       ) -> None:
    # Faster R-CNN on its FPN levels: the 49 bin maps smoothed by two band matrices per RoI (and, where every
    # window is its whole level, the channels mixed without gathering them) against gaussian_smooth map by map.
    # A wide fixed sigma at 96 px makes windows cover their levels; at 320 px some are smaller. In float64.
    model = build("fasterrcnn_resnet50_fpn", detections=30, min_size=size, max_size=size * 4 // 3).double()
    detector = odam.wrap_detector(model)
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    trace = detector.trace(image, candidates=True, max_candidates=30)
    _, groups, group_of = trace.graph(trace.detections)
    explainer = ODAM(detector, smoothing=smoothing)
    checked, whole = 0, []
    for g, group in enumerate(groups):
        assert isinstance(group, RoILevelGroup)
        members = torch.where(group_of == g)[0]
        grads = torch.randn(len(group.rows), *group.input.shape[1:], generator=torch.Generator().manual_seed(g),
                            dtype=torch.float64)
        sigma = explainer._sigma(group.cells(trace.detections.boxes[members], group.rows))
        radius = 0 if sigma is None else int(torch.ceil(3 * sigma).max())
        fast, _ = group.weighted(grads, group.rows, None if sigma is None else GaussianSmoothing(sigma), radius)
        slow, _ = group.weighted(grads, group.rows, _plain(None if sigma is None else sigma.tolist()), radius)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10 * float(slow.abs().max()))
        checked += len(group.rows)
        whole.append(tuple(fast.shape[-2:]) == tuple(group.explained.shape[-2:]))
    assert checked == 30
    assert all(whole) == (size == 96 and smoothing == 6.0), whole  # both branches of the channel mixing


def test_uneven_or_oblong_heads_keep_the_clipped_crops() -> None:
    detector = odam.wrap_detector(build("fcos_resnet50_fpn"))
    radius = detector._receptive_radius(frozen_norm=True)
    assert radius == 5 and detector._even_reach(radius)
    assert not detector._even_reach(radius + 1)
    detector.model.head.regression_head.bbox_ctrness.kernel_size = (3, 1)  # only read, never run
    assert not detector._even_reach(radius)


def test_convolutions_of_their_own_keep_the_clipped_crops() -> None:
    # _valid_convs runs a plain F.conv2d in place of each convolution's forward: a subclass's or an instance's own
    # forward (weight standardisation, adapters), or padding other than zeros, must keep the path that runs it
    class Standardised(torch.nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    detector = odam.wrap_detector(build("fcos_resnet50_fpn"))
    radius = detector._receptive_radius(frozen_norm=True)
    conv = detector.model.head.classification_head.conv[0]
    conv.__class__ = Standardised
    assert not detector._even_reach(radius)
    conv.__class__ = torch.nn.Conv2d
    assert detector._even_reach(radius)
    conv.forward = lambda x: torch.nn.Conv2d.forward(conv, x)
    assert not detector._even_reach(radius)
    del conv.forward
    conv.padding_mode = "reflect"
    assert not detector._even_reach(radius)


@pytest.mark.parametrize("sampling_ratio", [2, 0, 1])
@pytest.mark.parametrize("scale", [0.25, 0.125])
def test_roi_axis_weights_are_roi_aligns(sampling_ratio: int, scale: float) -> None:
    # The outer product of the two axes' weights is RoIAlign's own weight of each cell in each bin, read off
    # torchvision's roi_align by differentiating it (it is linear in the map): inside the map, across its
    # borders, past them, and for RoIs smaller than a cell.
    from torchvision.ops import roi_align

    from odam.detectors.groups import _roi_axis

    h, w = 13, 17
    g = torch.Generator().manual_seed(sampling_ratio + int(1 / scale))
    xy = torch.rand(40, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) / scale * 1.2 - 8
    wh = torch.rand(40, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) / scale * 0.6
    wh[:5] *= 0.02  # under a cell
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[5] = torch.tensor([0.0, 0.0, w / scale, h / scale])  # the whole map
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=torch.float64), boxes], 1)
    level = torch.zeros(1, 1, h, w, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda x: roi_align(x, rois, (7, 7), scale, sampling_ratio, aligned=False), level)[:, 0, :, :, 0, 0]
    wy = _roi_axis(boxes[:, 1], boxes[:, 3], scale, 7, h, sampling_ratio, torch.float64)
    wx = _roi_axis(boxes[:, 0], boxes[:, 2], scale, 7, w, sampling_ratio, torch.float64)
    torch.testing.assert_close(wy[:, :, None, :, None] * wx[:, None, :, None, :], jac, rtol=1e-12, atol=1e-12)
    assert jac.abs().sum() > 0
