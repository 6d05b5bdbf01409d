"""Adapter for Hugging Face DETR (``transformers.DetrForObjectDetection``, transformers 5).

The detection pass runs the model's own ``forward`` on the pixels that ``DetrImageProcessor`` would make, and the
post-processing of ``DetrImageProcessor.post_process_object_detection``: a softmax over the classes and the
no-object class, the best class (no-object excluded) as label and score, the predicted ``(cx, cy, w, h)``
(fractions of the resized image) turned into ``xyxy`` pixels of the original image, and the queries scoring above
``threshold`` kept, in query order. DETR has no NMS. Each detection records ``levels = 0`` and
``indices = its query``.

Preprocessing, and how it compares with the processor. The image's size becomes what ``DetrImageProcessor``
makes it: the shortest edge ``shortest_edge`` (800) unless the longest would pass ``longest_edge`` (1333), rounded
as transformers rounds. An image whose values are all multiples of 1/255 (anything loaded from a file, a PIL image
or a uint8 array) is resized as the uint8 image it is, by the same torchvision call the processor makes on uint8
pixels, then normalised with the processor's fused arithmetic (``(x - 255 * mean) / (255 * std)``); any other
float image is resized in float (``F.interpolate(mode="bilinear", antialias=True)``) and normalised, as the
processor does with ``do_rescale=False``. A single image is never padded and its ``pixel_mask`` is all ones.

- Exactly equal: ``pixel_values`` and ``pixel_mask`` are bit-identical to those of ``DetrImageProcessor`` (the
  torchvision backend, transformers 5's default) run on the CPU on the same PIL image, or on the same float
  image with ``do_rescale=False``: difference 0.0 on 96x120, 300x200, 40x400, 128x160, 480x640 and 50x51 images
  (up- and downsampling, both size rules). ``detect`` then equals processor + model +
  ``post_process_object_detection`` bit for bit (difference 0.0 in boxes and scores on the same images; the
  tests allow 1e-4).
- Not exactly equal: ``DetrImageProcessorPil`` resizes with PIL, whose fixed-point filters round differently:
  its ``pixel_values`` differ from odam's (and from its torchvision twin's) by up to one grey level,
  ``1 / 255 / 0.224 = 0.0175`` (measured 0.0175 when downsampling 300x200, 40x400 and 50x51 images; 2.4e-7 when
  upsampling 96x120). On the tiny random DETR of the tests that moved scores by up to 0.0034 and boxes by up to
  0.38 pixels (not measured on a trained checkpoint). On a GPU, torchvision resizes uint8 through float32, so
  results may differ from the CPU's by a grey level in the same way; odam makes the same torchvision call on the
  image's device, as the processor does on its device (only the CPU was tested).

The explained feature map is, by default (``layer=None`` or ``"backbone"``), the backbone's last stage: the map
DETR's transformer reads, as in the paper (Fig. 3, App. A.5.8), at stride 32, with ``ceil(size / 32)`` cells
along each side of the resized image (DC5 checkpoints, whose last stage is dilated, have stride 16, which
``MapGroup`` infers from the map's size). ``layer="encoder"`` explains the transformer
encoder's output, reshaped to ``[1, d_model, h, w]`` on the same grid; any module of the backbone,
``input_projection`` or the encoder (an object or a dotted name) that returns a ``[1, C, h, w]`` map or a
``[1, h * w, C]`` sequence on the backbone's grid also works. Attention is global, so every detection depends on
the whole map: explainers take one backward pass per (detection, attribute).

To build a graph, the model's ``forward`` runs again with the chosen module's ``forward`` replaced, for that call
only, by one that returns the recorded output with the explained map as a leaf; modules before it that lie
outside it are skipped the same way (the CNN does not run again unless the chosen module is inside it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as tvF

from odam._patching import patch as _patch
from odam.detectors.base import (
    Candidates,
    DetectorAdapter,
    FeatureGroup,
    Geometry,
    LayerError,
    MapGroup,
    Trace,
    borrowed,
    resolve_layer,
)
from odam.structures import Detections

#: ``DetrImageProcessor``'s defaults.
SHORTEST_EDGE = 800
LONGEST_EDGE = 1333
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``post_process_object_detection``'s default threshold.
THRESHOLD = 0.5

_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, what DetrImageProcessor uses


def _resized_size(height: int, width: int, shortest_edge: int, longest_edge: int | None) -> tuple[int, int]:
    """``transformers.image_transforms.get_size_with_aspect_ratio``: the shortest edge becomes ``shortest_edge``
    unless the longest would pass ``longest_edge``; the other edge is truncated."""
    size, raw = shortest_edge, None
    if longest_edge is not None:
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * size > longest_edge:
            raw = longest_edge * lo / hi
            size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(size * height / width)), size
    return size, (int(raw * width / height) if raw is not None else int(size * width / height))


def _corners(boxes: Tensor, geometry: Geometry) -> Tensor:
    """``(cx, cy, w, h)`` fractions of the resized image (``Tensor[..., 4]``) to ``xyxy`` original pixels, with
    the arithmetic of ``post_process_object_detection``."""
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    H, W = geometry.original
    return corners * corners.new_tensor([W, H, W, H])


def _setting(size: object, key: str) -> int | None:
    value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
    return None if value is None else int(value)


class DetrAdapter(DetectorAdapter):
    """DETR from Hugging Face ``transformers`` (``DetrForObjectDetection``, any backbone).

    Args:
        model: a ``transformers.DetrForObjectDetection``.
        categories: class names indexed by label; ``None`` takes them from ``model.config.id2label``. DETR's labels
            index ``id2label`` directly (its no-object class is the last logit, never a label), so unlike
            torchvision's there is no ``"__background__"`` at 0 (COCO checkpoints have ``"N/A"`` there).
        threshold: keep queries whose score is above this, as ``post_process_object_detection(threshold=...)``
            (default 0.5, its default).
        shortest_edge, longest_edge, image_mean, image_std: preprocessing; ``None`` takes them from ``processor``
            when given, else ``DetrImageProcessor``'s defaults (800, 1333, ImageNet mean and std).
        processor: a ``DetrImageProcessor`` (or ``DetrImageProcessorPil``) whose settings to follow.

    Example:
        >>> import torch, odam
        >>> from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
        >>> backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
        ...                         layer_type="basic", out_features=["stage4"])
        >>> config = DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
        ...                     encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
        ...                     decoder_attention_heads=2, num_queries=4, num_labels=2)
        >>> model = DetrForObjectDetection(config).eval()
        >>> detector = odam.detectors.detr.DetrAdapter(model, threshold=0.0, shortest_edge=64, longest_edge=96)
        >>> explanation = odam.ODAM(detector).explain(torch.rand(3, 48, 64), targets=("score", "left"))
        >>> tuple(explanation.maps.shape), detector.categories
        ((4, 2, 48, 64), ('LABEL_0', 'LABEL_1'))
    """

    named_layers = ("backbone", "encoder")
    default_layer = "backbone"

    def __init__(self, model: nn.Module, categories: tuple[str, ...] | None = None,
                 *, threshold: float = THRESHOLD,
                 shortest_edge: int | None = None, longest_edge: int | None = None,
                 image_mean: tuple[float, float, float] | None = None,
                 image_std: tuple[float, float, float] | None = None, processor: object | None = None) -> None:
        if not self.accepts(model):
            raise TypeError(f"DetrAdapter needs a transformers DetrForObjectDetection, got {type(model).__name__}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.num_labels = int(model.class_labels_classifier.out_features) - 1
        if categories is None:
            id2label = getattr(model.config, "id2label", None) or {}
            categories = tuple(str(id2label.get(i, id2label.get(str(i), i))) for i in range(self.num_labels))
        super().__init__(model, categories)
        self.threshold = float(threshold)
        defaults = self._from_processor(processor) if processor is not None else {}
        given = {"shortest_edge": shortest_edge, "longest_edge": longest_edge, "image_mean": image_mean,
                 "image_std": image_std}
        fallback = {"shortest_edge": SHORTEST_EDGE, "longest_edge": LONGEST_EDGE, "image_mean": IMAGENET_MEAN,
                    "image_std": IMAGENET_STD}
        chosen = {k: v if v is not None else defaults.get(k, fallback[k]) for k, v in given.items()}
        self.shortest_edge = int(chosen["shortest_edge"])
        self.longest_edge = None if chosen["longest_edge"] is None else int(chosen["longest_edge"])
        self.image_mean = tuple(float(v) for v in chosen["image_mean"])
        self.image_std = tuple(float(v) for v in chosen["image_std"])
        self.resize = bool(defaults.get("resize", True))
        if self.shortest_edge < 1 or (self.longest_edge is not None and self.longest_edge < self.shortest_edge):
            raise ValueError(f"need 1 <= shortest_edge <= longest_edge, got {self.shortest_edge} and "
                             f"{self.longest_edge}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values (std > 0), got {self.image_mean} and "
                             f"{self.image_std}")

    @staticmethod
    def accepts(model: object) -> bool:
        """Whether ``model`` is a ``transformers`` ``DetrForObjectDetection`` (found without importing transformers)."""
        return any(c.__name__ == "DetrForObjectDetection" and c.__module__.startswith("transformers")
                   for c in type(model).__mro__)

    @staticmethod
    def _from_processor(processor: object) -> dict:
        """The settings of a ``DetrImageProcessor`` that this adapter follows; ``ValueError`` for others."""
        out: dict = {"resize": bool(getattr(processor, "do_resize", True))}
        if getattr(processor, "pad_size", None) is not None:
            raise ValueError("processors with a fixed pad_size are not supported; odam never pads a single image")
        if not getattr(processor, "do_rescale", True) or abs(getattr(processor, "rescale_factor", 1 / 255)
                                                             - 1 / 255) > 1e-12:
            raise ValueError("the processor must rescale by 1/255: odam's images are floats in [0, 1]")
        resample = getattr(processor, "resample", None)
        if out["resize"] and resample is not None and getattr(resample, "value", resample) not in (_BILINEAR,
                                                                                                  "bilinear"):
            raise ValueError(f"only bilinear resizing is supported, the processor uses resample={resample!r}")
        size = getattr(processor, "size", None)
        if out["resize"]:
            shortest, longest = _setting(size, "shortest_edge"), _setting(size, "longest_edge")
            if shortest is None:
                raise ValueError(f"only processor sizes with a shortest_edge are supported, got {size}")
            out |= {"shortest_edge": shortest, "longest_edge": longest}
        if getattr(processor, "do_normalize", True):
            out |= {"image_mean": tuple(processor.image_mean), "image_std": tuple(processor.image_std)}
        else:
            out |= {"image_mean": (0.0, 0.0, 0.0), "image_std": (1.0, 1.0, 1.0)}
        return out

    @property
    def score_threshold(self) -> float:
        return self.threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"threshold must be in [0, 1), got {value!r}")
        self.threshold = float(value)

    @property
    def max_detections(self) -> int:
        """One detection per query at most."""
        return int(self.model.config.num_queries)

    def _prepare(self, images: Tensor) -> tuple[Tensor, Tensor, Geometry]:
        """``pixel_values`` (``Tensor[B, 3, h, w]``), ``pixel_mask`` (``Tensor[B, h, w]``, ones) and the geometry of
        same-size images (``Tensor[B, 3, H, W]`` in [0, 1]), as ``DetrImageProcessor`` makes them: from the uint8
        image when every value is a multiple of 1/255, else from the float image (with ``do_rescale=False``); each
        image of a batch is judged on its own, so it gets the same pixels as when it is alone."""
        H, W = int(images.shape[-2]), int(images.shape[-1])
        size = _resized_size(H, W, self.shortest_edge, self.longest_edge) if self.resize else (H, W)
        levels = images * 255
        eight_bit = ((levels - levels.round()).abs() <= 1e-3).flatten(1).all(1)  # decided image by image
        x = images.new_empty(len(images), 3, *size)
        for flag in (True, False):
            sel = torch.where(eight_bit == flag)[0]
            if len(sel):
                x[sel] = self._normalised(images[sel], levels[sel], size, flag)
        mask = torch.ones(len(x), *size, dtype=torch.int64, device=x.device)
        return x, mask, Geometry((H, W), size, size)

    def _normalised(self, images: Tensor, levels: Tensor, size: tuple[int, int], eight_bit: bool) -> Tensor:
        H, W = int(images.shape[-2]), int(images.shape[-1])
        if eight_bit:
            # The processor's uint8 path: torchvision resizes uint8 pixels (rounding the result), then rescaling
            # and normalising are fused into one normalisation by 255 * mean and 255 * std.
            x = levels.round().to(torch.uint8)
            if size != (H, W):
                x = tvF.resize(x, list(size), interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
            x = x.to(images.dtype)
            mean = torch.tensor(self.image_mean, device=x.device) * (1.0 / (1 / 255))
            std = torch.tensor(self.image_std, device=x.device) * (1.0 / (1 / 255))
        else:
            x = images
            if size != (H, W):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            mean = torch.as_tensor(self.image_mean, device=x.device)
            std = torch.as_tensor(self.image_std, device=x.device)
        return (x - mean.to(x.dtype)[:, None, None]) / std.to(x.dtype)[:, None, None]

    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> object:
        # Asking for no attentions or hidden states keeps transformers from installing its capturing hooks.
        return self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_attentions=False,
                          output_hidden_states=False, return_dict=True)

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        pixel_values, pixel_mask, geometry = self._prepare(images)
        out = self._forward(pixel_values, pixel_mask)
        probs = torch.softmax(out.logits, -1)  # [B, Q, L + 1], no-object last
        boxes = _corners(out.pred_boxes, geometry)  # [B, Q, 4]
        if probs.shape[1] > max_candidates:  # the best queries, kept in query order
            top = probs[..., :-1].amax(-1).topk(max_candidates, dim=1).indices.sort(1).values
            b = torch.arange(len(top), device=top.device)[:, None]
            probs, boxes = probs[b, top], boxes[b, top]
        scores = probs[..., :-1]
        return Candidates(boxes[:, :, None].expand(-1, -1, scores.shape[-1], -1), scores, probs, None,
                          torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device))

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        pixel_values, pixel_mask, geometry = self._prepare(image[None])
        kind, module = self._layer(layer)
        backbone = self.model.model.backbone
        recorded: dict[str, list] = {"backbone": [], "module": []}
        watched = [(backbone, "backbone"), (module, "module")] if module is not backbone else [(backbone, "module")]
        with ExitStack() as stack, torch.no_grad():
            for m, key in watched:
                stack.callback(m.register_forward_hook(lambda _m, _i, o, key=key: recorded[key].append(o)).remove)
            out = self._forward(pixel_values, pixel_mask)
        if len(recorded["module"]) != 1:
            why = "is not used by" if not recorded["module"] else "runs more than once in"
            raise LayerError(f"layer {_name(layer)} {why} this model's forward pass; pick one that runs once")
        features = recorded["backbone"][0] if recorded["backbone"] else recorded["module"][0]
        grid = tuple(features[-1][0].shape[-2:])
        explained, replace = self._explained(kind, recorded["module"][0], grid, layer)
        probs = torch.softmax(out.logits[0], -1)
        scores, labels = probs[:, :-1].max(-1)
        boxes = _corners(out.pred_boxes[0], geometry)
        keep = torch.where(scores > self.threshold)[0]
        if candidates is not None:  # DETR has no NMS: its candidates are the queries above the threshold
            keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices[:candidates]]
        dets = Detections(boxes[keep], scores[keep], labels[keep], torch.zeros_like(keep), keep)
        inside = any(m is module for m in backbone.modules())
        state = {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "module": module, "replace": replace,
                 "map": explained, "features": None if inside else features, "num_queries": int(probs.shape[0])}
        return Trace(dets, geometry, self, state)

    def _layer(self, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
        """``(kind, module)``: ``"backbone"`` (its last map), ``"encoder"`` or ``"module"`` (any other)."""
        detr = self.model.model
        if layer is None or (isinstance(layer, str) and layer == "backbone"):
            return "backbone", detr.backbone
        if isinstance(layer, str) and layer == "encoder":
            return "encoder", detr.encoder
        module = resolve_layer(self.model, layer)
        if module is detr.backbone:
            return "backbone", module
        if module is detr.encoder:
            return "encoder", module
        grid = (detr.backbone, detr.input_projection, detr.encoder)
        if not any(m is module for part in grid for m in part.modules()):
            raise LayerError(f"layer {_name(layer)} is not on the image's grid; pick a module of the backbone, "
                             "input_projection or the encoder")
        return "module", module

    @staticmethod
    def _explained(kind: str, output: object, grid: tuple[int, int], layer: object
                   ) -> tuple[Tensor, Callable[[Tensor], object]]:
        """The explained map (``Tensor[1, C, h, w]``) in the chosen module's output, and how to rebuild that output
        with a leaf in place of the map."""
        if kind == "backbone":  # [(feature map, mask)] per stage, the transformer reads the last
            *rest, (last, mask) = output
            return last, lambda leaf: [*rest, (leaf, mask)]
        if kind == "encoder":
            seq = output.last_hidden_state
            return _on_grid(seq, grid), lambda leaf: type(output)(last_hidden_state=leaf.flatten(2).transpose(1, 2))
        if not isinstance(output, Tensor):
            raise LayerError(f"layer {_name(layer)} returns {type(output).__name__}; pick a module that returns a "
                             "tensor")
        if output.ndim == 4 and output.shape[0] == 1:
            return output, lambda leaf: leaf
        if output.ndim == 3 and output.shape[:2] == (1, grid[0] * grid[1]):
            return _on_grid(output, grid), lambda leaf: leaf.flatten(2).transpose(1, 2)
        raise LayerError(f"layer {_name(layer)} returns a tensor of shape {tuple(output.shape)}; pick one that returns "
                         f"[1, C, h, w] or [1, {grid[0] * grid[1]}, C] (the backbone's {grid[0]}x{grid[1]} grid)")

    @contextmanager
    def _replaced(self, state: dict, leaf: Tensor) -> Iterator[None]:
        """Inside the block, the chosen module returns its recorded output with ``leaf`` as the explained map, and
        the backbone (unless the module is inside it) its recorded output."""
        output = state["replace"](leaf)
        with ExitStack() as undo:  # patches undone in reverse order, also on an error
            if state["features"] is not None and state["module"] is not self.model.model.backbone:
                features = state["features"]
                undo.callback(_patch(self.model.model.backbone, "forward", lambda *a, **k: features))
            undo.callback(_patch(state["module"], "forward", lambda *a, **k: output))
            yield

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
               ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        st = trace.state
        idx, labels = detections.indices, detections.labels
        if len(idx) and int(idx.max()) >= st["num_queries"]:
            raise ValueError(f"detection index out of range: this model has {st['num_queries']} queries")
        if len(labels) and int(labels.max()) >= self.num_labels:
            raise ValueError(f"detection label out of range: this model has {self.num_labels} labels")
        leaf = st["map"].detach().requires_grad_(True)
        with borrowed(self.model), torch.enable_grad(), self._replaced(st, leaf):
            self.model.eval()
            out = self._forward(st["pixel_values"], st["pixel_mask"])
            k = torch.arange(len(idx), device=idx.device)
            score = torch.softmax(out.logits[0, idx], -1)[k, labels]
            edges = _corners(out.pred_boxes[0, idx], trace.geometry) * leaf.new_tensor([-1.0, -1.0, 1.0, 1.0])
            y = torch.cat([score[:, None], edges], 1)
        rows = torch.zeros(len(idx), dtype=torch.int64, device=idx.device)
        return y, [MapGroup(leaf, rows, trace.geometry)], rows.clone()


def _on_grid(seq: Tensor, grid: tuple[int, int]) -> Tensor:
    """A sequence ``Tensor[1, h * w, C]`` as the map ``Tensor[1, C, h, w]``."""
    return seq.transpose(1, 2).reshape(seq.shape[0], seq.shape[2], *grid)


def _name(layer: object) -> str:
    return repr(layer) if isinstance(layer, str) else type(layer).__name__
