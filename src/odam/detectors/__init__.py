"""Detector adapters behind one protocol, and a factory for model names."""

from __future__ import annotations

import copy
import importlib

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from odam.detectors.base import DetectorAdapter, FeatureGroup, Geometry, MapGroup, Trace, borrowed
from odam.detectors.torchvision import OneStageAdapter, TwoStageAdapter
from odam.nms import Suppression

SUPPORTED = ("FCOS", "RetinaNet", "FasterRCNN", "MaskRCNN")

#: Adapters of other families, as ``"module:Class"``: each class has ``accepts(model) -> bool``, which must not
#: import the family's package (a user without that extra installed never loads it).
FAMILIES = ("odam.detectors.retinaface:RetinaFaceAdapter", "odam.detectors.detr:DetrAdapter",
            "odam.detectors.yolo:YoloAdapter")

__all__ = ["DetectorAdapter", "FeatureGroup", "Geometry", "MapGroup", "Trace", "borrowed", "wrap_detector",
           "SUPPORTED"]


def wrap_detector(model: nn.Module | DetectorAdapter, categories: tuple[str, ...] | None = None,
                  nms: str | Suppression | None = None) -> DetectorAdapter:
    """Wrap a torchvision detector in an adapter with ``detect(image) -> Detections``.

    Supports torchvision's FCOS, RetinaNet, Faster R-CNN and Mask R-CNN, ``_v2`` variants included.
    An adapter passed in is returned as it is (a copy, when ``nms`` is given). ``categories`` names the
    classes, indexed by label (as torchvision's weights' ``meta["categories"]``, with ``"__background__"`` at 0).
    ``nms`` replaces the model's own NMS: a name from :data:`odam.nms.METHODS` (``"odam"`` for Odam-NMS) or an
    :class:`odam.nms.Suppression`.

    Raises:
        TypeError: for any other model, naming what is supported.

    Example:
        >>> import torchvision, odam
        >>> model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
        >>> type(odam.wrap_detector(model)).__name__
        'OneStageAdapter'
    """
    if isinstance(model, DetectorAdapter):
        if nms is None:
            return model
        adapter = copy.copy(model)
        adapter.nms = Suppression.parse(nms)
        return adapter
    if isinstance(model, (FCOS, RetinaNet)):
        return OneStageAdapter(model, categories, nms)
    if isinstance(model, FasterRCNN):  # MaskRCNN subclasses FasterRCNN
        return TwoStageAdapter(model, categories, nms)
    for family in FAMILIES:
        module, name = family.split(":")
        try:
            adapter = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # a family still being written
            continue
        if adapter.accepts(model):
            return adapter(model, categories, nms)
    raise TypeError(
        f"unsupported detector {type(model).__name__}; odam supports torchvision {', '.join(SUPPORTED)}"
        " (and their _v2 variants)"
    )
