"""ODAM: exact maps on a hand-set detector, alignment after resize, batched == per-detection loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import ALL_FAMILIES, B, D, K, build, handset_fcos
from torch import nn
from torchvision.models import detection

import odam
from odam.explainers.odam import ADAPTIVE_RATIO, MIN_SIGMA, explain_loop, gaussian_smooth

# A 300x400 image with one bright 24x24 square; the hand-set FCOS resizes it to 800x1066 (scale 8/3).
H_IMG, W_IMG = 300, 400
STRIDE = 8


@pytest.fixture(scope="module")
def square() -> torch.Tensor:
    img = torch.zeros(3, H_IMG, W_IMG)
    img[:, 120:144, 201:225] = 1.0
    return img


def _bilinear_place(cell_map: np.ndarray) -> np.ndarray:
    """Reference placement of a map on the stride-8 grid onto the 300x400 image.

    Cell j is centred on resized pixel j * 8 (the torchvision adapters' centre for maps without an FPN,
    ``MapGroup(centre=0)``); original pixel x is centred on resized pixel (x + 0.5) * 1066 / 400 - 0.5. Bilinear
    weights, clamped at the border like the explainer's placement. (The hand-set backbone itself averages
    non-overlapping 8x8 blocks, centred on (j + 0.5) * 8 - 0.5; the adapter does not know that.)
    """
    h, w = cell_map.shape

    def axis(n_out: int, n_resized: int, n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip(((np.arange(n_out) + 0.5) * (n_resized / n_out) - 0.5) / STRIDE, 0, n_cells - 1)
        i0 = np.floor(u).astype(int)
        return i0, np.minimum(i0 + 1, n_cells - 1), u - i0

    i0, i1, fy = axis(H_IMG, 800, h)
    j0, j1, fx = axis(W_IMG, 1066, w)
    fy, fx = fy[:, None], fx[None, :]
    return ((1 - fy) * ((1 - fx) * cell_map[np.ix_(i0, j0)] + fx * cell_map[np.ix_(i0, j1)])
            + fy * ((1 - fx) * cell_map[np.ix_(i1, j0)] + fx * cell_map[np.ix_(i1, j1)]))


def _assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    # float32 bilinear weights carry ~1e-5 absolute error, so tolerances are relative to the peak.
    assert expected.max() > 0
    np.testing.assert_allclose(actual.double().cpu().numpy(), expected, rtol=1e-4, atol=1e-4 * expected.max())


def _cell_means(model: nn.Module, img: torch.Tensor) -> np.ndarray:
    """Channel 0 of the hand-set backbone's output (mean intensity of each 8x8 cell of the resized image)."""
    feats = odam.wrap_detector(model).trace(img).state["features"]
    assert feats[0].shape == (1, 2, 100, 136)
    return feats[0][0, 0].detach().double().cpu().numpy()


def test_handset_detector_map_is_exact(square: torch.Tensor, device: torch.device) -> None:
    model = handset_fcos().to(device)
    explanation = odam.ODAM(model, smoothing=None).explain(square, targets=("score", "right", "top"))
    dets = explanation.detections
    assert len(dets) >= 1
    assert explanation.maps.device.type == device.type  # maps stay on the model's device
    f = _cell_means(model, square)
    for k in range(len(dets)):
        i, j = divmod(int(dets.indices[k]), 136)
        z = K * f[i, j] + B
        sig = 1 / (1 + math.exp(-z))
        score = math.sqrt(sig / (1 + math.exp(-10.0)))
        assert dets.scores[k].item() == pytest.approx(score, rel=1e-5)
        # d score / d A0(p) = 0.5 * score * (1 - sigmoid(z)) * K; H = relu(grad * A0) at p only.
        cells = np.zeros((100, 136))
        cells[i, j] = 0.5 * score * (1 - sig) * K * f[i, j]
        expected = _bilinear_place(cells)
        _assert_close(explanation.maps[k, 0], expected)
        # Edges: right = x2 = ctr + (D + f) * 8 resized pixels, so d right / d A0(p) = 8 * 400 / 1066 in
        # original pixels; top = -y1 likewise with 8 * 300 / 800.
        for t, ratio in ((1, W_IMG / 1066), (2, H_IMG / 800)):
            cells[i, j] = 8 * ratio * f[i, j]
            _assert_close(explanation.maps[k, t], _bilinear_place(cells))


def test_peak_lies_inside_box_after_resize(square: torch.Tensor) -> None:
    explanation = odam.ODAM(handset_fcos()).explain(square)
    for k in range(len(explanation)):
        m = explanation.maps[k, 0]
        y, x = divmod(int(m.argmax()), m.shape[1])
        x1, y1, x2, y2 = explanation.detections.boxes[k].tolist()
        assert x1 <= x <= x2 and y1 <= y <= y2
        assert 120 - 6 <= y < 144 + 6 and 201 - 6 <= x < 225 + 6  # and on the object
    assert explanation.detections.boxes[0, 2] - explanation.detections.boxes[0, 0] > 2 * D * STRIDE * H_IMG / 800


def test_adaptive_smoothing_matches_hand_computation(square: torch.Tensor) -> None:
    model = handset_fcos()
    dets = odam.wrap_detector(model).detect(square)[:1]
    explanation = odam.ODAM(model).explain(square, targets=("right",), detections=dets)
    box = dets.boxes[0] * torch.tensor([1066 / W_IMG, 800 / H_IMG] * 2) / STRIDE
    sigma = max(MIN_SIGMA, ADAPTIVE_RATIO * math.sqrt(float((box[2] - box[0]) * (box[3] - box[1]))))
    r = math.ceil(3 * sigma)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g /= g.sum()
    i, j = divmod(int(dets.indices[0]), 136)
    f = _cell_means(model, square)
    cells = np.zeros((100, 136))
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            if 0 <= i + di < 100 and 0 <= j + dj < 136:
                cells[i + di, j + dj] = 8 * W_IMG / 1066 * g[di + r] * g[dj + r] * f[i + di, j + dj]
    _assert_close(explanation.maps[0, 0], _bilinear_place(cells))


def test_gaussian_smooth_equals_per_sample_loop() -> None:
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.3, 2.0], dtype=torch.float64)
    out = gaussian_smooth(x, sigma)
    for b in range(3):
        r = math.ceil(3 * sigma[b].item())
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma[b]) ** 2)
        k2 = torch.outer(k, k) / k.sum() ** 2
        ref = torch.nn.functional.conv2d(x[b][:, None], k2[None, None], padding=r)[:, 0]
        torch.testing.assert_close(out[b], ref)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_batched_equals_loop(name: str, image: torch.Tensor, device: torch.device) -> None:
    model = build(name, detections=3).to(device)
    explainer = odam.ODAM(model, batch_size=4)
    batched = explainer.explain(image, targets=odam.TARGETS)
    loop = explain_loop(explainer, image, targets=odam.TARGETS)
    assert batched.maps.abs().max() > 0 and batched.maps.device.type == device.type
    assert _rel_err(batched.maps, loop.maps) < 1e-4


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_roialign_adjoint_equals_backward_through_the_whole_graph(name: str, image: torch.Tensor,
                                                                   device: torch.device) -> None:
    # Default path: one backward per target to the pooled rows, then RoIAlign's adjoint to the FPN level.
    # Reference: gradients w.r.t. the FPN outputs themselves, through torchvision's MultiScaleRoIAlign.
    model = build(name, detections=3).to(device)
    fast = odam.ODAM(model).explain(image, targets=odam.TARGETS)
    full = odam.ODAM(model, layer=model.backbone).explain(image, targets=odam.TARGETS)
    assert _rel_err(fast.maps, full.maps) < 1e-4


def test_layer_choices(image: torch.Tensor) -> None:
    model = build("fasterrcnn_resnet50_fpn", detections=2)
    for layer in ("roi", "backbone.body.layer3", model.backbone.body.layer2, "fpn"):
        e = odam.ODAM(model, layer=layer).explain(image, targets=("score", "bottom"))
        assert e.maps.shape == (2, 2, 96, 120) and torch.isfinite(e.maps).all()
        assert e.maps.amax() > 0
    # RoI maps are pasted into the proposal box (shifted by the level's cell centre, 0, and by half a pixel from
    # pixel index to pixel edge): zero well outside it.
    e = odam.ODAM(model, layer="roi").explain(image)
    trace = odam.wrap_detector(model).trace(image, "roi")
    (h, w), (hr, wr) = trace.geometry.original, trace.geometry.resized
    stride = 1 / model.roi_heads.box_roi_pool.scales[int(e.detections.levels[0])]
    centre = 0.0 + 0.5
    assert stride > 0
    prop = (trace.state["proposals"][e.detections.indices[0]] + centre) * torch.tensor([w / wr, h / hr] * 2)
    x1, y1, x2, y2 = prop.tolist()
    outside = e.maps[0, 0].clone()
    outside[max(0, int(y1) - 1):int(y2) + 2, max(0, int(x1) - 1):int(x2) + 2] = 0
    assert outside.abs().max() == 0


def test_one_stage_backbone_stage_matches_loop(image: torch.Tensor) -> None:
    model = build("retinanet_resnet50_fpn", detections=2)
    explainer = odam.ODAM(model, layer="backbone.body.layer4", batch_size=3)
    assert _rel_err(explainer.explain(image, odam.TARGETS).maps,
                    explain_loop(explainer, image, odam.TARGETS).maps) < 1e-4


def test_explains_exactly_the_passed_detections(image: torch.Tensor) -> None:
    model = build("fcos_resnet50_fpn", detections=4)
    explainer = odam.ODAM(model)
    everything = explainer.explain(image, targets=("score", "left"))
    some = everything.detections[torch.tensor([2, 0])]
    chosen = explainer.explain(image, targets=("score", "left"), detections=some)
    assert torch.equal(chosen.detections.boxes, some.boxes)
    torch.testing.assert_close(chosen.maps, everything.maps[[2, 0]])


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
def test_detections_of_another_image_are_refused(name: str, image: torch.Tensor) -> None:
    """Detections record the image they were made on (size and pixel sum); explaining them on another image, of
    the same size or not, is one line. The same image in another form (a PIL image) is the same image."""
    model = build(name, detections=4)
    adapter = odam.wrap_detector(model)
    same_size = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(7))
    other_size = torch.rand(3, 64, 200, generator=torch.Generator().manual_seed(8))
    for source, what in ((same_size, "120x96, other pixels"), (other_size, "200x64")):
        dets = adapter.detect(source)
        assert dets.source[:2] == tuple(source.shape[-2:])
        for explainer in (odam.ODAM(model), odam.GradCAM(model), odam.DRISE(model, num_masks=4)):
            with pytest.raises(ValueError, match=rf"^the detections come from another image \({what}\) than the "
                                                 r"one explained \(120x96\)") as err:
                explainer.explain(image, detections=dets)
            assert "\n" not in str(err.value)
    own = adapter.detect(image)
    pil = Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
    assert len(odam.ODAM(model).explain(pil, detections=adapter.detect(pil))) == 4
    assert len(odam.ODAM(model).explain(image, detections=own[[2, 0]])) == 2  # indexing keeps the source
    by_hand = odam.Detections(own.boxes, own.scores, own.labels, own.levels, own.indices)
    assert by_hand.source is None and len(odam.ODAM(model).explain(image, detections=by_hand)) == 4


@pytest.mark.parametrize("what", ["boxes", "scores"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_detections_are_refused(what: str, value: float, image: torch.Tensor) -> None:
    model = build("retinanet_resnet50_fpn", detections=3)
    dets = odam.wrap_detector(model).detect(image)
    fields = {"boxes": dets.boxes.clone(), "scores": dets.scores.clone()}
    fields[what][1] = value
    bad = odam.Detections(fields["boxes"], fields["scores"], dets.labels, dets.levels, dets.indices)
    noun = "box" if what == "boxes" else "score"
    for explainer in (odam.ODAM(model), odam.GradCAM(model), odam.DRISE(model, num_masks=4)):
        with pytest.raises(ValueError, match=f"^detection 1 has a non-finite {noun}: "):
            explainer.explain(image, detections=bad)


def test_options_change_maps_as_documented(image: torch.Tensor, device: torch.device) -> None:
    model = build("retinanet_resnet50_fpn", detections=2).to(device)
    raw = odam.ODAM(model, activation="none").explain(image).maps
    neg = odam.ODAM(model, activation="none", gradient="negative").explain(image).maps
    torch.testing.assert_close(neg, -raw)
    # The activation acts on the feature grid, before bilinear placement (a convex combination), so
    # act(interpolated) <= interpolated(act) for these convex activations, with equality where the sign is
    # the same at all four neighbouring cells.
    absolute = odam.ODAM(model, activation="abs").explain(image).maps
    relu = odam.ODAM(model).explain(image).maps
    assert (absolute >= raw.abs() - 1e-6).all() and (relu >= raw.clamp_min(0) - 1e-6).all()
    assert (absolute - raw.abs()).abs().amax() > 0 and (relu - absolute).abs().amax() > 0
    torch.testing.assert_close(relu + odam.ODAM(model, gradient="negative").explain(image).maps, absolute)
    fixed = odam.ODAM(model, smoothing=1.5).explain(image).maps
    same = odam.ODAM(model, smoothing=lambda cells: torch.full_like(cells, 1.5)).explain(image).maps
    torch.testing.assert_close(fixed, same)
    assert not torch.allclose(fixed, odam.ODAM(model, smoothing=None).explain(image).maps)


def test_image_types_give_the_same_maps(tmp_path, image: torch.Tensor) -> None:
    model = build("retinanet_resnet50_fpn", detections=2)
    arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    explainer = odam.ODAM(model)
    ref = explainer.explain(torch.from_numpy(arr).permute(2, 0, 1).float() / 255).maps
    for img in (arr, Image.fromarray(arr), path, str(path)):
        torch.testing.assert_close(explainer.explain(img).maps, ref)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(1, 3, 8, 8), r"expected image of shape \[3, H, W\], got \(1, 3, 8, 8\)"),
    (42, "got int"),
    (np.zeros((8, 8), dtype=np.uint8), r"expected array of shape \(H, W, 3\), got \(8, 8\)"),
])
def test_bad_images_raise_value_error(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        odam.ODAM(build("retinanet_resnet50_fpn", detections=1)).explain(bad)


def test_bad_arguments() -> None:
    model = build("retinanet_resnet50_fpn", detections=1)
    img = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="unknown target 'width'"):
        odam.ODAM(model).explain(img, targets=("score", "width"))
    with pytest.raises(ValueError, match="gradient must be"):
        odam.ODAM(model, gradient="both")
    with pytest.raises(ValueError, match="activation must be"):
        odam.ODAM(model, activation="sigmoid")
    with pytest.raises(ValueError, match="smoothing must be"):
        odam.ODAM(model, smoothing="box")
    with pytest.raises(ValueError, match="batch_size"):
        odam.ODAM(model, batch_size=0)
    with pytest.raises(ValueError, match="come from detect"):
        odam.ODAM(model).explain(img, detections=odam.Detections(
            torch.zeros(1, 4), torch.ones(1), torch.ones(1, dtype=torch.int64)))


def test_no_detections_gives_empty_explanation() -> None:
    model = build("retinanet_resnet50_fpn", detections=1)
    model.score_thresh = 1.1
    e = odam.ODAM(model).explain(torch.rand(3, 40, 50), targets=("score", "left"))
    assert e.maps.shape == (0, 2, 40, 50) and e.combined().shape == (0, 40, 50)


def test_combined_is_max_of_normalised_maps() -> None:
    d = odam.Detections(torch.zeros(1, 4), torch.ones(1), torch.ones(1, dtype=torch.int64))
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]], [[-1.0, 0.0], [3.0, 1.0]]]])
    e = odam.Explanation(d, ("score", "left", "top"), maps)
    expected = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]])  # the constant map counts as zeros
    torch.testing.assert_close(e.combined(), expected)
    with pytest.raises(ValueError, match=r"expected maps of shape \[1, 2, H, W\]"):
        odam.Explanation(d, ("score", "left"), maps)




def test_roi_windows_smaller_than_the_map_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # A larger image, so RoIs cover a small part of their level and the windows are strictly smaller.
    import odam.detectors.groups as groups

    model = build("fasterrcnn_resnet50_fpn", detections=6, min_size=320, max_size=400)
    image = torch.rand(3, 240, 300, generator=torch.Generator().manual_seed(5))
    sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    weighted = groups._separable_weighted  # RoILevelGroup's maps on each RoI's window of its level

    def spy(grads, my, mx, win, level):  # noqa: ANN001, ANN202
        sizes.append((win.size, tuple(level.shape[-2:])))
        return weighted(grads, my, mx, win, level)

    monkeypatch.setattr(groups, "_separable_weighted", spy)
    explainer = odam.ODAM(model, batch_size=5)
    fast = explainer.explain(image, targets=odam.TARGETS)
    windowed = [s for s in sizes if s[0][0] < s[1][0] or s[0][1] < s[1][1]]
    assert windowed, f"no window was smaller than its map: {sizes}"
    sizes.clear()
    slow = explain_loop(explainer, image, targets=odam.TARGETS)
    assert _rel_err(fast.maps, slow.maps) < 1e-4


def test_local_head_crops_equal_the_whole_map(device: torch.device) -> None:
    # RetinaNet's head has no normalisation across positions, so each detection is explained from a crop of
    # its level (11x11 cells, clipped at the border); the reference differentiates the whole FPN output.
    from odam.detectors.groups import CropGroup

    model = build("retinanet_resnet50_fpn", detections=12, min_size=160, max_size=200).to(device)
    image = torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(7))
    trace = odam.wrap_detector(model).trace(image)
    _, groups, _ = trace.graph(trace.detections)
    assert all(isinstance(g, CropGroup) for g in groups)
    sizes = {g.windows.size for g in groups}
    assert (11, 11) in sizes or len(sizes) > 1
    assert any(s != (11, 11) for s in sizes), f"no crop was clipped at the border: {sizes}"
    crops = odam.ODAM(model).explain(image, targets=odam.TARGETS)
    whole = odam.ODAM(model, layer=model.backbone).explain(image, targets=odam.TARGETS)
    torch.testing.assert_close(crops.detections.scores, whole.detections.scores)
    assert _rel_err(crops.maps, whole.maps) < 1e-4


def test_groupnorm_heads_are_not_cropped(image: torch.Tensor) -> None:
    for name in ("fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2"):
        assert odam.wrap_detector(build(name))._receptive_radius() is None
    assert odam.wrap_detector(build("retinanet_resnet50_fpn"))._receptive_radius() == 5


def test_explain_inside_no_grad_and_in_float64(image: torch.Tensor) -> None:
    model = build("retinanet_resnet50_fpn", detections=2)
    ref = odam.ODAM(model).explain(image, targets=("score", "top")).maps
    with torch.no_grad():
        torch.testing.assert_close(odam.ODAM(model).explain(image, targets=("score", "top")).maps, ref)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        odam.ODAM(model).explain(image)
    model64 = build("retinanet_resnet50_fpn", detections=2).double()
    e64 = odam.ODAM(model64).explain(image, targets=("score", "top"))
    assert e64.maps.dtype == torch.float32
    torch.testing.assert_close(e64.maps, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_mobilenet_fpn_with_fewer_levels(name: str, image: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = getattr(detection, name)(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0, box_detections_per_img=3,
        min_size=160, max_size=200).eval()
    with torch.no_grad():
        expected = model([image])[0]
    fast = odam.ODAM(model).explain(image, targets=odam.TARGETS)
    assert torch.equal(fast.detections.boxes, expected["boxes"])
    full = odam.ODAM(model, layer=model.backbone).explain(image, targets=odam.TARGETS)
    assert _rel_err(fast.maps, full.maps) < 1e-4


def test_layer_running_twice_is_refused(image: torch.Tensor) -> None:
    from odam.detectors.base import LayerError

    model = build("retinanet_resnet50_fpn", detections=1)
    with pytest.raises(LayerError, match="runs more than once"):
        odam.ODAM(model, layer="backbone.body.layer1.0.relu").explain(image)


def test_roi_maps_are_centred_like_level_maps(image: torch.Tensor) -> None:
    # A constant map on the 7x7 grid pasted through RoIGroup covers the proposal shifted by the level's cell
    # centre: RoIAlign reads cell x / s for proposal coordinate x, and cell u of a stride-s level is placed on
    # pixel index u * s (centre 0), so the box in pixel indices is the proposal itself.
    model = build("fasterrcnn_resnet50_fpn", detections=1)
    trace = odam.wrap_detector(model).trace(image, "roi")
    _, groups, _ = trace.graph(trace.detections)
    group = groups[0]
    placed = group.to_image(torch.ones(1, 7, 7), torch.zeros(1, dtype=torch.int64))[0]
    (h, w), (hr, wr) = trace.geometry.original, trace.geometry.resized
    centre = 0.0
    # in original pixel indices: model-input index u lands on original (u + 0.5) * w / wr - 0.5
    x1, y1, x2, y2 = (trace.state["proposals"][trace.detections.indices[0]] + centre + 0.5).tolist()
    ys, xs = torch.where(placed > 0)
    # bilinear sampling with zero padding reaches half a bin past the box
    bx, by = (x2 - x1) * w / wr / 14, (y2 - y1) * h / hr / 14
    assert xs.min() >= x1 * w / wr - 1 - bx and xs.max() <= x2 * w / wr + 1 + bx
    assert ys.min() >= y1 * h / hr - 1 - by and ys.max() <= y2 * h / hr + 1 + by
