"""Detector adapters behind one protocol, and a factory for model names."""

from __future__ import annotations

import importlib

from torch import nn

from odam.detectors.base import DetectorAdapter, FeatureGroup, Geometry, MapGroup, Trace, borrowed

#: Model classes :func:`wrap_detector` accepts (torchvision's ``_v2`` variants and subclasses included).
SUPPORTED = ("FCOS", "RetinaNet", "FasterRCNN", "MaskRCNN", "odam RetinaFace", "transformers DetrForObjectDetection",
             "ultralytics YOLO (v8, 11, and 26 with NMS)")

#: The registry of adapter classes, as ``"module:Class"``, tried in order: each class has ``accepts(model) ->
#: bool``, which must not import the family's package (a user without that extra installed never loads it).
FAMILIES = ("odam.detectors.torchvision:OneStageAdapter", "odam.detectors.torchvision:TwoStageAdapter",
            "odam.detectors.retinaface:RetinaFaceAdapter", "odam.detectors.detr:DetrAdapter",
            "odam.detectors.yolo:YoloAdapter")

__all__ = ["DetectorAdapter", "FeatureGroup", "Geometry", "MapGroup", "Trace", "borrowed", "wrap_detector",
           "SUPPORTED"]


def wrap_detector(model: nn.Module | DetectorAdapter, categories: tuple[str, ...] | None = None
                  ) -> DetectorAdapter:
    """Wrap a detector in its adapter, with ``detect(image) -> Detections`` (docs/ADAPTERS.md).

    Supports torchvision's FCOS, RetinaNet, Faster R-CNN and Mask R-CNN (``_v2`` variants included), odam's
    RetinaFace (``odam.load_detector("retinaface")``), Hugging Face's ``DetrForObjectDetection`` and Ultralytics'
    YOLOv8 and YOLO11 detection models (the ``YOLO`` object or its ``DetectionModel``). An adapter passed in is
    returned as it is. ``categories`` names the classes, indexed by label (as torchvision's weights'
    ``meta["categories"]``, with ``"__background__"`` at 0); ``None`` keeps the family's own names where it has
    them. ``odam.wrap_detector(model, nms=...)`` (:func:`odam.models.wrap_detector`) also replaces the model's
    NMS.

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
    for family in FAMILIES:
        module, name = family.split(":")
        adapter = getattr(importlib.import_module(module), name)
        if adapter.accepts(model):
            return adapter(model, categories)
    raise TypeError(f"unsupported detector {type(model).__name__}; odam supports {', '.join(SUPPORTED)}"
                    " (docs/ADAPTERS.md shows how to write an adapter for another)")
