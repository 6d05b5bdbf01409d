"""Conformance cases for Ultralytics YOLOv8 and YOLO11, random-init from the YAMLs packaged with Ultralytics.

Nothing here imports ultralytics at import time: the suite collects these cases on machines without it too,
and odam's own import (:func:`odam.detectors.yolo.import_ultralytics`) keeps it offline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from odam.detectors.base import DetectorAdapter
from odam.testing import Case

#: The adapter's settings in every YOLO test: a small input, and thresholds that keep a handful of detections.
IMGSZ = 160
CONF = 0.4
IOU = 0.7
MAX_DET = 5

_WRAPPERS: dict[int, object] = {}  # id(DetectionModel) -> the ultralytics.YOLO object that holds it


def spread(model: nn.Module) -> nn.Module:
    """Rescale the output convolutions of ``model``'s head so that a random-init model gives useful outputs.

    With Ultralytics' default initialisation the features fade through the network (SiLU halves small values)
    and every anchor scores about ``sigmoid(bias)``: near ties everywhere, gradients near 1e-14. On a seeded noise
    image, each output convolution is scaled so its logits have unit spread, box logits get a bias that
    favours short distances, and class logits a common bias that puts about 1% of (anchor, class) pairs above
    probability 0.5. Only weights change; the model's code paths are Ultralytics' own.
    """
    head = model.model[-1]
    x = torch.rand(1, 3, 128, IMGSZ, generator=torch.Generator().manual_seed(0))
    fed: list = []
    handle = head.register_forward_pre_hook(lambda _m, args: fed.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    bins = torch.arange(head.reg_max, dtype=torch.float32)
    logits = []
    with torch.no_grad():
        for i, f in enumerate(fed[0]):
            box, cls = head.cv2[i], head.cv3[i]
            z = nn.functional.conv2d(box[:-1](f), box[-1].weight)
            std = z.std()
            box[-1].weight /= std
            box[-1].bias.copy_((-0.5 * bins).repeat(4) - z.mean((0, 2, 3)) / std)
            z = nn.functional.conv2d(cls[:-1](f), cls[-1].weight)
            std = z.std((0, 2, 3))
            cls[-1].weight /= std[:, None, None, None]
            logits.append((z / std[:, None, None]).flatten())
        q = float(torch.cat(logits).quantile(0.99))
        for i in range(len(fed[0])):
            head.cv3[i][-1].bias.fill_(-q)
    return model


def build_yolov8() -> nn.Module:
    """YOLOv8n (80 classes) made through ``ultralytics.YOLO``; returns its ``DetectionModel`` (see :func:`wrapper`)."""
    from odam.detectors.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml", task="detect")
    model = spread(yolo.model.eval())
    _WRAPPERS[id(model)] = yolo
    return model


def build_yolo11() -> nn.Module:
    """YOLO11n with 3 classes, made as a bare ``DetectionModel``."""
    from odam.detectors.yolo import from_yaml

    return spread(from_yaml("yolo11n.yaml", nc=3))


def wrapper(model: nn.Module) -> object:
    """The ``ultralytics.YOLO`` object :func:`build_yolov8` made around ``model``."""
    return _WRAPPERS[id(model)]


def wrap(model: nn.Module) -> DetectorAdapter:
    from odam.detectors.yolo import YoloAdapter

    return YoloAdapter(model, score_threshold=CONF, iou_threshold=IOU, max_detections=MAX_DET, imgsz=IMGSZ)


def native(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ultralytics' ``predict`` steps: cv2 ``LetterBox`` on the 8-bit image, the model, ``non_max_suppression``
    and ``scale_boxes`` (the image is RGB already: ``predict``'s BGR-to-RGB flip is left out with its
    RGB-to-BGR counterpart, which the letterbox does not see)."""
    from odam.detectors.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    from odam._image import to_uint8

    padded = LetterBox(IMGSZ, auto=True, stride=max(int(model.stride.max()), 32))(image=to_uint8(image))
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model(x)
    det = non_max_suppression(out, CONF, IOU, max_det=MAX_DET)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], image.shape[1:])
    return det[:, :4], det[:, 4], det[:, 5].long()


def image() -> Tensor:
    """A 240x320 image of 8-bit values in constant 2x2 blocks: halved to 120x160 (and padded to 128x160) exactly
    by both cv2 and odam, so ``native`` sees the same input as ``detect``."""
    small = torch.randint(0, 256, (3, 120, 160), generator=torch.Generator().manual_seed(1)).float() / 255
    return small.repeat_interleave(2, 1).repeat_interleave(2, 2)


CASES = [
    Case("yolo-v8", build_yolov8, native, image, probe=lambda m: m.model[0], wrap=wrap),
    Case("yolo-11", build_yolo11, native, image, probe=lambda m: m.model[0], wrap=wrap),
]
