"""Grad-CAM and Grad-CAM++ against the ``grad-cam`` package (pytorch-grad-cam) on the same layer and target."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam
import torch
from tests.conftest import build
from torch import nn

import odam

# Families with different gradient paths: GroupNorm over a whole level (FCOS), crops around the anchor
# (RetinaNet) and the adjoint of RoIAlign (Faster R-CNN).
FAMILIES = ("fcos_resnet50_fpn", "retinanet_resnet50_fpn", "fasterrcnn_resnet50_fpn")
OURS = {"gradcam": odam.GradCAM, "gradcam++": odam.GradCAMPlusPlus}
THEIRS = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam++": pytorch_grad_cam.GradCAMPlusPlus}

_MODELS: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = build(name, detections=30).double()
    return _MODELS[name]


class _Score(nn.Module):
    """Detection ``k``'s score from the whole torchvision model, as pytorch-grad-cam expects: ``[1, 1]``."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(list(x))[0]["scores"][self.k].reshape(1, 1)


def _package_map(kind: str, model: nn.Module, image: torch.Tensor, k: int, level: int) -> torch.Tensor:
    """The package's raw map (after its ReLU, before its min-max scaling and resizing) on the level's grid."""
    layer = model.backbone.fpn.layer_blocks[level]
    cam = THEIRS[kind](_Score(model, k), target_layers=[layer])
    cam(image[None], targets=[lambda out: out[0]])
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(image[None], layer, None, acts, grads, False)
    return torch.from_numpy(np.maximum(raw, 0))[0]


@pytest.mark.parametrize("kind", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("name", FAMILIES)
def test_matches_pytorch_grad_cam(name: str, kind: str) -> None:
    model = _model(name)
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    adapter = odam.wrap_detector(model)
    dets = adapter.detect(image)
    # Detections on the three levels that come straight out of an FPN layer block, a few per level (RoIs
    # this small are all pooled from level 0).
    picked = [k for lv in range(3) for k in torch.where(dets.levels == lv)[0][:3].tolist()]
    assert len(picked) >= 3
    ours = OURS[kind](adapter).explain(image, detections=dets[picked]).maps[:, 0]
    trace = adapter.trace(image)
    _, groups, group_of = trace.graph(dets[picked])
    for n, k in enumerate(picked):
        raw = _package_map(kind, copy.deepcopy(model), image, k, int(dets.levels[k]))
        group = groups[int(group_of[n])]
        theirs = group.to_image(raw[None], group.rows[:1])[0]  # placed on the image as odam places maps
        assert theirs.max() > 0
        torch.testing.assert_close(ours[n], theirs.to(ours.dtype), rtol=0, atol=1e-5 * float(theirs.max()))


def test_the_two_differ_and_differ_from_odam() -> None:
    model = _model("fcos_resnet50_fpn")
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dets = odam.wrap_detector(model).detect(image)[:3]
    a = odam.GradCAM(model).explain(image, detections=dets).maps
    b = odam.GradCAMPlusPlus(model).explain(image, detections=dets).maps
    c = odam.ODAM(model).explain(image, detections=dets).maps
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_box_targets_and_batches_agree() -> None:
    """Every attribute is explained, and chunking the gradients does not change the maps."""
    model = _model("retinanet_resnet50_fpn")
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    whole = odam.GradCAMPlusPlus(model).explain(image, targets=odam.TARGETS)
    chunked = odam.GradCAMPlusPlus(model, batch_size=3).explain(image, targets=odam.TARGETS)
    assert whole.maps.shape[:2] == (30, 5)
    torch.testing.assert_close(whole.maps, chunked.maps)


def test_model_is_borrowed() -> None:
    model = copy.deepcopy(_model("fasterrcnn_resnet50_fpn")).train()
    model.backbone.body.conv1.weight.requires_grad_(False)
    image = torch.rand(3, 96, 120, dtype=torch.float64)
    odam.GradCAM(model).explain(image)
    assert model.training and not model.backbone.body.conv1.weight.requires_grad
    assert all(not m._forward_hooks for m in model.modules())


def test_model_is_borrowed_also_when_it_raises() -> None:
    model = copy.deepcopy(_model("retinanet_resnet50_fpn")).train()
    model.head.classification_head.cls_logits.weight.requires_grad_(False)
    handle = model.backbone.register_forward_hook(lambda *a: None)
    explainer = odam.GradCAMPlusPlus(model)

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    explainer._explain_group = fail
    with pytest.raises(RuntimeError, match="boom"):
        explainer.explain(torch.rand(3, 96, 120, dtype=torch.float64))
    assert model.training and all(m.training for m in model.modules())
    assert not model.head.classification_head.cls_logits.weight.requires_grad
    assert list(model.backbone._forward_hooks) == [handle.id]
