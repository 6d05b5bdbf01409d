"""Adapters: detect() equals the model's own output; the model is borrowed, not changed; bad models rejected."""

from __future__ import annotations

import pytest
import torch
import torchvision
from tests.conftest import build
from torch import nn

import odam


def test_detect_equals_model_output(family_model: nn.Module, image: torch.Tensor) -> None:
    with torch.no_grad():
        expected = family_model([image])[0]
    dets = odam.wrap_detector(family_model).detect(image)
    assert len(dets) == 4
    assert torch.equal(dets.boxes, expected["boxes"])
    assert torch.equal(dets.scores, expected["scores"])
    assert torch.equal(dets.labels, expected["labels"])
    assert dets.has_provenance


def test_detect_with_default_thresholds_and_resize() -> None:
    # The model's own thresholds, a 300x400 image resized to 800x1066 inside the model, few or no boxes.
    model = build("fasterrcnn_resnet50_fpn", detections=100, min_size=800, max_size=1333)
    model.roi_heads.score_thresh = 0.3
    img = torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model([img])[0]
    dets = odam.wrap_detector(model).detect(img)
    assert torch.equal(dets.boxes, expected["boxes"]) and torch.equal(dets.scores, expected["scores"])


def test_attributes_recomputed_from_provenance_reproduce_detections(family_model: nn.Module,
                                                                     image: torch.Tensor) -> None:
    # From (level, anchor or RoI, label) alone, and for RetinaNet from crops of the level, the differentiable
    # attributes give back the detections: score, and the box from the signed edges.
    trace = odam.wrap_detector(family_model).trace(image)
    y, _, _ = trace.graph(trace.detections)
    assert torch.allclose(y[:, 0], trace.detections.scores, atol=1e-5)
    boxes = y[:, 1:].detach() * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    assert torch.allclose(boxes, trace.detections.boxes, atol=1e-3)


def test_fcos_score_is_sqrt_of_class_times_centerness(image: torch.Tensor) -> None:
    model = build("fcos_resnet50_fpn")
    trace = odam.wrap_detector(model).trace(image)
    d = trace.detections
    feats = trace.state["features"]
    out = model.head(feats)
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    flat = torch.tensor([sum(sizes[:lv]) for lv in d.levels.tolist()]) + d.indices
    expected = torch.sqrt(torch.sigmoid(out["cls_logits"][0, flat, d.labels])
                          * torch.sigmoid(out["bbox_ctrness"][0, flat, 0]))
    assert torch.allclose(expected, d.scores, atol=1e-6)


def test_unsupported_model_raises_type_error() -> None:
    with pytest.raises(TypeError, match="supports FCOS, RetinaNet, FasterRCNN, MaskRCNN, odam RetinaFace"):
        odam.wrap_detector(torchvision.models.resnet18(weights=None))
    with pytest.raises(TypeError, match="SSD"):
        odam.wrap_detector(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None))


def _state(model: nn.Module) -> tuple:
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    hooks = tuple((len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules())
    return modes, flags, hooks


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "maskrcnn_resnet50_fpn"])
def test_model_is_borrowed_on_success_and_on_error(name: str, image: torch.Tensor) -> None:
    model = build(name)
    model.train()
    model.backbone.body.conv1.eval()
    for p in model.backbone.body.layer1.parameters():
        p.requires_grad_(False)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    before = _state(model)
    explainer = odam.ODAM(model)
    explanation = explainer.explain(image, targets=("score", "right"))
    assert _state(model) == before
    assert len(calls) >= 1  # the user's hook still runs
    with torch.no_grad():
        model.eval()
        expected = model([image])[0]
        model.train()
        model.backbone.body.conv1.eval()
    assert torch.equal(explanation.detections.boxes, expected["boxes"])  # explained in eval mode
    # An error while our hook is registered (the head is not part of the backbone) ...
    head = model.head.classification_head if name.startswith("fcos") else model.roi_heads.box_head
    with pytest.raises(ValueError, match="not used by the backbone"):
        odam.ODAM(model, layer=head).explain(image)
    assert _state(model) == before
    # ... and one after tracing, while the graph is built.
    bad = explanation.detections[:1]
    bad = odam.Detections(bad.boxes, bad.scores, bad.labels, bad.levels, bad.indices + 10**7)
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(image, detections=bad)
    assert _state(model) == before


def test_layer_errors(image: torch.Tensor) -> None:
    model = build("fcos_resnet50_fpn")
    with pytest.raises(ValueError, match="no module named 'backbone.nope'"):
        odam.ODAM(model, layer="backbone.nope").explain(image)
    with pytest.raises(ValueError, match="two-stage"):
        odam.ODAM(model, layer="roi").explain(image)
    other = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match="not a module of this model"):
        odam.ODAM(model, layer=other.layer1).explain(image)


def test_dispatch_imports_no_optional_family_package() -> None:
    """wrap_detector asks every family whether it accepts a model without importing that family's package."""
    import subprocess
    import sys

    code = ("import sys, torchvision, odam\n"
            "try:\n    odam.wrap_detector(torchvision.models.resnet18(weights=None))\nexcept TypeError:\n    pass\n"
            "print(sorted(m for m in ('transformers', 'ultralytics', 'onnx', 'onnx2torch', 'onnxruntime', 'timm')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
