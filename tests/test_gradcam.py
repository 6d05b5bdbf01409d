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


def _direct_gradcam_plus_plus(model: nn.Module, image: torch.Tensor, dets: odam.Detections) -> list[torch.Tensor]:
    """Eq. 19 on each detection's FPN level from plain autograd on the whole model: the model's own output
    (matched to ``dets`` by label and box, never by position), its score's gradient w.r.t. the FPN map (made a
    leaf by a forward hook, so the backward pass stops there), and the pytorch-grad-cam formula written out.
    Returns each map on its level's grid."""
    kept: dict = {}

    def keep(_m: nn.Module, _i: object, out: dict) -> dict:
        kept.update((k, v.detach().requires_grad_(True)) for k, v in out.items())
        return type(out)(kept)

    handle = model.backbone.register_forward_hook(keep)
    try:
        out = model([image])[0]
    finally:
        handle.remove()
    maps = []
    for n in range(len(dets)):
        dist = (out["boxes"] - dets.boxes[n]).abs().amax(1)
        same = torch.where((out["labels"] == dets.labels[n]) & (dist < 1e-4 * (1 + dets.boxes[n].abs().max())))[0]
        assert len(same) == 1, f"detection {n} matches {len(same)} of the model's own detections"
        for v in kept.values():
            v.grad = None
        out["scores"][int(same[0])].backward(retain_graph=True)
        level = list(kept.values())[int(dets.levels[n])]  # the FPN maps in order
        a, g = level.detach(), level.grad
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum((-2, -1), keepdim=True) * g2 * g + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(g) * alpha).sum((-2, -1))  # [1, C]
        maps.append(torch.relu(torch.einsum("bc,bchw->bhw", weights, a)))
    return maps


#: (family, model seed, image seed, image size, detector keywords): the issue-15 case (FCOS at 320 px, 15
#: detections, detections on P3 to P6) and small images of FCOS and Faster R-CNN for several seeds.
_ISSUE_FCOS = {"num_classes": 5, "min_size": 320, "max_size": 512, "score_thresh": 0.0, "detections_per_img": 15,
               "topk_candidates": 100}
_SMALL = {"num_classes": 3, "min_size": 128, "max_size": 160}
DIRECT_CASES = [("fcos_resnet50_fpn", 0, 1, (300, 400), _ISSUE_FCOS)] + [
    (name, seed, seed + 10, (96, 120), _SMALL | extra)
    for name, extra in (("fcos_resnet50_fpn", {"score_thresh": 0.0, "detections_per_img": 15}),
                        # 8 detections: the reference is one float64 backward pass of the whole model per detection
                        ("fasterrcnn_resnet50_fpn", {"box_score_thresh": 0.0, "box_detections_per_img": 8}))
    for seed in (1, 2, 3)
]


@pytest.mark.parametrize(("name", "model_seed", "image_seed", "size", "kw"), DIRECT_CASES,
                         ids=[f"{c[0].split('_')[0]}-seed{c[1]}-{c[3][0]}x{c[3][1]}" for c in DIRECT_CASES])
def test_gradcam_plus_plus_equals_a_direct_autograd_computation(name: str, model_seed: int, image_seed: int,
                                                                size: tuple[int, int], kw: dict) -> None:
    """Every detection's Grad-CAM++ map equals Eq. 19 computed from the whole model by plain autograd.

    Detections are matched to the model's own output by label and box: FCOS predicts one box per anchor for
    every class, so two detections can share a box, and matching by box alone (or by position, where
    near-tied scores may swap between two passes) pairs a map with another detection's reference."""
    from torchvision.models import detection

    torch.manual_seed(model_seed)
    model = getattr(detection, name)(weights=None, weights_backbone=None, **kw).eval().double()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(image_seed), dtype=torch.float64)
    adapter = odam.wrap_detector(model)
    dets = adapter.detect(image)
    assert len(dets) == kw.get("detections_per_img", kw.get("box_detections_per_img"))
    ours = odam.GradCAMPlusPlus(adapter).explain(image, detections=dets).maps[:, 0]
    trace = adapter.trace(image)
    _, groups, group_of = trace.graph(dets)
    direct = _direct_gradcam_plus_plus(model, image, dets)
    for n in range(len(dets)):
        group = groups[int(group_of[n])]
        theirs = group.to_image(direct[n], group.rows[:1])[0].to(ours.dtype)
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours[n], theirs, rtol=0, atol=1e-4 * scale + 1e-30,
                                   msg=lambda m, n=n: f"detection {n} (level {int(dets.levels[n])}): {m}")
