"""The contract between detector adapters and explainers.

An adapter runs the user's detector once and returns a :class:`Trace`: the detections, and for any subset of
them a differentiable graph from *feature tensors* to their attributes (score and box edges). Explainers only
see this contract, so a new model family needs a new adapter and nothing else.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import chain

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odam._image import load_image
from odam.structures import TARGETS, Detections

ImageLike = object  # a Tensor[3, H, W], PIL image, HxWx3 uint8 array or path; see odam.load_image


class LayerError(ValueError):
    """The chosen ``layer`` cannot be explained on this detector: the same for every image."""


@dataclass(frozen=True)
class Geometry:
    """How the model saw the image: ``original`` (H, W) was resized to ``resized`` and zero-padded to ``padded``."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]

    def to_model(self, boxes: Tensor) -> Tensor:
        """Boxes (``Tensor[K, 4]``) from original-image pixels to the model's resized-image pixels."""
        sy = self.resized[0] / self.original[0]
        sx = self.resized[1] / self.original[1]
        return boxes * boxes.new_tensor([sx, sy, sx, sy])

    def to_original(self, boxes: Tensor) -> Tensor:
        """Boxes (``Tensor[..., 4]``) from the model's resized-image pixels back to original-image pixels, with
        torchvision's ``resize_boxes`` arithmetic (so torchvision detectors' boxes come out bit for bit)."""
        from torchvision.models.detection.transform import resize_boxes

        return resize_boxes(boxes.reshape(-1, 4), self.resized, self.original).view(boxes.shape)

    def input_pixels(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32
                     ) -> tuple[Tensor, Tensor]:
        """Where the centre of each original pixel lands on the model's input: ``(ys [H], xs [W])`` in
        model-input pixel indices (input pixel ``i`` spans ``[i - 0.5, i + 0.5]``), through the resize
        (half-pixel centres, as ``F.interpolate(..., align_corners=False)``)."""
        H, W = self.original
        ys = (torch.arange(H, device=device, dtype=dtype) + 0.5) * (self.resized[0] / H) - 0.5
        xs = (torch.arange(W, device=device, dtype=dtype) + 0.5) * (self.resized[1] / W) - 0.5
        return ys, xs


class FeatureGroup(abc.ABC):
    """Detections whose attributes are differentiated with respect to the same tensor ``input``.

    ``input`` is a leaf tensor with ``requires_grad``. Detection ``k`` of the group uses row ``rows[k]`` of it.
    When ``rowwise`` is true, row ``r`` of ``input`` influences only the detection that uses row ``r``, so one
    backward pass of a sum yields every detection's gradient. The *explained map* ``A`` may differ from
    ``input``: :meth:`pullback` carries a gradient from ``input`` to ``A`` (e.g. the adjoint of RoIAlign).
    """

    input: Tensor
    rows: Tensor
    rowwise: bool = False

    @abc.abstractmethod
    def features(self, rows: Tensor) -> Tensor:
        """The explained feature map ``A`` for these rows: ``Tensor[B or 1, C, h, w]``, detached."""

    def pullback(self, grads: Tensor, rows: Tensor) -> Tensor:
        """Gradients w.r.t. ``A`` (``Tensor[B, C, h, w]``) from gradients w.r.t. ``input[rows]``."""
        return grads

    @abc.abstractmethod
    def cells(self, boxes: Tensor, rows: Tensor) -> Tensor:
        """``Tensor[B]``: the geometric-mean size of each box (original pixels) in cells of ``A``."""

    @abc.abstractmethod
    def to_image(self, maps: Tensor, rows: Tensor) -> Tensor:
        """Place maps on ``A``'s grid (``Tensor[B, h, w]``) onto the original image: ``Tensor[B, H, W]``."""

    def item_numel(self) -> int:
        """About how many elements one (detection, attribute) item occupies on the explained grid."""
        return self.features(self.rows[:1]).numel()

    def weighted(self, grads: Tensor, rows: Tensor, smooth: Callable[[Tensor], Tensor] | None, radius: int
                 ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``sum_k smooth(dY/dA_k) * A_k`` on a grid of ``A`` (``Tensor[B, h, w]``), and how to place such maps.

        ``grads`` are w.r.t. ``input[rows]``; ``smooth`` acts on ``Tensor[B, *, h, w]`` channel by channel and
        spreads a value at most ``radius`` cells. The default works on the whole map; groups whose gradients
        have a small support override this to work on a window around it, with the same result.
        """
        g = self.pullback(grads, rows)
        if smooth is not None:
            g = smooth(g)
        return (g * self.features(rows)).sum(1), lambda maps: self.to_image(maps, rows)


class MapGroup(FeatureGroup):
    """A whole feature map ``[1, C, h, w]`` covering the padded model input with a power-of-two stride.

    Cell ``(i, j)`` is centred on model-input pixel ``(i * stride + centre[0], j * stride + centre[1])``
    (pixel indices): where the network centres it, which the adapter declares. ``centre=0`` (the default) is
    the centre of a stack of stride-2 convolutions and pools with "same" padding (odd kernel ``k``, padding
    ``(k - 1) / 2``), such as every torchvision backbone body: each such layer keeps a cell on the input pixel
    under its kernel's middle (FPN levels too: see ``odam.detectors.torchvision.fpn_centres``); docs/ODAM.md
    has the measurements.

    Args:
        centre: the offset ``c`` in model-input pixels, one number or ``(c_y, c_x)``.
    """

    def __init__(self, input: Tensor, rows: Tensor, geometry: Geometry, explained: Tensor | None = None,
                 rowwise: bool = False, centre: float | tuple[float, float] = 0.0) -> None:
        self.input = input
        self.rows = rows
        self.rowwise = rowwise
        self.geometry = geometry
        #: the explained map ``A`` (``Tensor[1, C, h, w]``); ``input`` unless another is given
        self.explained = input if explained is None else explained
        h, w = self.explained.shape[-2:]
        self.stride = (_infer_stride(geometry.padded[0], h), _infer_stride(geometry.padded[1], w))
        cy, cx = (centre, centre) if isinstance(centre, int | float) else centre
        self.centre = (float(cy), float(cx))

    def features(self, rows: Tensor) -> Tensor:
        return self.explained.detach()[:1]

    def cells(self, boxes: Tensor, rows: Tensor) -> Tensor:
        b = self.geometry.to_model(boxes)
        return torch.sqrt((b[:, 2] - b[:, 0]).clamp_min(0) / self.stride[1]
                          * (b[:, 3] - b[:, 1]).clamp_min(0) / self.stride[0])

    def to_image(self, maps: Tensor, rows: Tensor) -> Tensor:
        h, w = maps.shape[-2:]
        H, W = self.geometry.original
        # original pixel centre -> model-input pixel -> cell coordinate (cell j at j) -> grid_sample's [-1, 1]
        ys, xs = self.geometry.input_pixels(maps.device, maps.dtype)
        gy = (2 * (ys - self.centre[0]) / self.stride[0] + 1) / h - 1
        gx = (2 * (xs - self.centre[1]) / self.stride[1] + 1) / w - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
        grid = grid.expand(maps.shape[0], H, W, 2)
        return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[:, 0]


@dataclass(frozen=True)
class Windows:
    """Equal-size windows on an ``h x w`` grid, one per item, each with its own top-left cell ``origin``."""

    origin: Tensor  # [B, 2] (y, x)
    size: tuple[int, int]
    grid: tuple[int, int]

    @classmethod
    def covering(cls, lo: Tensor, hi: Tensor, grid: tuple[int, int]) -> Windows:
        """The smallest common-size windows, inside the grid, holding cells ``lo <= (y, x) < hi`` (``[B, 2]``)."""
        h, w = grid
        extent = (hi - lo).amax(0) if len(lo) else lo.new_ones(2)
        size = (min(h, int(extent[0])), min(w, int(extent[1])))
        limit = torch.tensor([h - size[0], w - size[1]], device=lo.device, dtype=lo.dtype)
        return cls(torch.minimum(lo.clamp_min(0), limit).to(torch.int64), size, grid)

    def index(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(items [B, 1, 1], ys [B, h, 1], xs [B, 1, w])``: broadcastable indices of every window's cells in the
        grid, for ``grid[items, ys, xs]`` (what :meth:`gather` and :meth:`scatter` use)."""
        ys = self.origin[:, :1] + torch.arange(self.size[0], device=self.origin.device)
        xs = self.origin[:, 1:] + torch.arange(self.size[1], device=self.origin.device)
        items = torch.arange(len(self.origin), device=self.origin.device)
        return items[:, None, None], ys[:, :, None], xs[:, None, :]

    def gather(self, grid: Tensor) -> Tensor:
        """``Tensor[B, C, *size]`` cut from ``grid`` (``Tensor[1 or B, C, h, w]``)."""
        items, ys, xs = self.index()
        source = grid.permute(0, 2, 3, 1)  # [1 or B, h, w, C]
        items = items if grid.shape[0] > 1 else torch.zeros_like(items)
        return source[items, ys, xs].permute(0, 3, 1, 2)

    def scatter(self, values: Tensor) -> Tensor:
        """Zeros of shape ``[B, (C,) h, w]`` with ``values`` (``Tensor[B, (C,) *size]``) in each window."""
        if values.ndim == 4:
            out = values.new_zeros(len(values), *self.grid, values.shape[1])
            out[self.index()] = values.permute(0, 2, 3, 1)
            return out.permute(0, 3, 1, 2)
        out = values.new_zeros(len(values), *self.grid)
        out[self.index()] = values
        return out

    def __getitem__(self, rows: Tensor) -> Windows:
        return Windows(self.origin[rows], self.size, self.grid)


def _infer_stride(padded: int, size: int) -> float:
    # Levels made by stride-2 convolutions have ceil(padded / stride) cells, so the stride is the power of two
    # at or just above padded / size (exact when the padded size is a multiple of the stride).
    return float(2 ** math.ceil(math.log2(padded / size) - 1e-9))


@dataclass
class Trace:
    """One forward pass of a detector on one image: what :meth:`DetectorAdapter.run` returns.

    Attributes:
        detections: what the detector returns with its own thresholds (or its candidates before NMS), with
            provenance.
        geometry: how the model resized the image.
        adapter: the adapter that made the pass; :meth:`graph` asks it for the attributes.
        state: whatever the adapter's :meth:`~DetectorAdapter.attributes` needs, typically the explained
            feature maps as leaf tensors that require grad. Only the adapter that wrote it reads it.
    """

    detections: Detections
    geometry: Geometry
    adapter: DetectorAdapter
    state: dict

    def graph(self, detections: Detections, *, frozen_norm: bool = False
              ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        """Differentiable attributes of ``detections`` (which must carry provenance).

        ``frozen_norm=True`` holds the statistics of normalisation layers that pool over positions (FCOS's
        GroupNorm) at their values in this pass, as constants: the attributes are unchanged, but their
        gradients lose the path through those statistics, and a head that was global becomes local (fast,
        batched crops). Adapters without such layers ignore it.

        Returns:
            ``(Y, groups, group_of)``: ``Y`` is ``Tensor[K, 5]`` with columns :data:`odam.TARGETS`;
            ``groups`` the feature groups; ``group_of`` (``Tensor[K]``) the group of each detection, whose
            ``rows`` lists, in order, the row each of its detections uses.
        """
        if not detections.has_provenance:
            raise ValueError(
                "detections must come from detect() (they record the feature level and index they came from)"
            )
        model = self.adapter.model
        with borrowed(model):  # in eval mode, as in the pass that found the detections; restored on exit
            model.eval()
            return self.adapter.attributes(self, detections, frozen_norm)


@dataclass(frozen=True)
class Candidates:
    """Every scored box of a batch of images before non-maximum suppression: one row per anchor (one-stage
    detectors, the ``max_candidates`` highest-scoring per image) or per proposal (two-stage detectors).

    Attributes:
        boxes: ``Tensor[B, M, L, 4]``, the box each candidate predicts for each label, in original-image
            pixels (one-stage detectors predict one box for every label).
        scores: ``Tensor[B, M, L]``, the detector's own score for each label (what ``detect`` thresholds); 0 for
            the background label of two-stage detectors.
        probs: ``Tensor[B, M, P]``, the class-probability vector: per-class sigmoids for one-stage
            detectors, the softmax over classes and background for two-stage ones.
        objectness: ``Tensor[B, M]`` for detectors with a class-agnostic factor in their score (FCOS's
            centre-ness), else ``None``.
        valid: ``Tensor[B, M]`` bool; ``False`` marks padding where images have fewer candidates.
    """

    boxes: Tensor
    scores: Tensor
    probs: Tensor
    objectness: Tensor | None
    valid: Tensor

    def tracked_scores(self, box: Tensor, label: int, iou_threshold: float = 0.5) -> Tensor:
        """``Tensor[B]``: per image, the best score for ``label`` among candidates whose ``label`` box has
        IoU > ``iou_threshold`` with ``box`` (``Tensor[4]``), or 0 when there is none.

        This is the score that Deletion and Insertion follow while pixels change.
        """
        iou = paired_iou(self.boxes[:, :, label], box)
        ok = self.valid & (iou > iou_threshold)
        return torch.where(ok, self.scores[:, :, label], torch.zeros_like(iou)).amax(1)


def image_source(image: Tensor) -> tuple[int, int, float]:
    """``(height, width, checksum)`` of an image as :func:`odam.load_image` returns it: what
    :attr:`Detections.source` records, so that explainers can refuse detections of another image."""
    return int(image.shape[-2]), int(image.shape[-1]), float(image.detach().double().sum())


def paired_iou(boxes: Tensor, box: Tensor) -> Tensor:
    """Element-wise IoU of ``boxes`` (``Tensor[..., 4]``) with ``box`` (``Tensor[..., 4]``, broadcast); 0 where
    the union is empty.

    Example:
        >>> paired_iou(torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]), torch.tensor([0.0, 0, 2, 1])).tolist()
        [0.5, 0.5]
    """
    box = box.to(boxes)
    lt = torch.maximum(boxes[..., :2], box[..., :2])
    rb = torch.minimum(boxes[..., 2:], box[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)
    union = area + (box[..., 2:] - box[..., :2]).clamp_min(0).prod(-1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


class DetectorAdapter(abc.ABC):
    """A detector behind one interface: :meth:`detect`, :meth:`trace` and :meth:`candidates`.

    An adapter for a new family implements :meth:`run` and :meth:`attributes` (docs/ADAPTERS.md), and where it
    can :meth:`score_candidates`, :meth:`embed`, :attr:`score_threshold` and :attr:`max_detections`. The wrapped
    model is borrowed: every call leaves its hooks, train/eval modes and ``requires_grad`` flags as they were,
    also when it raises.
    """

    #: Attribute names this adapter can explain.
    targets: tuple[str, ...] = TARGETS
    #: ``layer=`` names this adapter understands besides the model's module names (``"fpn"``, ``"roi"``...).
    named_layers: tuple[str, ...] = ()
    #: The one of :attr:`named_layers` that means the same as ``layer=None`` (the default maps), if any.
    default_layer: str | None = None

    def __init__(self, model: nn.Module, categories: tuple[str, ...] | None = None) -> None:
        self.model = model
        #: class names indexed by label, or ``None``; as in torchvision, models with a background class have
        #: ``"__background__"`` at index 0.
        self.categories = None if categories is None else tuple(categories)

    def check_layer(self, layer: str | nn.Module | None) -> None:
        """Raise :class:`LayerError` for a ``layer`` this adapter cannot explain, without running the model: one
        that is neither ``None``, one of :attr:`named_layers` nor a module of the model.

        Example:
            >>> import torchvision, odam
            >>> model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
            >>> odam.wrap_detector(model).check_layer("neck")
            Traceback (most recent call last):
            ...
            odam.detectors.base.LayerError: model has no module named 'neck'; OneStageAdapter also takes 'fpn'
        """
        if layer is None or (isinstance(layer, str) and layer in self.named_layers):
            return
        try:
            resolve_layer(self.model, layer)
        except LayerError as err:
            if not self.named_layers:
                raise
            raise LayerError(f"{err}; {type(self).__name__} also takes {', '.join(map(repr, self.named_layers))}"
                             ) from None

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (its buffers' device for a model without parameters; else the CPU)."""
        tensor = next(chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type images are given to the model in: its first floating-point parameter's or
        buffer's, else float32."""
        for tensor in chain(self.model.parameters(), self.model.buffers()):
            if tensor.dtype.is_floating_point:
                return tensor.dtype
        return torch.float32

    @property
    def score_threshold(self) -> float:
        """The score below which the detector drops a candidate."""
        raise NotImplementedError(f"{type(self).__name__} does not report its score threshold")

    @property
    def max_detections(self) -> int | None:
        """At most this many detections per image (the model's own cap, e.g. torchvision's
        ``detections_per_img``); ``None`` for no cap. What a replacement NMS keeps at most."""
        return None

    def detect(self, image: ImageLike) -> Detections:
        """Detect objects in one image; boxes are in pixels of ``image``.

        Example:
            >>> import torch, torchvision, odam
            >>> model = torchvision.models.detection.fcos_resnet50_fpn(
            ...     weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)
            >>> dets = odam.wrap_detector(model).detect(torch.rand(3, 48, 64))
            >>> dets.boxes.shape[-1]
            4
        """
        return self.trace(image).detections

    def trace(self, image: ImageLike, layer: str | nn.Module | None = None, *, candidates: bool = False,
              max_candidates: int = 1000) -> Trace:
        """Run the detector once and keep what explainers need.

        Args:
            image: a ``Tensor[3, H, W]`` in [0, 1], PIL image, ``HxWx3`` uint8 array or path (see
                :func:`odam.load_image`).
            layer: the explained feature map: ``None`` for the adapter's default, one of :attr:`named_layers`,
                or a module of the model (object or dotted name).
            candidates: ``True`` returns the pass before the detector's NMS: its detections are the
                ``max_candidates`` best-scoring candidates above the score threshold, by descending score, with
                provenance (what a replacement NMS such as :class:`odam.nms.Suppressed` starts from).

        Example:
            >>> import torch, torchvision, odam
            >>> model = torchvision.models.detection.fcos_resnet50_fpn(
            ...     weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64, score_thresh=0.0)
            >>> trace = odam.wrap_detector(model).trace(torch.rand(3, 48, 64), candidates=True, max_candidates=7)
            >>> len(trace.detections)
            7
        """
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"max_candidates must be a positive int, got {max_candidates!r}")
        x = load_image(image)
        source = image_source(x)
        if isinstance(image, Tensor) and image.dtype == torch.float64:
            # load_image checked it and returns float32; a float64 model sees the image it was given, not a
            # rounded copy (rounding to float32 moved a float64 Grad-CAM++ map by 1% near Eq. 19's pole).
            x = image
        x = x.to(self.device, self.dtype)
        with borrowed(self.model):
            self.model.eval()
            trace = self.run(x, layer, max_candidates if candidates else None)
        trace.detections = replace(trace.detections, source=source)
        return trace

    def embeddings(self, trace: Trace, detections: Detections) -> Tensor:
        """``Tensor[N, E]``: FeatureNMS's embedding of each detection (which must carry provenance), from the
        model's ``embedding_head`` (see ``odam train --feature-embedding``)."""
        if not isinstance(getattr(self.model, "embedding_head", None), nn.Module):
            raise ValueError("feature-nms needs a model with an embedding head; train one with "
                             "'odam train --feature-embedding'")
        with borrowed(self.model), torch.no_grad():
            self.model.eval()
            return self.embed(trace, detections)

    def candidates(self, images: Tensor, max_candidates: int = 1000) -> Candidates:
        """Score a batch of same-size images (``Tensor[B, 3, H, W]`` in [0, 1]) in one pass, before NMS.

        The whole batch goes through the model at once (resizing included; for two-stage models, the region
        proposal network's post-processing too: :func:`odam.detectors.batched_rpn.batched_proposals`). Runs
        without gradients.

        Example:
            >>> import torch, torchvision, odam
            >>> model = torchvision.models.detection.fcos_resnet50_fpn(
            ...     weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)
            >>> c = odam.wrap_detector(model).candidates(torch.rand(2, 3, 48, 64), max_candidates=10)
            >>> tuple(c.boxes.shape), tuple(c.scores.shape)
            ((2, 10, 3, 4), (2, 10, 3))
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be positive, got {max_candidates}")
        x = images.to(self.device, self.dtype)
        with borrowed(self.model), torch.no_grad():
            self.model.eval()
            return self.score_candidates(x, max_candidates)

    # What an adapter implements. The caller (trace, Trace.graph, candidates, embeddings) has already put the
    # model in eval mode inside borrowed(model) and moved the image to its device and dtype.

    @abc.abstractmethod
    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        """One forward pass on ``image`` (``Tensor[3, H, W]`` in [0, 1]).

        With ``candidates=None`` the detections are the model's own output; with an int they are that many
        best-scoring candidates before the model's NMS, by descending score (:meth:`select` does both). Raise
        :class:`LayerError` for a ``layer`` that cannot be explained."""

    @abc.abstractmethod
    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
                   ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        """With gradients on, the attributes of ``detections`` recomputed from the leaves in ``trace.state``,
        and their feature groups: see :meth:`Trace.graph`. Raise ``ValueError`` for provenance out of range."""

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        """:meth:`candidates` for a batch already on the model's device (optional: D-RISE and Deletion and
        Insertion need it)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot score candidates, which D-RISE and Deletion/Insertion need"
        )

    def embed(self, trace: Trace, detections: Detections) -> Tensor:
        """:meth:`embeddings` without the checks (optional: FeatureNMS needs it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot compute embeddings")

    def select(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
               max_detections: int, candidates: int | None) -> Tensor:
        """Indices into pre-NMS candidates (``boxes [N, 4]``, ``scores [N]``, ``labels [N]``) for :meth:`run`:
        torchvision's class-wise NMS capped at ``max_detections`` when ``candidates`` is ``None``, else the
        ``candidates`` best-scoring, by descending score (ties in index order)."""
        if candidates is None:
            from torchvision.ops import batched_nms

            return batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        return torch.sort(scores, descending=True, stable=True).indices[:candidates]


@contextmanager
def borrowed(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s train/eval modes, ``requires_grad`` flags and hooks on exit, also after an exception."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    hooks = [(m, name, dict(getattr(m, name))) for m in model.modules() for name in hook_dicts
             if hasattr(m, name)]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, name, saved in hooks:
            current = getattr(m, name)
            current.clear()
            current.update(saved)


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """Find ``layer`` (a dotted module name or a module) inside ``model``; ``ValueError`` if it is not there."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise LayerError(f"layer {type(layer).__name__} is not a module of this model")
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise LayerError(f"model has no module named {layer!r}") from None
    raise LayerError(f"layer must be a module name or nn.Module, got {type(layer).__name__}")


@contextmanager
def leaf_hook(module: nn.Module) -> Iterator[list]:
    """Make ``module``'s output a fresh leaf that requires grad; the leaves are collected in the yielded list.

    Detaching there keeps the backward pass to the part of the network after ``module``.
    """
    captured: list = []

    def hook(_m: nn.Module, _inputs: object, output: object) -> object:
        if captured:
            raise LayerError(f"layer {type(_m).__name__} runs more than once per forward pass; pick one that runs once")
        if isinstance(output, Tensor):
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf
        if isinstance(output, dict) and all(isinstance(v, Tensor) for v in output.values()):
            leaves = type(output)((k, v.detach().requires_grad_(True)) for k, v in output.items())
            captured.append(leaves)
            return leaves
        raise LayerError(
            f"layer {type(_m).__name__} returns {type(output).__name__}; pick a module that returns a tensor"
        )

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
