"""Shared fixtures: seeded random-weight torchvision detectors, a tiny hand-set FCOS, and the test device.

``pytest --device cuda`` (or ``ODAM_TEST_DEVICE=cuda``) runs the tests that take the ``device`` fixture on that
device; every other test, and every test by default, runs on the CPU. ``pytest -m device --device cuda`` runs only
the former (``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

ONE_STAGE = ("fcos_resnet50_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
TWO_STAGE = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn",
             "maskrcnn_resnet50_fpn_v2")
ALL_FAMILIES = ONE_STAGE + TWO_STAGE


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=os.environ.get("ODAM_TEST_DEVICE", "cpu"),
                     help="torch device for the tests that take the `device` fixture, e.g. cuda or cuda:1 "
                          "(default: $ODAM_TEST_DEVICE, else cpu)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "device: the test takes the `device` fixture (set by --device)")
    device = _device(config)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"--device {device} but torch.cuda.is_available() is False")
        # The tests check algorithms against references to 1e-4; TensorFloat-32 (10-bit mantissa) is not that.
        if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9, whose old flags are on their way out
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False


def _device(config: pytest.Config) -> torch.device:
    try:
        return torch.device(config.getoption("--device"))
    except RuntimeError as error:
        raise pytest.UsageError(f"--device: {error}") from None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """Where the test puts its tensors and models: ``--device`` (default cpu)."""
    return _device(pytestconfig)


def build(name: str, *, detections: int = 4, min_size: int = 128, max_size: int = 160) -> nn.Module:
    """A seeded random-weight torchvision detector that returns ``detections`` boxes on any image."""
    torch.manual_seed(0)
    kw: dict = {"weights": None, "weights_backbone": None, "num_classes": 3, "min_size": min_size,
                "max_size": max_size}
    if name in ONE_STAGE:
        kw |= {"score_thresh": 0.0, "detections_per_img": detections}
    else:
        kw |= {"box_score_thresh": 0.0, "box_detections_per_img": detections}
    return getattr(detection, name)(**kw).eval()


_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(params=ALL_FAMILIES)
def family_model(request: pytest.FixtureRequest) -> nn.Module:
    """Each supported family once; built on first use and shared (tests must not modify it)."""
    if request.param not in _CACHE:
        _CACHE[request.param] = build(request.param)
    return _CACHE[request.param]


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 96, 120, generator=g)


class GrayBackbone(nn.Module):
    """One feature level at stride 8: channel 0 is the mean intensity of each 8x8 cell, channel 1 is 1."""

    out_channels = 2

    def forward(self, x: torch.Tensor) -> OrderedDict:
        f = F.avg_pool2d(x.mean(1, keepdim=True), 8)
        return OrderedDict([("0", torch.cat([f, torch.ones_like(f)], 1))])


#: Hand-set weights of :func:`handset_fcos`: logit = K * f + B; every edge distance = (D + f) * 8 pixels.
K, B, D = 10.0, -5.0, 2.0


def handset_fcos() -> nn.Module:
    """FCOS with a one-level mean-intensity backbone and a head whose 3x3 kernels only use the centre tap.

    So each attribute at cell p depends on channel 0 of the feature map at p alone, and its ODAM map can be
    written down by hand. Images are resized as torchvision does (300x400 becomes 800x1066).
    """
    head = FCOSHead(2, 1, 1, num_convs=0)
    with torch.no_grad():
        for conv in (head.classification_head.cls_logits, head.regression_head.bbox_reg,
                     head.regression_head.bbox_ctrness):
            conv.weight.zero_()
            conv.bias.zero_()
        head.classification_head.cls_logits.weight[0, 0, 1, 1] = K
        head.classification_head.cls_logits.bias.fill_(B)
        head.regression_head.bbox_reg.weight[:, 0, 1, 1] = 1.0
        head.regression_head.bbox_reg.bias.fill_(D)
        head.regression_head.bbox_ctrness.bias.fill_(10.0)
    return detection.FCOS(
        GrayBackbone(), num_classes=1, head=head, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], score_thresh=0.5, detections_per_img=10,
    ).eval()
