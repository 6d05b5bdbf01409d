"""Detector adapters behind one protocol, and a factory for model names."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from odam.detectors.base import DetectorAdapter, FeatureGroup, Geometry, MapGroup, Trace, borrowed
from odam.detectors.torchvision import OneStageAdapter, TwoStageAdapter

SUPPORTED = ("FCOS", "RetinaNet", "FasterRCNN", "MaskRCNN")

__all__ = ["DetectorAdapter", "FeatureGroup", "Geometry", "MapGroup", "Trace", "borrowed", "wrap_detector",
           "SUPPORTED"]


def wrap_detector(model: nn.Module | DetectorAdapter, categories: tuple[str, ...] | None = None) -> DetectorAdapter:
    """Wrap a torchvision detector in an adapter with ``detect(image) -> Detections``.

    Supports torchvision's FCOS, RetinaNet, Faster R-CNN and Mask R-CNN, ``_v2`` variants included.
    An adapter passed in is returned as it is. ``categories`` names the classes, indexed by label (as
    torchvision's weights' ``meta["categories"]``, with ``"__background__"`` at 0).

    Raises:
        TypeError: for any other model, naming what is supported.

    Example:
        >>> import torchvision, odam
        >>> model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
        >>> type(odam.wrap_detector(model)).__name__
        'OneStageAdapter'
    """
    if isinstance(model, DetectorAdapter):
        return model
    if isinstance(model, (FCOS, RetinaNet)):
        return OneStageAdapter(model, categories)
    if isinstance(model, FasterRCNN):  # MaskRCNN subclasses FasterRCNN
        return TwoStageAdapter(model, categories)
    raise TypeError(
        f"unsupported detector {type(model).__name__}; odam supports torchvision {', '.join(SUPPORTED)}"
        " (and their _v2 variants)"
    )
