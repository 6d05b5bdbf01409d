"""The sanity check by cascading randomisation: blocks, the borrowed model, held proposals, and that maps change."""

from __future__ import annotations

import copy

import torch
from tests.conftest import build

import odam
from odam.metrics.sanity import cascading_randomization, randomization_blocks, reinitialize

IMAGE = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(0))


def test_blocks_go_from_the_head_to_the_stem() -> None:
    one = randomization_blocks(build("fcos_resnet50_fpn"))
    assert one == ["head.classification_head", "head.regression_head", "backbone.fpn", "backbone.body.layer4",
                   "backbone.body.layer3", "backbone.body.layer2", "backbone.body.layer1", "backbone.body.bn1",
                   "backbone.body.conv1"]
    two = randomization_blocks(odam.load_detector("synthcrowd-fasterrcnn").model)
    assert two == ["roi_heads.box_predictor", "roi_heads.box_head", "backbone.fpn", "backbone.body.c5",
                   "backbone.body.c4", "backbone.body.c3", "backbone.body.stem"]


def test_maps_decorrelate_and_the_model_is_untouched() -> None:
    detector = odam.load_detector("synthcrowd-fcos")
    model = detector.model.train()
    model.backbone.body.stem[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    dets = detector.detect(IMAGE)[:3]
    check = cascading_randomization(model, lambda m: odam.ODAM(m).explain(IMAGE, detections=dets).maps[:, 0])
    assert check.spearman.shape == check.ssim.shape == (len(check.blocks) + 1, 3)
    assert (check.spearman[0] == 1).all() and (check.ssim[0] == 1).all()
    assert check.spearman[-1].nanmean() < 0.5  # nothing of the trained model is left
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and not model.backbone.body.stem[0].weight.requires_grad


def test_two_stage_keeps_the_trained_proposals() -> None:
    """Randomising everything but the RPN changes the maps, not which RoI is explained."""
    model = build("fasterrcnn_resnet50_fpn", detections=3)
    dets = odam.wrap_detector(model).detect(IMAGE)
    seen = []

    def explain(m: torch.nn.Module) -> torch.Tensor:
        trace = odam.wrap_detector(m).trace(IMAGE)
        seen.append(trace.state["proposals"][dets.indices])
        return odam.ODAM(m).explain(IMAGE, detections=dets).maps[:, 0]

    cascading_randomization(model, explain, blocks=["roi_heads.box_head", "backbone.body.layer4"])
    assert len(seen) == 3 and all(torch.equal(seen[0], s) for s in seen[1:])


def test_reinitialize_is_seeded_and_restores_the_rng() -> None:
    a, b = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    state = torch.random.get_rng_state()
    reinitialize(a, 5)
    reinitialize(b, 5)
    assert torch.equal(a.weight, b.weight) and torch.equal(torch.random.get_rng_state(), state)
    frozen = torchvision_frozen_bn()
    reinitialize(frozen, 0)
    assert (frozen.weight == 1).all() and (frozen.running_var == 1).all() and (frozen.bias == 0).all()


def torchvision_frozen_bn() -> torch.nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d

    bn = FrozenBatchNorm2d(4)
    bn.weight.fill_(3)
    bn.running_var.fill_(7)
    bn.bias.fill_(2)
    return bn
