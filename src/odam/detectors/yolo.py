"""Adapter for Ultralytics YOLO detectors: YOLOv8, YOLO11, and YOLO26 run with NMS (Ultralytics' default).

Ultralytics is licensed AGPL-3.0; importing odam never imports it: only :func:`import_ultralytics` does, when a
YOLO model is built by odam (:func:`from_yaml`); a user who holds a YOLO model has imported it already.

**The detection pass.** :meth:`YoloAdapter.detect` reproduces Ultralytics' ``predict`` (8.4.190):

1. :func:`letterbox` resizes the image keeping its aspect ratio (``F.interpolate``, bilinear, half-pixel centres,
   no antialiasing: the arithmetic of ``cv2.resize(..., INTER_LINEAR)``) and pads it with 114/255, centred, to a
   multiple of the stride (``LetterBox(auto=True)``: the rectangular inference ``predict`` does).
2. The model runs once, unchanged (its own ``forward``); a pre-hook on the ``Detect`` head keeps the neck
   features it receives (P3/P4/P5).
3. Non-maximum suppression repeats ``ultralytics.utils.nms.non_max_suppression`` operation by operation (best
   class per anchor, ``conf > score_threshold``, classes kept apart by 7680-pixel offsets, ``torchvision.ops.nms``,
   ``max_det``), and boxes go back to the image as ``ultralytics.utils.ops.scale_boxes`` does (per-axis gain,
   clipped).

Measured against Ultralytics 8.4.190 on random-init YOLOv8n and YOLO11n (the first point on YOLO26n too);
``tests/test_yolo.py`` checks each point but the measurement on inexact sizes:

- On the same letterboxed input tensor, ``detect`` equals ``non_max_suppression`` + ``scale_boxes`` applied to the
  model's output: the same detections in the same order, boxes and scores bit for bit (difference 0).
- :func:`letterbox` gives the same padded size, offsets and padding value as cv2 ``LetterBox`` for every size, and
  the same pixels (difference 0) where the resize is exact in both (no resize, or constant 2x2 blocks halved).
  Elsewhere cv2 rounds the resized image to 8 bits (after 11-bit fixed-point weights) while odam keeps floats:
  on random 8-bit images of 13 sizes letterboxed to 160 the inputs differed by at most 0.78/255 per pixel (mean
  0.22/255).
- ``detect`` on an 8-bit image against the whole ``YOLO.predict`` (cv2 letterbox, fused model): where the resize
  is exact, the same detections in the same order, boxes within 3e-4 pixels and scores within 2e-6 (the fused
  convolutions round differently). On other sizes, 476 of 480 detections matched (IoU > 0.99, boxes within 0.3
  pixels, scores within 3e-3) and near-tied ones could swap places: the 8-bit rounding above, amplified by
  random-init networks.

**What is explained.** By default each detection is explained on the neck feature map its anchor belongs to (the
input of the ``Detect`` head on that level: P3, P4, P5 at strides 8, 16, 32); ``Detections.levels`` is that level
and ``Detections.indices`` the anchor's flat index ``y * w + x`` on it. The attributes are the class probability
(the sigmoid of the class logit: YOLOv8/11 have no objectness) and the four signed box edges in image pixels,
decoded as the head does (DFL: softmax expectation over ``reg_max`` bins, distances from the anchor point, times
the stride). The head's branches are stride-1 "same" convolutions with batch norm and SiLU, so an output sees
only the cells within 2 of its own (3x3 twice): gradients come from 5x5 crops of the level around each
detection, batched, equal to those on the whole map (tested). ``layer=`` picks any module before the head
instead: a dotted name relative to the ``DetectionModel`` (``"model.15"``) or the module itself.

**Borrowed model.** The model keeps its modes, ``requires_grad`` flags and hooks (see
:func:`odam.detectors.base.borrowed`) and the head's anchor cache (``anchors``, ``strides``, ``shape``), which
odam's forward passes would otherwise set to the last input's size. odam never fuses the model (a fused one, as
``model.fuse()`` leaves it, works too).

**No network.** Importing ultralytics resolves two host names (``is_online()``: when online and not under pytest,
its analytics and error reports are enabled) and creates or migrates ``settings.json`` in the user's config
directory. :func:`import_ultralytics` sets ``YOLO_OFFLINE=1`` and ``YOLO_CONFIG_DIR`` (a private temporary
directory) for that import only, unless the caller set them, and restores the environment afterwards.
Ultralytics reads both only at import; building a model from a YAML file and everything this adapter runs then
open no socket (tested in a fresh interpreter with every socket operation blocked).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odam.detectors.base import (
    Candidates,
    DetectorAdapter,
    FeatureGroup,
    Geometry,
    LayerError,
    MapGroup,
    Trace,
    Windows,
    leaf_hook,
    resolve_layer,
)
from odam.detectors.groups import CropGroup, receptive_radius
from odam.detectors.ultralytics_env import from_yaml, import_ultralytics
from odam.structures import Detections

__all__ = ["MAX_NMS", "MAX_WH", "PAD_VALUE", "LetterboxGeometry", "UnsupportedModelError", "YoloAdapter", "from_yaml",
           "import_ultralytics", "letterbox", "neck_centres"]

#: ``non_max_suppression``'s per-class box offset (``max_wh``) and candidate cap (``max_nms``).
MAX_WH = 7680
MAX_NMS = 30000
#: The padding value of ``LetterBox`` (114 of 255).
PAD_VALUE = 114 / 255

# Layers that act on each position alone, and the Ultralytics wrappers that chain them.
_POINTWISE = (nn.BatchNorm2d, nn.Identity, nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
              nn.GELU, nn.Mish, nn.Sigmoid, nn.Tanh)
_CHAINS = {("ultralytics.nn.modules.conv", "Conv"), ("ultralytics.nn.modules.conv", "DWConv")}


class UnsupportedModelError(TypeError, ValueError):
    """An Ultralytics model whose head odam cannot explain (segmentation, pose, OBB, end-to-end, ...)."""


@dataclass(frozen=True)
class LetterboxGeometry(Geometry):
    """:class:`Geometry` of a letterboxed image: ``resized`` sits at ``offset`` (top, left) inside ``padded``."""

    offset: tuple[int, int] = (0, 0)

    def to_original(self, boxes: Tensor) -> Tensor:
        """Boxes (``Tensor[..., 4]``, model-input pixels) to original pixels, clipped, as ``scale_boxes`` does."""
        gy, gx = self.resized[0] / self.original[0], self.resized[1] / self.original[1]
        top, left = self.offset
        h, w = self.original
        x1 = ((boxes[..., 0] - left) / gx).clamp(0, w)
        y1 = ((boxes[..., 1] - top) / gy).clamp(0, h)
        x2 = ((boxes[..., 2] - left) / gx).clamp(0, w)
        y2 = ((boxes[..., 3] - top) / gy).clamp(0, h)
        return torch.stack([x1, y1, x2, y2], -1)

    def input_pixels(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32
                     ) -> tuple[Tensor, Tensor]:
        """As :meth:`Geometry.input_pixels`, in the padded input: the image starts at ``offset``."""
        ys, xs = super().input_pixels(device, dtype)
        return ys + self.offset[0], xs + self.offset[1]


def letterbox(images: Tensor, imgsz: tuple[int, int], stride: int = 32, auto: bool = True
              ) -> tuple[Tensor, LetterboxGeometry]:
    """Ultralytics' ``LetterBox`` in torch, for a batch of same-size images ``Tensor[B, 3, H, W]`` in [0, 1].

    Resizes by ``r = min(imgsz_h / H, imgsz_w / W)`` to ``(round(H * r), round(W * r))`` (bilinear, half-pixel
    centres, no antialiasing, as ``cv2.INTER_LINEAR``), then pads with 114/255 around the image, centred: up to
    ``imgsz`` or, with ``auto`` (what ``predict`` does), only to the next multiple of ``stride``.

    Returns:
        ``(padded, geometry)``: ``Tensor[B, 3, h, w]`` and where the image sits in it.

    Example:
        >>> x, g = letterbox(torch.rand(1, 3, 120, 200), (160, 160))
        >>> tuple(x.shape), g.resized, g.offset
        ((1, 3, 96, 160), (96, 160), (0, 0))
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    h0, w0 = int(images.shape[-2]), int(images.shape[-1])
    if h0 < 1 or w0 < 1:
        raise ValueError(f"expected a non-empty image, got size {h0}x{w0}")
    r = min(imgsz[0] / h0, imgsz[1] / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = imgsz[1] - new_w, imgsz[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    x = images
    if (new_h, new_w) != (h0, w0):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    x = F.pad(x, (left, right, top, bottom), value=PAD_VALUE)
    geometry = LetterboxGeometry((h0, w0), (new_h, new_w), (int(x.shape[-2]), int(x.shape[-1])), (top, left))
    return x, geometry


def neck_centres(model: nn.Module) -> tuple[float, ...]:
    """Where the neck maps that feed the ``Detect`` head centre their cells, in padded-input pixels: the offset
    ``c`` of :class:`~odam.detectors.base.MapGroup` for each level (cell ``j`` on ``j * s + c``).

    Ultralytics' ``Conv`` pads ``k // 2`` (odd kernels: "same"), so backbone, SPPF and the stride-2 convolutions
    of the bottom-up path keep cells on ``j * s``. The top-down path's nearest upsampling would move the finer
    levels back by half a stride per step, but the bottom-up path follows it, and on YOLOv8n and YOLO11n the
    measured centroid of each level's effective receptive field is within 0.15 cells of ``j * s``
    (``benchmarks/placement.py``): ``0`` on every level.
    """
    return tuple(0.0 for _ in model.model[-1].f)


class YoloAdapter(DetectorAdapter):
    """Ultralytics YOLO detection models with a ``Detect`` head and NMS (YOLOv8, YOLO11, YOLO26).

    Args:
        model: an ``ultralytics.YOLO`` object or its ``DetectionModel`` (``YOLO(...).model``); the adapter keeps
            the ``DetectionModel`` as ``self.model``, and layer names are relative to it (``"model.15"``).
        categories: class names by label; ``None`` takes the model's ``names``.
        score_threshold: Ultralytics' ``conf``: keep anchors whose best class probability is above it.
        iou_threshold: Ultralytics' ``iou``: the NMS IoU threshold.
        max_detections: Ultralytics' ``max_det``.
        imgsz: Ultralytics' ``imgsz``: an int or ``(h, w)``, multiples of the model's largest stride (32).
        classes: keep only these labels (Ultralytics' ``classes``); ``None`` keeps all.
        agnostic: class-agnostic NMS (Ultralytics' ``agnostic_nms``).

    Raises:
        UnsupportedModelError: (a ``TypeError`` and a ``ValueError``) for segmentation, pose, OBB, world,
            YOLOE, RT-DETR, YOLOv10 or classification heads, and for a head set to end-to-end (NMS-free)
            inference (``model.end2end = True``).

    Example:
        >>> import torch, odam
        >>> from odam.detectors.yolo import YoloAdapter, from_yaml
        >>> _ = torch.manual_seed(0)
        >>> adapter = YoloAdapter(from_yaml("yolov8n.yaml", nc=3), score_threshold=0.001, imgsz=128)
        >>> dets = adapter.detect(torch.rand(3, 96, 120))
        >>> len(dets) > 0, adapter.categories  # a YAML names its classes by number
        (True, ('0', '1', '2'))
        >>> odam.ODAM(adapter).explain(torch.rand(3, 96, 120), targets=("score", "left")).maps.shape[1:]
        torch.Size([2, 96, 120])
    """

    named_layers = ("fpn",)  # the neck maps feeding the head
    default_layer = "fpn"

    def __init__(self, model: nn.Module, categories: tuple[str, ...] | None = None,
                 *, score_threshold: float = 0.25,
                 iou_threshold: float = 0.7, max_detections: int = 300, imgsz: int | tuple[int, int] = 640,
                 classes: list[int] | None = None, agnostic: bool = False) -> None:
        inner = _detection_model(model)
        _detect_head(inner)
        if categories is None:
            categories = _names(inner)
        super().__init__(inner, categories)
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.score_threshold = score_threshold
        self.iou_threshold = float(iou_threshold)
        self.max_detections = max_detections
        self.stride = max(int(inner.stride.max()), 32)  # what predict pads to (AutoBackend's stride)
        size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
        if len(size) != 2 or any(not isinstance(s, int) or s < 1 or s % self.stride for s in size):
            raise ValueError(f"imgsz must be an int or (h, w) of positive multiples of {self.stride}, got {imgsz!r}")
        self.imgsz: tuple[int, int] = size  # type: ignore[assignment]
        self.classes = None if classes is None else [int(c) for c in classes]
        self.agnostic = bool(agnostic)

    @staticmethod
    def accepts(model: object) -> bool:
        """Whether ``model`` is an Ultralytics model or ``YOLO`` object (decided without importing ultralytics).

        Unsupported Ultralytics models are accepted too, so that the adapter can say why it refuses them.
        """
        return _ultralytics_class(model, "ultralytics.engine.model", "Model") or _ultralytics_class(
            model, "ultralytics.nn.tasks", "BaseModel")

    @property
    def score_threshold(self) -> float:
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        if not 0 <= value <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {value}")
        self._score_threshold = float(value)

    @property
    def max_detections(self) -> int:
        """Ultralytics' ``max_det``."""
        return self._max_detections

    @max_detections.setter
    def max_detections(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_detections must be a positive int, got {value!r}")
        self._max_detections = value

    @property
    def head(self) -> nn.Module:
        """The model's ``Detect`` head (checked again on each call: a user may switch a model to end-to-end)."""
        return _detect_head(self.model)

    # -- the forward pass ----------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, layer: str | nn.Module | None) -> tuple[Tensor, list[Tensor], list]:
        """The model's own output ``Tensor[B, 4 + nc, A]`` (xywh boxes in input pixels, class probabilities), the
        neck features the head received, and the leaf ``layer``'s hook captured (empty without ``layer``)."""
        head = self.head
        fed: list[list[Tensor]] = []
        handle = head.register_forward_pre_hook(lambda _m, args: fed.append(list(args[0])))
        try:
            with _kept_anchor_cache(head):
                if layer is None:
                    with torch.no_grad():
                        out = self.model(x)
                    captured: list = []
                else:
                    module = resolve_layer(self.model, layer)
                    if any(m is module for m in head.modules()):
                        raise LayerError(f"layer {layer!r} is part of the Detect head; pick a module before it, "
                                         f"such as the neck's P3 output 'model.{min(head.f)}'")
                    # Parameters as constants: then a feature requires grad exactly when it depends on the leaf.
                    flags = [(p, p.requires_grad) for p in self.model.parameters()]
                    try:
                        for p, _ in flags:
                            p.requires_grad_(False)
                        with leaf_hook(module) as captured, torch.enable_grad():
                            out = self.model(x)
                    finally:
                        for p, flag in flags:
                            p.requires_grad_(flag)
                    if not captured:
                        raise LayerError(f"layer {layer!r} does not run in this model's forward pass")
                    if not all(f.requires_grad for f in fed[-1]):
                        raise LayerError(f"layer {layer!r} does not feed every level of the Detect head; pick a "
                                         f"module that all of them depend on, such as 'model.{min(head.f)}'")
        finally:
            handle.remove()
        y = out[0] if isinstance(out, (tuple, list)) else out
        return y.detach(), fed[-1], captured

    def _prepare(self, images: Tensor) -> tuple[Tensor, LetterboxGeometry]:
        return letterbox(images, self.imgsz, self.stride)

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        if isinstance(layer, str) and layer in ("fpn", "roi"):
            if layer == "roi":
                raise LayerError("layer 'roi' needs a two-stage detector, got a YOLO model")
            layer = None
        x, geometry = self._prepare(image[None])
        y, feats, captured = self._forward(x, layer)
        sizes = [int(f.shape[-2] * f.shape[-1]) for f in feats]
        with torch.no_grad():
            pred = y[0].T  # [A, 4 + nc]
            conf, labels = pred[:, 4:].max(1)
            keep = conf > self.score_threshold
            if self.classes is not None:
                keep &= torch.isin(labels, torch.tensor(self.classes, dtype=labels.dtype, device=labels.device))
            anchors = torch.where(keep)[0]
            if len(anchors) > MAX_NMS:
                anchors = anchors[conf[anchors].argsort(descending=True)[:MAX_NMS]]
            boxes = _xywh2xyxy(pred[anchors, :4])
            scores, labels = conf[anchors], labels[anchors]
            keep = self.select(boxes, scores, labels, self.iou_threshold, self.max_detections, candidates)
            anchors = anchors[keep]
            offsets = torch.tensor([0, *sizes], device=anchors.device).cumsum(0)
            levels = torch.searchsorted(offsets[1:], anchors, right=True)
            dets = Detections(geometry.to_original(boxes[keep]), scores[keep], labels[keep], levels,
                              anchors - offsets[levels])
        features = [f.detach() for f in feats]
        local = layer is None and self._receptive_radius() is not None
        if layer is None:
            leaves = [f.detach().requires_grad_(True) for f in features]
        else:
            leaves = [captured[-1]] if isinstance(captured[-1], Tensor) else list(captured[-1].values())
        state = {"features": features if layer is None else list(feats), "leaves": leaves, "local": local,
                 "per_level": layer is None}
        return Trace(dets, geometry, self, state)

    def select(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_detections: int,
               candidates: int | None) -> Tensor:
        """As ``non_max_suppression``: classes kept apart by offsetting boxes ``label * 7680`` pixels."""
        if candidates is not None:
            return super().select(boxes, scores, labels, iou_threshold, max_detections, candidates)
        from torchvision.ops import nms

        c = labels[:, None].to(boxes.dtype) * (0 if self.agnostic else MAX_WH)
        return nms(boxes + c, scores, iou_threshold)[:max_detections]

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        x, geometry = self._prepare(images)
        y, _, _ = self._forward(x, None)
        probs = y[:, 4:].transpose(1, 2)  # [B, A, L]
        k = min(max_candidates, probs.shape[1])
        top = probs.amax(-1).topk(k, dim=1).indices  # [B, k]
        b = torch.arange(len(top), device=top.device)[:, None]
        boxes = geometry.to_original(_xywh2xyxy(y[:, :4].transpose(1, 2)[b, top]))
        probs = probs[b, top]
        scores = probs
        if self.classes is not None:  # the labels detect() leaves out score 0
            allowed = torch.isin(torch.arange(probs.shape[-1], device=probs.device),
                                 torch.tensor(self.classes, dtype=torch.int64, device=probs.device))
            scores = torch.where(allowed, probs, torch.zeros_like(probs))
        return Candidates(boxes[:, :, None].expand(-1, -1, probs.shape[-1], -1), scores, probs, None,
                          torch.ones_like(top, dtype=torch.bool))

    # -- the differentiable attributes ---------------------------------------------------------------------------

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
               ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        st = trace.state
        head, features = self.head, st["features"]
        levels, indices, labels = detections.levels, detections.indices, detections.labels
        if len(levels) and int(levels.max()) >= len(features):
            raise ValueError(f"detection level out of range: this detector has {len(features)} levels")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < head.nc:
            raise ValueError(f"detection label out of range: this detector has {head.nc} classes")
        radius = self._receptive_radius() if st["local"] else None
        rows, groups, group_of = [], [], torch.empty_like(levels)
        with torch.enable_grad():
            for li, feature in enumerate(features):
                sel = torch.where(levels == li)[0]
                if len(sel) == 0:
                    continue
                h, w = feature.shape[-2:]
                if int(indices[sel].max()) >= h * w:
                    raise ValueError(f"detection index out of range on level {li} ({h * w} anchors)")
                if radius is not None:
                    for part, group, y in self._crops(li, feature, sel, indices, labels, radius, trace.geometry):
                        rows.append((part, y))
                        groups.append(group)
                        group_of[part] = len(groups) - 1
                    continue
                a = indices[sel]
                source = st["leaves"][li] if st["per_level"] else feature
                box = head.cv2[li](source).flatten(2)[0, :, a].T  # [K, 4 * reg_max]
                cls = head.cv3[li](source).flatten(2)[0, :, a].T  # [K, nc]
                rows.append((sel, self._attributes(box, cls, labels[sel], a, li, int(w), trace.geometry)))
            if rows:
                order = torch.cat([r[0] for r in rows])
                y = torch.cat([r[1] for r in rows])[torch.argsort(order)]
            else:
                y = features[0].new_zeros(0, 5)
        if radius is None:
            groups, group_of = self._leaf_groups(st["leaves"], levels, trace.geometry, st["per_level"])
        return y, groups, group_of

    def _attributes(self, box: Tensor, cls: Tensor, labels: Tensor, index: Tensor, level: int, width: int,
                    geometry: LetterboxGeometry) -> Tensor:
        """``Tensor[K, 5]`` (class probability, signed edges in original pixels) from K anchors' head outputs:
        ``box`` (``Tensor[K, 4 * reg_max]``) and ``cls`` (``Tensor[K, nc]``) logits, on level ``level`` of
        ``width`` cells at flat ``index``. The operations are the head's and ``non_max_suppression``'s."""
        head = self.head
        score = torch.sigmoid(cls.gather(1, labels[:, None])[:, 0])
        dist = head.dfl(box.T.contiguous()[None])[0].T  # [K, 4] (l, t, r, b) in cells
        point = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], 1).to(dist.dtype) + 0.5
        x1y1, x2y2 = point - dist[:, :2], point + dist[:, 2:]
        xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * head.stride[level].to(dist)
        boxes = geometry.to_original(_xywh2xyxy(xywh))
        return torch.cat([score[:, None], boxes * boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])], 1)

    def _crops(self, level: int, feature: Tensor, sel: Tensor, indices: Tensor, labels: Tensor, radius: int,
               geometry: LetterboxGeometry) -> Iterator[tuple[Tensor, FeatureGroup, Tensor]]:
        """Run the head's branches of ``level`` on the ``radius`` neighbourhood of each detection's cell only.

        The branches are chains of stride-1 "same" convolutions and per-position layers, so the output at a cell
        depends on the cells within ``radius`` alone; a crop clipped at the map's border keeps the convolutions'
        own zero padding there. Detections with equal crop shapes and centre offsets are batched; their crops
        are leaves whose rows are independent.
        """
        head = self.head
        h, w = feature.shape[-2:]
        pos = indices[sel]
        centre = torch.stack([torch.div(pos, w, rounding_mode="floor"), pos % w], 1)
        lo = (centre - radius).clamp_min(0)
        hi = torch.minimum(centre + radius + 1, torch.tensor([h, w], device=centre.device))
        keys = torch.cat([hi - lo, centre - lo], 1)
        for key in torch.unique(keys, dim=0):
            mine = (keys == key).all(1)
            part = sel[mine]
            windows = Windows(lo[mine], (int(key[0]), int(key[1])), (h, w))
            crops = windows.gather(feature.detach()).requires_grad_(True)
            k = torch.arange(len(part), device=part.device)
            box = head.cv2[level](crops)[k, :, key[2], key[3]]
            cls = head.cv3[level](crops)[k, :, key[2], key[3]]
            y = self._attributes(box, cls, labels[part], indices[part], level, int(w), geometry)
            yield part, CropGroup(crops, k, geometry, feature, windows), y

    def _leaf_groups(self, leaves: list[Tensor], levels: Tensor, geometry: LetterboxGeometry, per_level: bool
                     ) -> tuple[list[FeatureGroup], Tensor]:
        """One :class:`MapGroup` per leaf: each level's own, or the chosen layer's for every detection."""
        if per_level:
            chosen, group_of = leaves, levels.clone()
        elif len(leaves) == 1:
            chosen, group_of = leaves, torch.zeros_like(levels)
        else:
            raise LayerError(f"the chosen layer returns {len(leaves)} maps; pick a module that returns one tensor")
        groups: list[FeatureGroup] = []
        for g, leaf in enumerate(chosen):
            rows = torch.zeros(int((group_of == g).sum()), dtype=torch.int64, device=levels.device)
            groups.append(MapGroup(leaf, rows, geometry))
        return groups, group_of

    def _receptive_radius(self) -> int | None:
        """How many cells an output of the head sees in each direction, or ``None`` if the head is not local.

        Each branch (``cv2[i]``, ``cv3[i]``) must be a chain (``nn.Sequential``, Ultralytics ``Conv``/``DWConv``)
        of stride-1 convolutions with odd kernels and "same" zero padding, and per-position layers (batch norm in
        eval mode, activations); its radius is the sum of its convolutions' reaches.
        """
        head = self.head
        radius = 0
        for branch in (*head.cv2, *head.cv3):
            chain = []
            for m in branch.modules():
                if isinstance(m, nn.Sequential) or (type(m).__module__, type(m).__name__) in _CHAINS:
                    continue
                if list(m.children()):
                    return None
                chain.append(m)
            reach = receptive_radius(chain, _POINTWISE)
            if reach is None:
                return None
            radius = max(radius, reach)
        return radius


def _xywh2xyxy(x: Tensor) -> Tensor:
    """``ultralytics.utils.ops.xywh2xyxy``, out of place (the same operations, so the same values)."""
    xy, wh = x[..., :2], x[..., 2:] / 2
    return torch.cat([xy - wh, xy + wh], -1)


@contextmanager
def _kept_anchor_cache(head: nn.Module) -> Iterator[None]:
    """Restore the head's cached ``anchors``, ``strides`` and ``shape`` (set by its forward pass) on exit."""
    names = ("anchors", "strides", "shape")
    saved = {n: head.__dict__[n] for n in names if n in head.__dict__}
    try:
        yield
    finally:
        for n in names:
            if n in saved:
                head.__dict__[n] = saved[n]
            else:
                head.__dict__.pop(n, None)


def _ultralytics_class(model: object, module: str, name: str) -> bool:
    return any(c.__module__ == module and c.__name__ == name for c in type(model).__mro__)


def _detection_model(model: nn.Module) -> nn.Module:
    """The ``DetectionModel`` inside an ``ultralytics.YOLO`` object, or ``model`` itself."""
    if _ultralytics_class(model, "ultralytics.engine.model", "Model"):
        inner = model._modules.get("model")
        if not isinstance(inner, nn.Module):
            raise UnsupportedModelError(
                f"this YOLO object holds {type(inner).__name__}, not a PyTorch model (exported or remote weights?)")
        model = inner
    if not _ultralytics_class(model, "ultralytics.nn.tasks", "BaseModel"):
        raise UnsupportedModelError(f"expected an Ultralytics YOLO detection model, got {type(model).__name__}")
    return model


def _detect_head(model: nn.Module) -> nn.Module:
    """The model's ``Detect`` head; :class:`UnsupportedModelError` for any other head or an end-to-end one."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    kind = type(head).__name__
    if head is None or kind != "Detect" or type(head).__module__ != "ultralytics.nn.modules.head":
        raise UnsupportedModelError(
            f"unsupported Ultralytics model {type(model).__name__} with head {kind}; odam explains detection "
            "models with a Detect head and NMS (YOLOv8, YOLO11, YOLO26), not segmentation, pose, OBB, world, "
            "YOLOE, RT-DETR or YOLOv10 heads")
    if head.end2end or getattr(head, "xyxy", False):
        raise UnsupportedModelError(
            "unsupported end-to-end (NMS-free) inference: the Detect head uses its one-to-one branch; odam explains "
            "the one-to-many outputs NMS selects from: set model.end2end = False (Ultralytics' default for predict)")
    return head


def _names(model: nn.Module) -> tuple[str, ...] | None:
    names = getattr(model, "names", None)
    nc = int(model.model[-1].nc)
    if isinstance(names, dict) and all(i in names for i in range(nc)):
        return tuple(str(names[i]) for i in range(nc))
    if isinstance(names, (list, tuple)) and len(names) == nc:
        return tuple(str(n) for n in names)
    return None

