"""The Ultralytics YOLO adapter: Ultralytics' own detections, exact gradients, a borrowed model, no network.

The models are the conformance cases' (``tests/cases/yolo.py``): random-init YOLOv8n (through ``ultralytics.YOLO``,
80 classes) and YOLO11n (a bare ``DetectionModel``, 3 classes), built once per process.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tests._matching import match_by_box
from tests.cases.yolo import CASES, CONF, IMGSZ, IOU, MAX_DET, image, spread, wrap, wrapper
from torch import Tensor, nn

import odam
from odam import TARGETS
from odam.detectors.base import MapGroup, Trace, Windows
from odam.detectors.groups import CropGroup
from odam.detectors.yolo import (
    UnsupportedModelError,
    YoloAdapter,
    _kept_anchor_cache,
    from_yaml,
    import_ultralytics,
    letterbox,
)
from odam.explainers.odam import explain_loop
from odam.nms import Suppressed
from odam.testing import Case, model_of

V8, V11 = CASES
import_ultralytics()  # before any test imports from it: offline, and not the user's settings file


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _rgb8(seed: int, h: int, w: int, blocks: bool = False) -> np.ndarray:
    """A random ``h x w`` RGB uint8 image; with ``blocks``, made of constant 2x2 blocks."""
    rng = np.random.default_rng(seed)
    if blocks:
        return rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _as_tensor(img: np.ndarray) -> Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


def _ultralytics_nms(model: nn.Module, x: Tensor, original: tuple[int, int], conf: float, iou: float,
                     max_det: int, classes: list[int] | None = None, agnostic: bool = False) -> Tensor:
    """``[N, 6]`` (x1, y1, x2, y2, score, label): Ultralytics' NMS and ``scale_boxes`` on the model's output."""
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    with torch.no_grad(), _kept_anchor_cache(model.model[-1]):
        out = model(x)
    det = non_max_suppression(out, conf, iou, classes=classes, agnostic=agnostic, max_det=max_det)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], original)
    return det


def _assert_same(dets: odam.Detections, ref: Tensor) -> None:
    assert len(dets) == len(ref)
    assert torch.equal(dets.boxes, ref[:, :4]), (dets.boxes - ref[:, :4]).abs().max()
    assert torch.equal(dets.scores, ref[:, 4])
    assert torch.equal(dets.labels, ref[:, 5].long())


# -- detect() is Ultralytics' inference ------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["plain", "crowded", "agnostic", "classes"])
def test_detect_equals_ultralytics_nms_on_the_same_input(case: Case, setting: str) -> None:
    model = model_of(case)
    img = torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(3))  # resized by 8/7: interpolated
    kw = {"score_threshold": CONF, "iou_threshold": IOU, "max_detections": MAX_DET, "imgsz": IMGSZ}
    if setting in ("crowded", "agnostic"):  # many overlapping boxes of different classes
        kw |= {"score_threshold": 0.2, "iou_threshold": 0.3, "max_detections": 300}
    if setting == "agnostic":
        kw |= {"agnostic": True}
        assert len(YoloAdapter(model, **kw).detect(img)) < len(YoloAdapter(model, **kw | {"agnostic": False}).detect(
            img)), "class-agnostic NMS should remove more here"
    elif setting == "classes":
        plain = YoloAdapter(model, **kw | {"score_threshold": 0.2}).detect(img)
        kw |= {"classes": sorted(set(plain.labels.tolist()))[:2], "score_threshold": 0.2}
    dets = YoloAdapter(model, **kw).detect(img)
    x, _ = letterbox(img[None], (IMGSZ, IMGSZ))
    ref = _ultralytics_nms(model, x, img.shape[1:], kw["score_threshold"], kw["iou_threshold"],
                           kw["max_detections"], kw.get("classes"), kw.get("agnostic", False))
    assert len(dets) >= 2
    _assert_same(dets, ref)
    assert dets.has_provenance


def test_defaults_are_those_of_ultralytics_predict() -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    model = model_of(V11)
    adapter = YoloAdapter(model)
    assert adapter.score_threshold == 0.25  # predict's conf (set in ultralytics.engine.model.Model.predict)
    d = DEFAULT_CFG_DICT
    assert (adapter.iou_threshold, adapter.max_detections, adapter.imgsz, adapter.classes, adapter.agnostic) == (
        d["iou"], d["max_det"], (d["imgsz"], d["imgsz"]), d["classes"], d["agnostic_nms"])
    img = torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(4))
    x, geometry = letterbox(img[None], (640, 640))
    assert x.shape[-2:] == (480, 640) and geometry.resized == (480, 640)
    _assert_same(adapter.detect(img), _ultralytics_nms(model, x, (300, 400), 0.25, d["iou"], d["max_det"]))


@pytest.mark.parametrize(("size", "imgsz"), [((240, 320), (160, 160)), ((240, 320), (128, 160)),
                                             ((72, 320), (160, 160)), ((320, 200), (160, 160)),
                                             ((99, 160), (160, 160)), ((160, 64), (160, 160))])
def test_letterbox_equals_ultralytics_where_the_resize_is_exact(size: tuple[int, int],
                                                                  imgsz: tuple[int, int]) -> None:
    # Halving constant 2x2 blocks, or no resize at all: cv2's 8-bit result is exact, so the pixels are equal.
    from ultralytics.data.augment import LetterBox

    img = _rgb8(sum(size), *size, blocks=True)
    ref = LetterBox(imgsz, auto=True, stride=32)(image=img)
    x, geometry = letterbox(_as_tensor(img)[None], imgsz)
    assert torch.equal(x[0], _as_tensor(ref))
    assert geometry.padded == ref.shape[:2]


def test_letterbox_geometry_equals_ultralytics_and_pixels_are_within_rounding() -> None:
    # Any size: the same resized size, offsets (the odd pixel of padding goes to the bottom/right) and padding;
    # the resized pixels differ by cv2's 8-bit rounding only (measured at most 0.78/255).
    from ultralytics.data.augment import LetterBox

    for h, w in [(96, 120), (37, 211), (211, 37), (300, 400), (50, 50), (161, 159), (127, 333), (1000, 90)]:
        img = _rgb8(h * w, h, w)
        transform = LetterBox(IMGSZ, auto=True, stride=32)
        params = transform.get_params({"img": img})
        ref = _as_tensor(transform(image=img))
        x, g = letterbox(_as_tensor(img)[None], (IMGSZ, IMGSZ))
        assert (g.resized, g.offset, g.padded) == (params["new_unpad"][::-1], (params["top"], params["left"]),
                                                    tuple(ref.shape[-2:])), (h, w)
        top, left = g.offset
        inside = torch.zeros_like(ref, dtype=torch.bool)
        inside[:, top:top + g.resized[0], left:left + g.resized[1]] = True
        assert torch.equal(x[0][~inside], ref[~inside])
        assert float((x[0] - ref).abs().max()) <= 1 / 255


def test_detect_equals_yolo_predict_on_the_yolo_object() -> None:
    # The whole of Ultralytics' predict (cv2 letterbox of a BGR array, a fused copy of the model, NMS) against
    # detect on the same 8-bit image, whose resize is exact in both.
    model = model_of(V8)
    yolo = wrapper(model)
    assert isinstance(odam.wrap_detector(yolo), YoloAdapter)
    adapter = YoloAdapter(yolo, score_threshold=CONF, iou_threshold=IOU, max_detections=MAX_DET, imgsz=IMGSZ)
    assert adapter.model is model
    assert adapter.categories == tuple(yolo.names[i] for i in range(len(yolo.names)))
    img = _rgb8(11, 240, 320, blocks=True)
    dets = adapter.detect(img)
    threads = torch.get_num_threads()
    try:
        result = yolo.predict(np.ascontiguousarray(img[..., ::-1]), imgsz=IMGSZ, conf=CONF, iou=IOU,
                              max_det=MAX_DET, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)  # predict sets the process's torch threads (select_device)
    assert len(dets) == len(result.boxes) >= 2
    # The fused model rounds apart (~1e-6 in the scores), so near-tied detections could swap places: paired by box.
    match_by_box(dets.boxes, result.boxes.xyxy, atol=1e-3, scores_a=dets.scores, scores_b=result.boxes.conf,
                 score_atol=1e-5, labels_a=dets.labels, labels_b=result.boxes.cls.long())


def test_yolo26_with_nms_is_explained_and_its_end_to_end_mode_refused() -> None:
    # YOLO26 (reg_max 1, no DFL): Ultralytics' predict runs its one-to-many branch with NMS, as odam does.
    torch.manual_seed(0)
    model = spread(from_yaml("yolo26n.yaml", nc=3))
    adapter = wrap(model)
    img = image()
    trace = adapter.trace(img)
    x, _ = letterbox(img[None], (IMGSZ, IMGSZ))
    _assert_same(trace.detections, _ultralytics_nms(model, x, img.shape[1:], CONF, IOU, MAX_DET))
    _assert_attributes(trace)
    model.end2end = True  # the one-to-one branch, without NMS
    with pytest.raises(UnsupportedModelError, match="end-to-end"):
        adapter.detect(img)
    with pytest.raises(UnsupportedModelError, match="end-to-end"):
        YoloAdapter(model)


# -- the explained attributes and maps -------------------------------------------------------------------------


def _assert_attributes(trace: Trace) -> None:
    dets = trace.detections
    y, groups, group_of = trace.graph(dets)
    torch.testing.assert_close(y[:, 0].detach(), dets.scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y[:, 1:].detach(), dets.boxes * torch.tensor([-1.0, -1.0, 1.0, 1.0]),
                               atol=1e-3, rtol=0)
    assert len(groups) and int(group_of.max()) < len(groups)


@pytest.mark.parametrize("path", ["crops", "whole-map", "fpn", "layer"])
def test_attributes_from_provenance_reproduce_detections(case: Case, path: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = wrap(model_of(case))
    if path == "whole-map":
        monkeypatch.setattr(adapter, "_receptive_radius", lambda: None)
    trace = adapter.trace(image(), {"fpn": "fpn", "layer": "model.4"}.get(path))
    assert len(trace.detections) >= 2
    _assert_attributes(trace)
    dets = trace.detections
    _, groups, group_of = trace.graph(dets)
    kind = CropGroup if path in ("crops", "fpn") else MapGroup
    for gi, group in enumerate(groups):
        assert type(group) is kind
        levels = dets.levels[group_of == gi]
        if len(levels) == 0:  # the whole-map path keeps one group per level, used or not
            continue
        stride = 8.0 if path == "layer" else 8.0 * 2 ** int(levels[0])  # model.4 is the backbone's P3 stage
        assert group.stride == (stride, stride)
        assert path == "layer" or bool((levels == levels[0]).all())


@pytest.mark.parametrize("size", [(100, 160), (150, 80), (240, 320)])
def test_maps_are_placed_through_the_letterbox(size: tuple[int, int]) -> None:
    # A map whose cells hold their own centre's model-input coordinate, placed on the image, gives each pixel
    # its centre's model-input coordinate (bilinear interpolation of a linear ramp is exact away from borders).
    # Cell j of a stride-8 neck map is centred on padded-input pixel index j * 8 (neck_centres: 0); original
    # pixel i is centred on resized pixel index (i + 0.5) * resized / original - 0.5, plus the letterbox offset.
    _, geometry = letterbox(torch.zeros(1, 3, *size), (IMGSZ, IMGSZ))
    assert geometry.offset != (0, 0)
    h, w = geometry.padded[0] // 8, geometry.padded[1] // 8
    group = MapGroup(torch.zeros(1, 4, h, w), torch.zeros(1, dtype=torch.int64), geometry)
    assert group.stride == (8.0, 8.0)
    rows = torch.zeros(1, dtype=torch.int64)
    ys = (torch.arange(h) * 8.0)[:, None].expand(h, w)
    xs = (torch.arange(w) * 8.0)[None, :].expand(h, w)
    H, W = size
    top, left = geometry.offset
    gy, gx = geometry.resized[0] / H, geometry.resized[1] / W
    expect_y = (torch.arange(H) + 0.5) * gy - 0.5 + top
    expect_x = (torch.arange(W) + 0.5) * gx - 0.5 + left
    inside_y = (expect_y > 0) & (expect_y < (h - 1) * 8)
    inside_x = (expect_x > 0) & (expect_x < (w - 1) * 8)
    placed_y, placed_x = group.to_image(torch.stack([ys, xs]), rows.expand(2))
    torch.testing.assert_close(placed_y[inside_y, 0], expect_y[inside_y], atol=1e-3, rtol=0)
    torch.testing.assert_close(placed_x[0, inside_x], expect_x[inside_x], atol=1e-3, rtol=0)
    crops = CropGroup(torch.zeros(1, 4, 5, 5), rows, geometry, torch.zeros(1, 4, h, w),
                      Windows(torch.zeros(1, 2, dtype=torch.int64), (5, 5), (h, w)))
    torch.testing.assert_close(crops.to_image(ys[None], rows), placed_y[None])


def test_crops_give_the_maps_of_the_whole_map(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = wrap(model_of(case))
    assert adapter._receptive_radius() == 2  # two 3x3 convolutions in each branch
    img = image()
    crops = odam.ODAM(adapter).explain(img, targets=TARGETS)
    monkeypatch.setattr(adapter, "_receptive_radius", lambda: None)
    whole = odam.ODAM(adapter).explain(img, targets=TARGETS)
    assert torch.equal(crops.detections.boxes, whole.detections.boxes)
    scale = float(whole.maps.abs().amax())
    assert scale > 0
    torch.testing.assert_close(crops.maps, whole.maps, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("layer", [None, "model.4"])
def test_batched_maps_equal_the_slow_reference_and_a_per_detection_loop(layer: str | None) -> None:
    adapter = wrap(model_of(V11))
    img = image()
    explainer = odam.ODAM(adapter, layer=layer)
    batched = explainer.explain(img, targets=TARGETS)
    reference = explain_loop(explainer, img, targets=TARGETS)
    scale = float(batched.maps.abs().amax())
    assert scale > 0
    torch.testing.assert_close(batched.maps, reference.maps, atol=1e-5 * scale, rtol=1e-4)
    for i in range(len(batched)):
        single = explainer.explain(img, targets=TARGETS, detections=batched.detections[i:i + 1])
        torch.testing.assert_close(single.maps[0], batched.maps[i], atol=1e-5 * scale, rtol=1e-4)
    for j in range(1, len(TARGETS)):
        assert not torch.allclose(batched.maps[:, 0], batched.maps[:, j]), f"the {TARGETS[j]} map is the score map"


def test_gradients_equal_autograd_through_the_ultralytics_forward(case: Case) -> None:
    # Reference: the model's own forward with the Detect head's inputs replaced by leaves; the score is its
    # class probability, the edges come from its xywh boxes through scale_boxes' arithmetic.
    model = model_of(case)
    adapter = wrap(model)
    img = image()
    trace = adapter.trace(img)
    dets, g = trace.detections, trace.geometry
    y, groups, group_of = trace.graph(dets)
    x, _ = letterbox(img[None], (IMGSZ, IMGSZ))
    head = model.model[-1]
    leaves: list[Tensor] = []

    def feed(_m: nn.Module, args: tuple) -> tuple:
        leaves.extend(f.detach().requires_grad_(True) for f in args[0])
        return (leaves,)

    handle = head.register_forward_pre_hook(feed)
    try:
        with torch.enable_grad(), _kept_anchor_cache(head):
            out = model(x)[0][0]  # [4 + nc, anchors]
    finally:
        handle.remove()
    offsets = np.cumsum([0] + [f.shape[-2] * f.shape[-1] for f in leaves])
    gy, gx = g.resized[0] / g.original[0], g.resized[1] / g.original[1]
    top, left = g.offset
    edges = 0
    for k in range(len(dets)):
        level, a = int(dets.levels[k]), int(offsets[dets.levels[k]] + dets.indices[k])
        cx, cy, w, h = out[:4, a]
        reference = {0: out[4 + dets.labels[k], a], 2: -((cy - h / 2 - top) / gy).clamp(0, g.original[0]),
                     3: ((cx + w / 2 - left) / gx).clamp(0, g.original[1])}  # score, top, right
        members = torch.where(group_of == group_of[k])[0]
        group = groups[int(group_of[k])]
        row = group.rows[int((members == k).nonzero())].view(1)
        for t, value in reference.items():
            assert torch.allclose(y[k, t], value, atol=1e-4, rtol=1e-6)
            expected = torch.autograd.grad(value, leaves[level], retain_graph=True)[0][0]
            grad = torch.autograd.grad(y[k, t], group.input, retain_graph=True)[0][row]
            actual = group.pullback(grad, row)[0]
            scale = float(expected.abs().amax())
            assert scale > 0 or t > 0, "the score does not depend on the features"  # a clipped edge: zero
            edges += int(t > 0 and scale > 0)
            torch.testing.assert_close(actual, expected, atol=1e-5 * scale, rtol=1e-4)
    assert edges > 0, "every edge was clipped"


# -- candidates, thresholds, NMS replacement -------------------------------------------------------------------


def test_candidates_agree_with_detect(case: Case) -> None:
    model = model_of(case)
    adapter = wrap(model)
    img, other = image(), torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(9))
    dets = adapter.detect(img)
    c = adapter.candidates(torch.stack([img, other]), max_candidates=40)
    nc = model.model[-1].nc
    assert c.boxes.shape == (2, 40, nc, 4) and c.scores.shape == (2, 40, nc) and c.probs.shape == (2, 40, nc)
    assert c.objectness is None and bool(c.valid.all()) and torch.equal(c.probs, c.scores)
    assert adapter.score_threshold == CONF
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
        same = (c.boxes[0, :, label] - box).abs().amax(-1) < 1e-3
        assert bool(same.any()), "a detection is not among the candidates"
        torch.testing.assert_close(c.scores[0, same, label], score.expand(int(same.sum())), atol=1e-5, rtol=0)
        assert float(c.tracked_scores(box, int(label))[0]) >= float(score) - 1e-5
    # The second image alone: the same candidates (every anchor; near ties may order apart in a batch of 2).
    alone, both = adapter.candidates(other[None], max_candidates=10**6), adapter.candidates(
        torch.stack([img, other]), max_candidates=10**6)
    nearest = (alone.boxes[0, :, None, 0] - both.boxes[1, None, :, 0]).abs().amax(-1).min(1)
    assert float(nearest.values.max()) < 1e-3
    torch.testing.assert_close(alone.scores[0], both.scores[1, nearest.indices], atol=1e-5, rtol=0)
    label = int(dets.labels[0])
    only = YoloAdapter(model, classes=[label], imgsz=IMGSZ).candidates(img[None], max_candidates=40)
    others = torch.arange(nc) != label
    assert float(only.scores[..., label].amax()) > 0 and not bool(only.scores[..., others].any())


def test_replacing_the_nms() -> None:
    model = model_of(V11)
    img = image()
    adapter = wrap(model)
    plain = adapter.detect(img)
    same = Suppressed(YoloAdapter(model, score_threshold=CONF, max_detections=MAX_DET, imgsz=IMGSZ), "nms",
                      iou_threshold=IOU)
    trace = same.trace(img, candidates=True)
    cands = trace.detections
    assert same.max_detections == MAX_DET
    assert len(cands) > len(plain) and bool((cands.scores > CONF).all())
    assert torch.equal(cands.scores, cands.scores.sort(descending=True).values)
    # odam's per-class NMS keeps what Ultralytics' offset NMS keeps.
    kept = same.detect(img)
    assert torch.equal(kept.boxes, plain.boxes) and torch.equal(kept.labels, plain.labels)
    suppressed = odam.wrap_detector(adapter, nms="odam").detect(img)
    assert 1 <= len(suppressed) <= MAX_DET
    for box in suppressed.boxes:
        assert bool(((cands.boxes - box).abs().amax(1) == 0).any())


# -- the model is borrowed -------------------------------------------------------------------------------------


def _state(model: nn.Module) -> tuple:
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    hooks = tuple((len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules())
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # never fused
    return modes, flags, hooks, norms


def _boom(*_: object) -> None:
    raise RuntimeError("boom")


def test_model_is_borrowed_and_keeps_its_anchor_cache(case: Case) -> None:
    model = model_of(case)
    head = model.model[-1]
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96))  # the user's last input size, in the head's cache
    cache = (head.anchors, head.strides, head.shape)
    before = _state(model)
    adapter = wrap(model)
    img = image()

    def unchanged() -> None:
        assert _state(model) == before
        assert (head.anchors, head.strides, head.shape) == cache and head.anchors is cache[0]

    adapter.detect(img)
    adapter.candidates(img[None], max_candidates=10)
    odam.ODAM(adapter).explain(img)
    odam.ODAM(adapter, layer="model.4").explain(img, targets=("score", "top"))
    unchanged()
    with pytest.raises(ValueError, match="part of the Detect head"):  # raised with odam's pre-hook on the head
        odam.ODAM(adapter, layer=head.cv2[0]).explain(img)
    unchanged()
    handle = model.model[2].register_forward_hook(_boom)
    try:
        for call in (lambda: odam.ODAM(adapter, layer="model.4").explain(img),
                     lambda: adapter.candidates(img[None])):
            with pytest.raises(RuntimeError, match="boom"):
                call()
    finally:
        handle.remove()
    unchanged()
    dets = adapter.detect(img)[:1]
    bad = odam.Detections(dets.boxes, dets.scores, dets.labels + 1000, dets.levels, dets.indices)
    with pytest.raises(ValueError, match="label out of range"):
        odam.ODAM(adapter).explain(img, detections=bad)
    unchanged()


def test_a_fused_model_gives_the_same_detections_and_maps() -> None:
    # What model.fuse() leaves (Conv and BatchNorm folded): the head is still local.
    model = model_of(V11)
    fused = copy.deepcopy(model).fuse(verbose=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    a, b = wrap(model), wrap(fused)
    assert b._receptive_radius() == 2
    img = image()
    ea = odam.ODAM(a).explain(img, targets=("score", "right"))
    eb = odam.ODAM(b).explain(img, targets=("score", "right"))
    # Folding rounds the scores ~1e-6 apart, so near-tied detections could swap places: paired by box.
    perm = match_by_box(ea.detections.boxes, eb.detections.boxes, atol=1e-3, scores_a=ea.detections.scores,
                        scores_b=eb.detections.scores, score_atol=1e-5, labels_a=ea.detections.labels,
                        labels_b=eb.detections.labels)
    torch.testing.assert_close(eb.maps[perm], ea.maps, atol=1e-3 * float(ea.maps.abs().amax()), rtol=1e-3)


# -- errors ------------------------------------------------------------------------------------------------------


def _one_line(kind: type[Exception], match: str, call: object) -> None:
    with pytest.raises(kind, match=match) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_bad_inputs_give_one_line_value_errors() -> None:
    model = model_of(V8)
    adapter = wrap(model)
    img = image()
    _one_line(ValueError, r"expected image of shape \[3, H, W\], got \(4, 32, 32\)",
              lambda: adapter.detect(torch.rand(4, 32, 32)))
    _one_line(ValueError, "expected image of shape", lambda: adapter.detect(torch.rand(32, 32)))
    _one_line(ValueError, "expected images of shape", lambda: adapter.candidates(torch.rand(3, 32, 32)))
    _one_line(ValueError, "no module named 'nope'", lambda: odam.ODAM(adapter, layer="nope").explain(img))
    _one_line(ValueError, "part of the Detect head", lambda: odam.ODAM(adapter, layer="model.22.cv2.0").explain(img))
    _one_line(ValueError, "two-stage", lambda: adapter.trace(img, "roi"))
    _one_line(ValueError, "not a module of this model", lambda: adapter.trace(img, nn.Conv2d(3, 3, 1)))
    _one_line(ValueError, "does not feed every level", lambda: adapter.trace(img, "model.21"))
    for kw, match in (({"imgsz": 100}, "multiples of 32"), ({"imgsz": (160, 150)}, "multiples of 32"),
                      ({"score_threshold": 1.5}, "score_threshold"), ({"iou_threshold": -0.1}, "iou_threshold"),
                      ({"max_detections": 0}, "max_detections")):
        _one_line(ValueError, match, lambda kw=kw: YoloAdapter(model, **kw))
    empty = YoloAdapter(model, score_threshold=1.0, imgsz=IMGSZ)
    assert len(empty.detect(img)) == 0
    assert odam.ODAM(empty).explain(img).maps.shape == (0, 1, *img.shape[-2:])


def test_unsupported_models_are_refused() -> None:
    from ultralytics.nn.tasks import SegmentationModel

    seg = SegmentationModel("yolov8n-seg.yaml", nc=3, verbose=False)
    assert YoloAdapter.accepts(seg)  # so that the refusal can say why
    for call in (lambda: odam.wrap_detector(seg), lambda: YoloAdapter(seg)):
        _one_line(UnsupportedModelError, "head Segment", call)
    assert issubclass(UnsupportedModelError, TypeError) and issubclass(UnsupportedModelError, ValueError)
    assert not YoloAdapter.accepts(nn.Conv2d(3, 3, 1))
    _one_line(UnsupportedModelError, "expected an Ultralytics", lambda: YoloAdapter(nn.Conv2d(3, 3, 1)))


def test_categories_default_to_the_model_names() -> None:
    model = model_of(V11)
    assert YoloAdapter(model).categories == ("0", "1", "2")  # a YAML names classes by number
    assert YoloAdapter(model, ("cat", "dog", "cow")).categories == ("cat", "dog", "cow")


# -- no network --------------------------------------------------------------------------------------------------

_OFFLINE = textwrap.dedent("""
    import json, os, sys

    attempts = []

    def audit(event, args):
        if event.startswith("socket."):
            attempts.append(event)
            raise OSError(f"odam test: blocked {event}")

    sys.addaudithook(audit)
    import torch
    import odam
    from odam.detectors.yolo import YoloAdapter, from_yaml

    imported_early = "ultralytics" in sys.modules or YoloAdapter.accepts(torch.nn.Conv2d(1, 1, 1))
    imported_early = imported_early or "ultralytics" in sys.modules
    torch.manual_seed(0)
    model = from_yaml("yolov8n.yaml", nc=2)
    adapter = odam.wrap_detector(model)
    adapter = YoloAdapter(model, score_threshold=0.0, max_detections=2, imgsz=64)
    image = torch.rand(3, 48, 64)
    n = len(odam.ODAM(adapter).explain(image, targets=("score", "left")))
    adapter.candidates(image[None], 5)
    env = [k for k in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR") if k in os.environ]
    print(json.dumps({"attempts": attempts, "imported_early": imported_early, "env": env, "n": n}))
""")


def test_no_network_and_no_user_settings_file(tmp_path: Path) -> None:
    # A fresh interpreter, as a user's: every socket operation is recorded and blocked (audit hook), from the
    # import of odam to explaining a model built from a YAML. Nothing may be written in the user's home.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "PYTEST_", "XDG_"))}
    env |= {"HOME": str(home), "MPLCONFIGDIR": str(tmp_path / "mpl")}  # matplotlib's cache is not under test
    done = subprocess.run([sys.executable, "-c", _OFFLINE], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "imported_early": False, "env": [], "n": 2}
    assert [p.relative_to(home) for p in home.rglob("*")] == []
