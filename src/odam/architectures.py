"""Detector architectures that ``odam train`` builds: torchvision's FCOS, RetinaNet and Faster R-CNN on a
choice of backbones, sized to train from scratch on a CPU.

``build_detector("fcos", "tiny", num_classes=2)`` returns a plain torchvision ``FCOS``, so every odam adapter
and explainer works on it unchanged. The backbones:

* ``tiny``: a small residual network (widths 32-64-128-160, strides 8 to 32) with a 64-channel FPN; about
  2 M parameters with an FCOS head (8 MB as float32), 2.2 M with Faster R-CNN's.
  It is what the bundled ``synthcrowd-*`` detectors use.
* ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v3_large``: torchvision's, with an FPN, trained from
  scratch (batch norm is trainable, not frozen) with random initial weights.

Settings that suit 320-pixel images are the defaults; each is a keyword of :func:`build_detector` and is
stored in the checkpoint config, so a checkpoint rebuilds exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

ARCHITECTURES: tuple[str, ...] = ("fcos", "retinanet", "fasterrcnn")
BACKBONES: tuple[str, ...] = ("tiny", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")


class _Block(nn.Module):
    """A residual block: two 3x3 convolutions, batch norm, ReLU; a strided 1x1 shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyBackbone(nn.Module):
    """The ``tiny`` body: stride-8, -16 and -32 feature maps named ``c3``, ``c4``, ``c5``."""

    widths = (32, 64, 128, 160)

    def __init__(self) -> None:
        super().__init__()
        w = self.widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True),
        )
        self.c3 = nn.Sequential(_Block(w[0], w[1], 2), _Block(w[1], w[1], 1))
        self.c4 = nn.Sequential(_Block(w[1], w[2], 2), _Block(w[2], w[2], 1))
        self.c5 = nn.Sequential(_Block(w[2], w[3], 2), _Block(w[3], w[3], 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        c3 = self.c3(x)
        c4 = self.c4(c3)
        return OrderedDict(c3=c3, c4=c4, c5=self.c5(c4))


class _WithFPN(nn.Module):
    """A body returning named maps, followed by a torchvision FPN; ``out_channels`` as detection heads expect."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, extra: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


def _backbone(name: str, arch: str, channels: int) -> nn.Module:
    # FCOS and RetinaNet use P3-P7 (two extra levels from P5); Faster R-CNN P3-P5 plus a max-pooled P6.
    extra = LastLevelP6P7(channels, channels) if arch in ("fcos", "retinanet") else LastLevelMaxPool()
    if name == "tiny":
        return _WithFPN(TinyBackbone(), list(TinyBackbone.widths[1:]), channels, extra)
    if name.startswith("resnet"):
        body = getattr(resnet, name)(weights=None, norm_layer=nn.BatchNorm2d)
        stage = 128 if name in ("resnet18", "resnet34") else 512
        layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
        return BackboneWithFPN(body, layers, [stage, stage * 2, stage * 4], channels, extra_blocks=extra)
    if name == "mobilenet_v3_large":
        features = mobilenet_v3_large(weights=None).features
        # stride-8, -16 and -32 outputs of torchvision's MobileNetV3-Large (40, 112 and 960 channels)
        layers = {"6": "0", "12": "1", "16": "2"}
        return BackboneWithFPN(features, layers, [40, 112, 960], channels, extra_blocks=extra)
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


def build_detector(
    arch: str,
    backbone: str = "tiny",
    *,
    num_classes: int,
    fpn_channels: int = 64,
    head_convs: int = 2,
    min_size: int = 320,
    max_size: int = 320,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    embedding_dim: int = 0,
) -> nn.Module:
    """Build an untrained torchvision detector, in eval mode.

    Args:
        arch: ``"fcos"``, ``"retinanet"`` or ``"fasterrcnn"``.
        backbone: one of :data:`BACKBONES`.
        num_classes: classes including background (``len(categories) + 1``), >= 2.
        fpn_channels: FPN width, which is also the width of the heads.
        head_convs: convolutions in each head branch (FCOS and RetinaNet; torchvision's default is 4).
        min_size, max_size: the model's resize limits (torchvision's ``GeneralizedRCNNTransform``).
        score_thresh: detections scoring below are dropped.
        nms_thresh: IoU threshold of the final per-class NMS.
        detections_per_img: at most this many detections per image.
        embedding_dim: if > 0, add FeatureNMS's embedding branch as ``model.embedding_head`` (an
            :class:`EmbeddingHead`: a conv branch on each FPN level for FCOS and RetinaNet, a linear layer on the
            box head's representation for Faster R-CNN). torchvision's forward ignores it; ``odam train
            --feature-embedding`` trains it.

    Returns:
        ``FCOS``, ``RetinaNet`` or ``FasterRCNN``.

    Example:
        >>> model = build_detector("fcos", "tiny", num_classes=2)
        >>> type(model).__name__, sum(p.numel() for p in model.parameters()) < 2_500_000
        ('FCOS', True)
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (classes + background), got {num_classes!r}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 0:
        raise ValueError(f"embedding_dim must be an integer >= 0, got {embedding_dim!r}")
    body = _backbone(backbone, arch, fpn_channels)
    common: dict[str, Any] = {"min_size": min_size, "max_size": max_size, "detections_per_img": detections_per_img}
    if arch == "fcos":
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
        head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
        model = FCOS(body, num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                     nms_thresh=nms_thresh, **common)
    elif arch == "retinanet":
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
        _shrink_retinanet_head(head, head_convs)
        model = RetinaNet(body, num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                          nms_thresh=nms_thresh, **common)
    else:
        anchors = AnchorGenerator(((24,), (48,), (96,), (192,)), ((0.5, 1.0, 2.0),) * 4)
        names = ["c3", "c4", "c5"] if backbone == "tiny" else ["0", "1", "2"]
        pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
        hidden = 128  # keeps the weights file under 10 MB
        model = FasterRCNN(
            body, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
            box_head=TwoMLPHead(fpn_channels * 49, hidden), box_predictor=FastRCNNPredictor(hidden, num_classes),
            rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
            rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
            box_batch_size_per_image=256, box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img, min_size=min_size, max_size=max_size,
        )
    if embedding_dim:
        model.embedding_head = EmbeddingHead(hidden if arch == "fasterrcnn" else fpn_channels, embedding_dim,
                                             spatial=arch != "fasterrcnn")
    return model.eval()


class EmbeddingHead(nn.Module):
    """FeatureNMS's embedding branch (Salscheider 2021): an L2-normalised ``dim``-d vector per prediction.

    ``spatial=True``: two 3x3 convolutions (GroupNorm and ReLU between) on a feature map ``[B, C, h, w]``, giving
    ``[B, dim, h, w]`` (one vector per location, as one-stage heads predict). ``spatial=False``: a linear layer
    on a box head's representation ``[R, C]``, giving ``[R, dim]``.

    Example:
        >>> import torch
        >>> head = EmbeddingHead(64, 32)
        >>> e = head(torch.rand(2, 64, 5, 7))
        >>> tuple(e.shape), bool(torch.allclose(e.norm(dim=1), torch.ones(2, 5, 7)))
        ((2, 32, 5, 7), True)
    """

    def __init__(self, in_channels: int, dim: int = 32, spatial: bool = True) -> None:
        super().__init__()
        self.dim = dim
        if spatial:
            self.net: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.GroupNorm(min(32, in_channels), in_channels),
                nn.ReLU(inplace=True), nn.Conv2d(in_channels, dim, 3, padding=1))
        else:
            self.net = nn.Linear(in_channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


def _shrink_retinanet_head(head: RetinaNetHead, convs: int) -> None:
    """Keep the first ``convs`` conv blocks of each RetinaNet head branch (torchvision always builds 4)."""
    for branch in (head.classification_head, head.regression_head):
        branch.conv = nn.Sequential(*list(branch.conv)[:convs])
