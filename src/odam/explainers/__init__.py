"""Explainers: one interface, one verb (``explain``), and a registry to pick one by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from odam.detectors import DetectorAdapter
from odam.explainers.drise import DRISE
from odam.explainers.gradcam import GradCAM, GradCAMPlusPlus
from odam.explainers.odam import ODAM, gaussian_smooth

#: Explainer classes by the method names of the command line and the evaluation journals.
EXPLAINERS: dict[str, type[ODAM | GradCAM | GradCAMPlusPlus | DRISE]] = {
    "odam": ODAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "drise": DRISE,
}


def create_explainer(name: str, detector: nn.Module | DetectorAdapter, **settings: Any
                     ) -> ODAM | GradCAM | GradCAMPlusPlus | DRISE:
    """The explainer registered as ``name`` in :data:`EXPLAINERS`, built for ``detector`` with ``settings``
    (the class's keyword arguments, e.g. ``num_masks`` for ``"drise"``).

    Raises:
        ValueError: an unknown name; the message lists the known ones.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
        >>> create_explainer("drise", model, num_masks=8, progress=False).num_masks
        8
        >>> create_explainer("lime", model)
        Traceback (most recent call last):
        ...
        ValueError: unknown explanation method 'lime'; choose from odam, gradcam, gradcam++, drise
    """
    if not isinstance(name, str) or name not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {name!r}; choose from {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name](detector, **settings)


__all__ = ["DRISE", "EXPLAINERS", "ODAM", "GradCAM", "GradCAMPlusPlus", "create_explainer", "gaussian_smooth"]
