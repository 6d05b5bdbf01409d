"""DETR adapter: native inference, the explained maps against the plain Hugging Face forward, layers, candidates,
geometry, borrowing and errors. The family-independent checks are in tests/test_conformance.py."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tests.cases import detr as case
from torch import Tensor, nn
from transformers import DetrImageProcessor, DetrImageProcessorPil
from transformers.image_transforms import get_size_with_aspect_ratio

import odam
from odam import TARGETS
from odam.detectors.base import LayerError
from odam.detectors.detr import DetrAdapter
from odam.explainers.odam import explain_loop

_MODELS: dict[str, nn.Module] = {}


@pytest.fixture
def model() -> nn.Module:
    """The case's tiny DETR, built once (tests must leave it as they found it)."""
    if "tiny" not in _MODELS:
        _MODELS["tiny"] = case.tiny_detr()
    return _MODELS["tiny"]


@pytest.fixture
def image() -> Tensor:
    return case.image()


def _state(model: nn.Module) -> tuple:
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    hooks = tuple((len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules())
    patched = tuple(name for name, m in model.named_modules() if "forward" in m.__dict__)
    return modes, flags, hooks, patched


@pytest.mark.parametrize("size", [(96, 120), (300, 200), (40, 400)])
def test_detect_equals_processor_model_and_post_processing(model: nn.Module, size: tuple[int, int]) -> None:
    # Upsampling, downsampling, and a wide image whose longest edge caps the size.
    img = torch.rand(3, *size, generator=torch.Generator().manual_seed(2))
    threshold = 0.3
    dets = case.wrap(model, threshold=threshold).detect(img)
    boxes, scores, labels = case.native(model, img, threshold)
    assert len(dets) >= 1 and len(dets) == len(boxes)
    torch.testing.assert_close(dets.boxes, boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(dets.scores, scores, atol=1e-4, rtol=0)
    assert torch.equal(dets.labels, labels)
    assert torch.equal(dets.levels, torch.zeros_like(dets.levels))
    assert torch.equal(dets.indices, torch.where(model(**_inputs(img))["logits"].softmax(-1)[0, :, :-1].amax(-1)
                                                 > threshold)[0])


def _inputs(img: Tensor, **size: int) -> dict:
    size = size or {"shortest_edge": case.SHORTEST_EDGE, "longest_edge": case.LONGEST_EDGE}
    return DetrImageProcessor(size=size, do_rescale=False)(images=img, return_tensors="pt")


def test_default_sizes_and_threshold_follow_the_processor(model: nn.Module) -> None:
    # wrap_detector's adapter: 800/1333 and threshold 0.5, as DetrImageProcessor and post-processing default.
    img = torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(4))
    adapter = odam.wrap_detector(model)
    assert isinstance(adapter, DetrAdapter) and adapter.score_threshold == 0.5
    trace = adapter.trace(img)
    assert trace.geometry.resized == trace.geometry.padded == (800, 1200)
    boxes, scores, labels = case.native(model, img, 0.5, shortest_edge=800, longest_edge=1333)
    assert len(trace.detections) == len(boxes)
    torch.testing.assert_close(trace.detections.scores, scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(trace.detections.boxes, boxes, atol=1e-4, rtol=0)


def test_pixels_equal_the_processor_on_float_and_uint8_images(model: nn.Module) -> None:
    adapter = case.wrap(model)
    edges = {"shortest_edge": case.SHORTEST_EDGE, "longest_edge": case.LONGEST_EDGE}
    for size in [(96, 120), (300, 200), (40, 400), (128, 160)]:
        img = torch.rand(3, *size, generator=torch.Generator().manual_seed(3))
        ours, mask, _ = adapter._prepare(img[None])
        theirs = _inputs(img)
        assert torch.equal(ours, theirs["pixel_values"]) and torch.equal(mask, theirs["pixel_mask"])
        # A PIL image: the processor resizes its uint8 pixels, and so does odam.
        pil = Image.fromarray((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        ours = adapter._prepare(odam.load_image(pil)[None])[0]
        assert torch.equal(ours, DetrImageProcessor(size=edges)(images=pil, return_tensors="pt")["pixel_values"])
        # The PIL backend's filters round differently: within one grey level.
        other = DetrImageProcessorPil(size=edges)(images=pil, return_tensors="pt")["pixel_values"]
        assert other.shape == ours.shape
        assert float((ours - other).abs().max()) <= 1 / 255 / min(adapter.image_std) + 1e-6


def test_detect_on_a_pil_image_equals_native(model: nn.Module) -> None:
    img = torch.rand(3, 300, 200, generator=torch.Generator().manual_seed(5))
    pil = Image.fromarray((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    processor = DetrImageProcessor(size={"shortest_edge": case.SHORTEST_EDGE, "longest_edge": case.LONGEST_EDGE})
    with torch.no_grad():
        out = model(**processor(images=pil, return_tensors="pt"))
    native = processor.post_process_object_detection(out, threshold=0.3, target_sizes=[(300, 200)])[0]
    dets = case.wrap(model, threshold=0.3).detect(pil)
    assert len(dets) == len(native["boxes"]) >= 1
    torch.testing.assert_close(dets.boxes, native["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(dets.scores, native["scores"], atol=1e-4, rtol=0)
    assert torch.equal(dets.labels, native["labels"])


def test_resize_rule_equals_transformers() -> None:
    from odam.detectors.detr import _resized_size

    rng = np.random.default_rng(0)
    for h, w in [(800, 1200), (1333, 800), (480, 640), (1, 5000), *rng.integers(1, 3000, size=(200, 2)).tolist()]:
        for shortest, longest in [(800, 1333), (128, 160), (64, None)]:
            assert _resized_size(h, w, shortest, longest) == get_size_with_aspect_ratio((h, w), shortest, longest)


def test_stride_32_map_lines_up_with_ceil_division(model: nn.Module) -> None:
    # 100x150 is kept (shortest edge 100), neither side a multiple of 32: 4x5 cells at stride 32.
    adapter = case.wrap(model, shortest_edge=100, longest_edge=1000)
    trace = adapter.trace(torch.rand(3, 100, 150, generator=torch.Generator().manual_seed(6)))
    y, groups, group_of = trace.graph(trace.detections)
    (group,) = groups
    assert trace.geometry == odam.detectors.Geometry((100, 150), (100, 150), (100, 150))
    assert group.input.shape[-2:] == (math.ceil(100 / 32), math.ceil(150 / 32))
    assert group.stride == (32.0, 32.0) and not group.rowwise
    assert torch.equal(group_of, torch.zeros(len(y), dtype=torch.int64))


@pytest.mark.parametrize("layer", [None, "encoder"])
def test_graph_reproduces_detections_and_gradients_of_the_plain_forward(model: nn.Module, image: Tensor,
                                                                         layer: str | None) -> None:
    # The re-run with the explained map as a leaf is the model: Y and dY/dA equal autograd through
    # DetrForObjectDetection.forward on the processor's inputs, with A replaced there by a leaf.
    trace = case.wrap(model).trace(image, layer)
    dets = trace.detections
    y, (group,), _ = trace.graph(dets)
    torch.testing.assert_close(y[:, 0].detach(), dets.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 1:].detach(), dets.boxes * torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-4,
                               rtol=0)
    leaf = group.input.detach().clone().requires_grad_(True)
    if layer is None:
        hook = model.model.backbone.register_forward_hook(lambda _m, _i, out: [*out[:-1], (leaf, out[-1][1])])
    else:
        hook = model.model.encoder.register_forward_hook(
            lambda _m, _i, out: type(out)(last_hidden_state=leaf.flatten(2).transpose(1, 2)))
    try:
        out = model(**_inputs(image))
    finally:
        hook.remove()
    H, W = image.shape[-2:]
    for k in range(len(dets)):
        q, label = int(dets.indices[k]), int(dets.labels[k])
        score = out.logits[0, q].softmax(-1)[label]
        cx, cy, w, h = out.pred_boxes[0, q]
        right, top = (cx + 0.5 * w) * W, -(cy - 0.5 * h) * H
        for t, reference in ((0, score), (3, right), (2, top)):
            expected = torch.autograd.grad(reference, leaf, retain_graph=True)[0]
            actual = torch.autograd.grad(y[k, t], group.input, retain_graph=True)[0]
            assert expected.abs().amax() > 0
            torch.testing.assert_close(actual, expected, atol=1e-6 * float(expected.abs().amax()), rtol=1e-4)


def test_encoder_maps_equal_the_slow_reference_and_have_the_image_shape(model: nn.Module, image: Tensor) -> None:
    explainer = odam.ODAM(case.wrap(model), layer="encoder")
    batched = explainer.explain(image, targets=TARGETS)
    assert len(batched) >= 2 and batched.maps.shape == (len(batched), len(TARGETS), *image.shape[-2:])
    reference = explain_loop(explainer, image, TARGETS)
    scale = float(reference.maps.abs().amax())
    assert scale > 0
    torch.testing.assert_close(batched.maps, reference.maps, atol=1e-5 * scale, rtol=1e-4)
    for t in range(1, len(TARGETS)):
        assert not torch.allclose(batched.maps[:, 0], batched.maps[:, t])
    # A different map from the backbone's, on the same detections.
    default = odam.ODAM(case.wrap(model)).explain(image, targets=TARGETS)
    assert torch.equal(default.detections.indices, batched.detections.indices)
    assert not torch.allclose(default.maps, batched.maps)


@pytest.mark.parametrize("name", ["model.backbone.model.encoder.stages.2", "model.encoder.layers.0.mlp"])
def test_any_module_on_the_grid_is_explained_exactly(model: nn.Module, image: Tensor, name: str) -> None:
    # A stride-16 ResNet stage (4D map) and an encoder sub-layer (a sequence on the stride-32 grid).
    adapter = case.wrap(model)
    trace = adapter.trace(image, name)
    y, (group,), _ = trace.graph(trace.detections)
    torch.testing.assert_close(y[:, 0].detach(), trace.detections.scores, atol=1e-6, rtol=0)
    assert group.stride == ((16.0, 16.0) if "stages" in name else (32.0, 32.0))
    explainer = odam.ODAM(adapter, layer=model.get_submodule(name))
    batched = explainer.explain(image, targets=("score", "bottom"))
    reference = explain_loop(explainer, image, ("score", "bottom"))
    torch.testing.assert_close(batched.maps, reference.maps, atol=1e-5 * float(reference.maps.abs().amax()),
                               rtol=1e-4)


def test_candidates_are_every_query_with_detects_scores(model: nn.Module, image: Tensor) -> None:
    adapter = case.wrap(model)
    dets = adapter.detect(image)
    other = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(9))
    c = adapter.candidates(torch.stack([image, other]))
    q, labels = model.config.num_queries, model.config.num_labels
    assert c.boxes.shape == (2, q, labels, 4) and c.scores.shape == (2, q, labels)
    assert c.probs.shape == (2, q, labels + 1)
    assert c.objectness is None and bool(c.valid.all())
    torch.testing.assert_close(c.probs.sum(-1), torch.ones(2, q))
    torch.testing.assert_close(c.scores[0, dets.indices, dets.labels], dets.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(c.boxes[0, dets.indices, 0], dets.boxes, atol=1e-5, rtol=1e-5)  # batched: rounding
    assert torch.equal(c.boxes[..., :1, :].expand_as(c.boxes), c.boxes)
    # Each image of the batch as if alone.
    alone = adapter.candidates(other[None])
    torch.testing.assert_close(alone.probs[0], c.probs[1], atol=1e-5, rtol=0)
    # Fewer candidates than queries: the best by score, in query order.
    top = adapter.candidates(image[None], max_candidates=3)
    best = c.scores[0].amax(-1).topk(3).indices.sort().values
    torch.testing.assert_close(top.scores[0], c.scores[0, best], atol=1e-5, rtol=0)
    assert adapter.score_threshold == case.THRESHOLD


def test_nms_gets_the_queries_above_threshold_by_score(model: nn.Module, image: Tensor) -> None:
    plain = case.wrap(model, threshold=0.3).detect(image)
    adapter = odam.nms.Suppressed(case.wrap(model, threshold=0.3), "nms", iou_threshold=0.7, max_candidates=6)
    trace = adapter.trace(image, candidates=True, max_candidates=6)
    order = torch.sort(plain.scores, descending=True, stable=True).indices[:6]
    assert torch.equal(trace.detections.indices, plain.indices[order])
    assert adapter.max_detections == model.config.num_queries
    kept = adapter.detect(image)
    expected = []
    for label in torch.unique(trace.detections.labels):
        idx = torch.where(trace.detections.labels == label)[0]
        expected.append(idx[odam.nms.nms(trace.detections.boxes[idx], trace.detections.scores[idx], 0.7)])
    expected = torch.cat(expected)
    expected = expected[torch.sort(trace.detections.scores[expected], descending=True, stable=True).indices]
    assert 1 <= len(kept) < len(trace.detections)
    assert torch.equal(kept.indices, trace.detections.indices[expected])
    # Odam-NMS runs on the explained maps.
    assert len(odam.wrap_detector(case.wrap(model, threshold=0.3), nms="odam").detect(image)) >= 1


def test_categories_from_id2label_or_given(model: nn.Module) -> None:
    assert case.wrap(model).categories == ("LABEL_0", "LABEL_1", "LABEL_2")
    assert DetrAdapter(model, ("a", "b", "c")).categories == ("a", "b", "c")


def test_processor_settings_are_followed(model: nn.Module, image: Tensor) -> None:
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 100},
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])
    adapter = DetrAdapter(model, processor=processor)
    assert (adapter.shortest_edge, adapter.longest_edge) == (64, 100)
    assert adapter.image_mean == (0.5, 0.5, 0.5) and adapter.image_std == (0.25, 0.5, 1.0)
    expected = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 100}, image_mean=[0.5, 0.5, 0.5],
                                  image_std=[0.25, 0.5, 1.0], do_rescale=False)(images=image, return_tensors="pt")
    assert torch.equal(adapter._prepare(image[None])[0], expected["pixel_values"])
    assert DetrAdapter(model, processor=processor, shortest_edge=32).shortest_edge == 32  # explicit wins
    with pytest.raises(ValueError, match="pad_size"):
        DetrAdapter(model, processor=DetrImageProcessor(pad_size={"height": 256, "width": 256}))
    with pytest.raises(ValueError, match="rescale by 1/255"):
        DetrAdapter(model, processor=DetrImageProcessor(do_rescale=False))
    with pytest.raises(ValueError, match="shortest_edge"):
        DetrAdapter(model, processor=DetrImageProcessor(size={"height": 64, "width": 64}))
    with pytest.raises(ValueError, match="only bilinear"):
        DetrAdapter(model, processor=DetrImageProcessor(resample=3))  # PIL's bicubic


def test_model_is_borrowed_on_success_and_on_error(model: nn.Module, image: Tensor) -> None:
    adapter = case.wrap(model)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    calls: list[int] = []
    handle = model.model.input_projection.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.train()
        model.model.backbone.eval()
        params[-1].requires_grad_(False)
        before = _state(model)
        explanation = odam.ODAM(adapter, layer="encoder").explain(image, targets=("score", "right"))
        assert _state(model) == before and calls
        model.eval()
        assert torch.equal(explanation.detections.indices, adapter.detect(image).indices)  # in eval mode
        model.train()
        model.model.backbone.eval()
        # An error inside the forward pass while the modules' forwards are replaced (only the graph's pass
        # runs with gradients).
        boom = model.model.decoder.register_forward_hook(_raise_with_grad)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                odam.ODAM(adapter, layer="encoder").explain(image)
            with pytest.raises(RuntimeError, match="boom"):
                odam.ODAM(adapter).explain(image)
        finally:
            boom.remove()
        assert _state(model) == before
        # An error from a layer that cannot be explained, after a traced forward pass.
        with pytest.raises(ValueError, match="returns tuple"):
            odam.ODAM(adapter, layer="model.encoder.layers.0.self_attn").explain(image)
        assert _state(model) == before
    finally:
        handle.remove()
        model.eval()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _raise_with_grad(*_: object) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("boom")


def test_bad_inputs_and_layers_raise_one_line_value_errors(model: nn.Module, image: Tensor) -> None:
    adapter = case.wrap(model)
    checks = [
        (lambda: adapter.detect(torch.rand(1, 3, 32, 32)), "expected image of shape"),
        (lambda: adapter.candidates(torch.rand(3, 32, 32)), "expected images of shape"),
        (lambda: adapter.trace(image, "nope"), "no module named 'nope'"),
        (lambda: adapter.trace(image, "model.decoder"), "not on the image's grid"),
        (lambda: adapter.trace(image, model.class_labels_classifier), "not on the image's grid"),
        (lambda: adapter.trace(image, nn.Conv2d(1, 1, 1)), "not a module of this model"),
        (lambda: adapter.trace(image, "model.backbone.model"), "returns BackboneOutput"),
        (lambda: case.wrap(model, threshold=1.5), "threshold must be in"),
        (lambda: case.wrap(model, shortest_edge=200, longest_edge=100), "shortest_edge <= longest_edge"),
    ]
    for call, message in checks:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert issubclass(LayerError, ValueError)
    trace = adapter.trace(image)
    bad = odam.Detections(trace.detections.boxes, trace.detections.scores, trace.detections.labels + 10,
                          trace.detections.levels, trace.detections.indices)
    with pytest.raises(ValueError, match="label out of range"):
        trace.graph(bad)
    with pytest.raises(TypeError, match="DetrForObjectDetection"):
        DetrAdapter(nn.Linear(1, 1))


def test_accepts_by_class_name_without_importing_transformers(model: nn.Module) -> None:
    assert DetrAdapter.accepts(model)
    fake = type("DetrForObjectDetection", (nn.Module,), {"__module__": "mylib.detr"})
    assert not DetrAdapter.accepts(fake()) and not DetrAdapter.accepts(nn.Linear(1, 1))
    subclass = type("MyDetr", (type(model),), {})
    assert DetrAdapter.accepts(subclass.__new__(subclass))
    code = ("import sys, odam, odam.detectors.detr as d, torch; "
            "assert not d.DetrAdapter.accepts(torch.nn.Linear(1, 1)); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_batch_mixing_8_bit_and_float_images_prepares_each_as_if_alone(model: nn.Module) -> None:
    """Deletion/Insertion score the original (8-bit, from a file) next to perturbed float images."""
    adapter = case.wrap(model, threshold=0.0)
    photo = (torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(3)) * 255).round() / 255
    perturbed = (photo + 0.001).clamp(0, 1)
    dets = adapter.detect(photo)
    c = adapter.candidates(torch.stack([photo, perturbed]))
    torch.testing.assert_close(c.scores[0, dets.indices, dets.labels], dets.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(c.boxes[0, dets.indices, 0], dets.boxes, atol=1e-3, rtol=0)  # batched: rounding


def test_a_timm_backbone_as_in_the_hub_checkpoints() -> None:
    """facebook/detr-resnet-50's config asks for a timm backbone (why the detr extra installs timm)."""
    from transformers import DetrConfig, DetrForObjectDetection

    config = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6, num_labels=3,
                        init_std=0.5)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        model.bbox_predictor.layers[-1].weight.mul_(0.1)
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(1))
    adapter = case.wrap(model, threshold=0.0)
    dets = adapter.detect(image)
    boxes, scores, labels = case.native(model, image, threshold=0.0)
    assert len(dets) == len(boxes) == 6
    torch.testing.assert_close(dets.boxes, boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(dets.scores, scores, atol=1e-4, rtol=0)
    maps = odam.ODAM(adapter).explain(image, targets=("score", "left"), detections=dets[:2]).maps
    assert maps.shape == (2, 2, 96, 120) and bool((maps.amax((-2, -1)) > 0).all())
