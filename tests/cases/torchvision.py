"""Conformance cases for torchvision's one- and two-stage detectors."""

from __future__ import annotations

import torch
from tests.conftest import build
from torch import Tensor, nn

from odam.testing import Case


def _native(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        out = model([image])[0]
    return out["boxes"], out["scores"], out["labels"]


def _image() -> Tensor:
    return torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(1))


CASES = [
    Case("torchvision-fcos", lambda: build("fcos_resnet50_fpn"), _native, _image,
         probe=lambda m: m.backbone.body.layer1),
    Case("torchvision-retinanet", lambda: build("retinanet_resnet50_fpn"), _native, _image,
         probe=lambda m: m.backbone.body.layer1),
    Case("torchvision-fasterrcnn", lambda: build("fasterrcnn_resnet50_fpn"), _native, _image,
         probe=lambda m: m.backbone.body.layer1),
]
