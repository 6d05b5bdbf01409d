"""The sanity check by cascading parameter randomisation (Adebayo et al. 2018), for detectors.

Starting from the trained model, the blocks of a copy are re-initialised one at a time from the output end
down to the input (head, then FPN, then the backbone's stages from the last to the stem), and after each
step the same detections are explained again. A method whose maps stay similar to the trained model's
maps does not depend on what the model learned. Similarity is the Spearman rank correlation and the SSIM
(:mod:`odam.metrics.similarity`) of each map with the trained model's map of the same detection.

"The same detection" is the same output slot: the same anchor for one-stage detectors (explainers re-read
it through the detections' provenance), and the same proposal box for two-stage detectors, whose region
proposal network is held at the trained model's proposals so that the RoI being explained does not change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from odam.detectors.base import borrowed
from odam.metrics.similarity import spearman, ssim


@dataclass(frozen=True)
class SanityCheck:
    """Similarity of the maps of a progressively randomised model to those of the trained model.

    Attributes:
        blocks: the re-initialised blocks in the order they were randomised; depth ``d`` (1-based) has the
            first ``d`` of them random.
        spearman: ``Tensor[D + 1, N]``, float64: row 0 is the trained model against itself (1 by definition),
            row ``d`` the maps at depth ``d``; ``N`` detections. NaN where a map is constant.
        ssim: ``Tensor[D + 1, N]``, the same with SSIM.
    """

    blocks: tuple[str, ...]
    spearman: Tensor
    ssim: Tensor


def randomization_blocks(model: nn.Module) -> list[str]:
    """Block names of a torchvision detector from the output end to the input, as randomised in order.

    One-stage detectors: ``head.classification_head``, ``head.regression_head``; two-stage detectors:
    ``roi_heads.box_predictor``, ``roi_heads.box_head`` (the RPN is held fixed, see the module docstring);
    then ``backbone.fpn`` and each child of ``backbone.body`` with parameters, last first.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
        >>> randomization_blocks(model)[:4]
        ['head.classification_head', 'head.regression_head', 'backbone.fpn', 'backbone.body.layer4']
    """
    names = []
    if hasattr(model, "roi_heads"):
        names += ["roi_heads.box_predictor", "roi_heads.box_head"]
    elif hasattr(model, "head"):
        names += [f"head.{n}" for n, m in model.head.named_children() if any(True for _ in m.parameters())]
    else:
        raise ValueError(f"no known head in {type(model).__name__}: pass blocks explicitly")
    backbone = model.backbone
    if hasattr(backbone, "fpn"):
        names.append("backbone.fpn")
    body = getattr(backbone, "body", backbone)
    prefix = "backbone.body" if hasattr(backbone, "body") else "backbone"
    stages = [f"{prefix}.{n}" for n, m in body.named_children() if any(True for _ in m.parameters())]
    return names + stages[::-1]


def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` in place with the global RNGs seeded by ``seed`` (and restored afterwards).

    Submodules with ``reset_parameters`` get PyTorch's default initialisation (random convolution and linear
    weights; normalisation layers back to weight 1, bias 0, statistics 0 and 1). torchvision's
    ``FrozenBatchNorm2d``, which has no such method, is reset to the same identity values.
    """
    devices = sorted({p.device.index for p in module.parameters() if p.device.type == "cuda"} - {None})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            elif isinstance(m, FrozenBatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1)


def cascading_randomization(model: nn.Module, explain: Callable[[nn.Module], Tensor],
                            blocks: list[str] | None = None, seed: int = 0) -> SanityCheck:
    """Explain with the trained model, then with copies whose blocks are randomised one more at a time.

    Args:
        model: a torchvision detector; it is copied, never changed.
        explain: maps the detections to explain with a given model: ``model -> Tensor[N, H, W]``. It is
            called with the trained model first, then with each randomised copy.
        blocks: module names to randomise in order (default :func:`randomization_blocks`).
        seed: seeds the re-initialisation; block ``d`` uses ``seed + d``.

    Returns:
        A :class:`SanityCheck`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
        >>> x = torch.rand(256, 4)
        >>> check = cascading_randomization(net, lambda m: m(x).detach().view(1, 16, 16), blocks=["1", "0"])
        >>> check.spearman.shape, check.spearman[0].tolist()
        (torch.Size([3, 1]), [1.0])
    """
    blocks = randomization_blocks(model) if blocks is None else list(blocks)
    trained = explain(model)
    copied = copy.deepcopy(model)
    if hasattr(copied, "rpn"):
        _hold_proposals(model, copied)
    rows_r, rows_s = [[1.0] * len(trained)], [[1.0] * len(trained)]
    for d, name in enumerate(blocks, 1):
        reinitialize(copied.get_submodule(name), seed + d)
        maps = explain(copied)
        rows_r.append([spearman(a, b) for a, b in zip(trained, maps, strict=True)])
        rows_s.append([ssim(a, b) for a, b in zip(trained, maps, strict=True)])
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float64).view(len(rows), len(trained))  # noqa: E731
    return SanityCheck(tuple(blocks), as_tensor(rows_r), as_tensor(rows_s))


def _hold_proposals(trained: nn.Module, copied: nn.Module) -> None:
    """Make ``copied``'s RPN return what ``trained``'s RPN returns on the same input."""
    def forward(images: object, features: dict[str, Tensor], targets: object = None) -> tuple[list[Tensor], dict]:
        # The trained backbone's features give the trained proposals; run it on the same padded images.
        with borrowed(trained), torch.no_grad():
            trained.eval()
            return trained.rpn(images, trained.backbone(images.tensors), targets)

    copied.rpn.forward = forward
