"""Adapters for torchvision's detectors: FCOS and RetinaNet (one-stage), Faster and Mask R-CNN (two-stage).

The detection pass re-runs the model's own parts (``transform``, ``backbone``, ``head``/``rpn``/``roi_heads``)
with the same post-processing code paths as torchvision, but records for each detection the anchor (or RoI)
and feature level it came from. ``detect`` therefore returns exactly what the model returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from odam._patching import patch as _patch
from odam.detectors.base import (
    Candidates,
    DetectorAdapter,
    FeatureGroup,
    Geometry,
    LayerError,
    Trace,
    Windows,
    leaf_hook,
    resolve_layer,
)
from odam.detectors.batched_rpn import batched_proposals
from odam.detectors.groups import CropGroup, RoIGroup, RoILevelGroup, leaf_groups, receptive_radius
from odam.structures import Detections

_LOCAL_HEADS = (RetinaNetHead, RetinaNetClassificationHead, RetinaNetRegressionHead, FCOSHead, FCOSClassificationHead,
                FCOSRegressionHead)
# Leaf modules that act on each position alone (an empty Sequential is the identity).
_LOCAL_LAYERS = (nn.Conv2d, nn.ReLU, nn.BatchNorm2d, FrozenBatchNorm2d, nn.Identity, nn.Sequential)


def _edges(boxes: Tensor, geometry: Geometry) -> Tensor:
    """``Tensor[K, 4]`` signed edges (-x1, -y1, x2, y2) in original pixels from model-input boxes."""
    boxes = resize_boxes(boxes, geometry.resized, geometry.original)
    return boxes * boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])


def _prepare(model: nn.Module, image: Tensor) -> tuple[Tensor, Geometry]:
    images, _ = model.transform([image])
    geometry = Geometry(
        original=(int(image.shape[-2]), int(image.shape[-1])),
        resized=tuple(int(s) for s in images.image_sizes[0]),
        padded=(int(images.tensors.shape[-2]), int(images.tensors.shape[-1])),
    )
    return images, geometry


def _prepare_batch(model: nn.Module, images: Tensor) -> tuple[ImageList, Geometry]:
    """``model.transform`` for a batch of same-size images (``Tensor[B, 3, H, W]``) in a few batched calls.

    Normalises, resizes with the same ``F.interpolate`` call torchvision makes for each image, and pads to a
    multiple of ``size_divisible``; the result equals ``model.transform(list(images))`` (tested).
    """
    t = model.transform
    h, w = images.shape[-2:]
    mean = torch.as_tensor(t.image_mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(t.image_std, dtype=images.dtype, device=images.device)[:, None, None]
    x = (images - mean) / std
    if t.fixed_size is not None:
        x = F.interpolate(x, size=[t.fixed_size[1], t.fixed_size[0]], mode="bilinear", align_corners=False)
    else:
        scale = min(t.min_size[-1] / min(h, w), t.max_size / max(h, w))
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    d = float(t.size_divisible)
    ph, pw = int(math.ceil(x.shape[-2] / d) * d), int(math.ceil(x.shape[-1] / d) * d)
    padded = F.pad(x, (0, pw - x.shape[-1], 0, ph - x.shape[-2]))
    resized = (int(x.shape[-2]), int(x.shape[-1]))
    return ImageList(padded, [resized] * len(x)), Geometry((int(h), int(w)), resized, (ph, pw))


def _run_backbone(model: nn.Module, tensors: Tensor, layer: str | nn.Module | None
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Backbone features by level name, and the leaves (by name) that gradients are taken with respect to.

    Without ``layer`` the backbone runs without a graph and each output level becomes a leaf.
    """
    if layer is None:
        with torch.no_grad():
            feats = _as_dict(model.backbone(tensors))
        leaves = {k: f.detach().requires_grad_(True) for k, f in feats.items()}
        return leaves, leaves
    module = resolve_layer(model, layer)
    with leaf_hook(module) as captured, torch.enable_grad():
        feats = _as_dict(model.backbone(tensors))
    if not captured:
        raise LayerError(f"layer {layer!r} is not used by the backbone of this detector")
    leaf = captured[-1]
    return feats, (dict(leaf) if isinstance(leaf, dict) else {"": leaf})


def _as_dict(feats: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    return {"0": feats} if isinstance(feats, Tensor) else dict(feats)


def fpn_centres(fpn: nn.Module | None, sizes: dict[str, tuple[int, int]], padded: tuple[int, int]
                ) -> dict[str, tuple[float, float]]:
    """Where an FPN's output maps are placed: ``{name: (c_y, c_x)}``, the offset ``c`` of
    :class:`~odam.detectors.base.MapGroup` (cell ``j`` of a stride-``s`` map on model-input pixel ``j * s + c``).

    ``0`` on every level: the lateral path from a "same"-padded body centres cell ``j`` on ``j * s``, and so do
    torchvision's anchors and FCOS's points, which training aligns the cells with. The top-down pathway's nearest
    upsampling moves the centroid of a finer level's effective receptive field towards ``(s - s_top) / 2``
    (measured on random and trained weights, ``benchmarks/placement.py``: about -9 pixels at P3, -5 to -8 at P4),
    but placing P3/P4 there lowered ODAM's pointing game on the bundled trained detectors (docs/ODAM.md), so that
    centroid is reported, not used.

    Args:
        fpn: the FPN module, or ``None`` (kept for adapters that place levels differently).
        sizes: ``(h, w)`` of each output map, in the FPN's output order.
        padded: ``(H, W)`` of the padded model input.
    """
    return {n: (0.0, 0.0) for n in sizes}


def _fpn_of(model: nn.Module) -> nn.Module | None:
    fpn = getattr(model.backbone, "fpn", None)
    return fpn if isinstance(fpn, nn.Module) else None


def _layer_centres(model: nn.Module, feats: dict[str, Tensor], leaves: dict[str, Tensor], layer: object,
                   geometry: Geometry) -> dict[str, tuple[float, float]]:
    """The cell centre of each leaf map (see :func:`fpn_centres`): the backbone's levels (the default, the
    backbone or its FPN as ``layer``) and an FPN output convolution's map carry the FPN's offsets; any other
    module (inside the body: ``"backbone.body.layer3"``) is centred at ``0``."""
    fpn = _fpn_of(model)
    levels = fpn_centres(fpn, {k: tuple(f.shape[-2:]) for k, f in feats.items()}, geometry.padded)
    module = None if layer is None else resolve_layer(model, layer)
    if module is None or module is model.backbone or module is fpn:
        return {k: levels.get(k, (0.0, 0.0)) for k in leaves}
    blocks = list(getattr(fpn, "layer_blocks", ())) if fpn is not None else []
    for k, block in enumerate(blocks):
        if module is block or any(module is m for m in block.modules()):
            return dict.fromkeys(leaves, levels[list(levels)[k]])
    return dict.fromkeys(leaves, (0.0, 0.0))


class OneStageAdapter(DetectorAdapter):
    """FCOS and RetinaNet (and their ``_v2`` variants)."""

    named_layers = ("fpn",)
    default_layer = "fpn"

    @staticmethod
    def accepts(model: object) -> bool:
        """Whether ``model`` is a torchvision FCOS or RetinaNet (``_v2`` variants and subclasses included)."""
        return isinstance(model, (FCOS, RetinaNet))

    def __init__(self, model: FCOS | RetinaNet, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(model, categories)
        self.is_fcos = isinstance(model, FCOS)

    def _head(self, features: list[Tensor]) -> list[dict[str, Tensor]]:
        """Head outputs split per level; each ``[HWA, K]`` for the single image."""
        out = self.model.head(features)
        sizes = [f.shape[-2] * f.shape[-1] for f in features]
        a = out["cls_logits"].shape[1] // sum(sizes)
        sizes = [s * a for s in sizes]
        split = {k: v[0].split(sizes) for k, v in out.items()}
        return [{k: split[k][i] for k in split} for i in range(len(features))]

    def _scores(self, level: dict[str, Tensor]) -> Tensor:
        if self.is_fcos:
            return torch.sqrt(torch.sigmoid(level["cls_logits"]) * torch.sigmoid(level["bbox_ctrness"]))
        return torch.sigmoid(level["cls_logits"])

    def _decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        if self.is_fcos:
            return self.model.box_coder.decode(regression, anchors)
        return self.model.box_coder.decode_single(regression, anchors)

    @property
    def score_threshold(self) -> float:
        return float(self.model.score_thresh)

    @property
    def max_detections(self) -> int:
        return int(self.model.detections_per_img)

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        m = self.model
        batch, geometry = _prepare_batch(m, images)
        features = list(_as_dict(m.backbone(batch.tensors)).values())
        out = m.head(features)
        anchors = m.anchor_generator(ImageList(batch.tensors[:1], batch.image_sizes[:1]), features)[0]
        scores = self._scores(out)  # [B, A, L]
        k = min(max_candidates, scores.shape[1])
        top = scores.amax(-1).topk(k, dim=1).indices  # [B, k]
        b = torch.arange(len(top), device=top.device)[:, None]
        boxes = self._decode(out["bbox_regression"][b, top].reshape(-1, 4), anchors[top].reshape(-1, 4))
        boxes = geometry.to_original(box_ops.clip_boxes_to_image(boxes, geometry.resized)).view(*top.shape, 1, 4)
        scores = scores[b, top]
        objectness = torch.sigmoid(out["bbox_ctrness"][b, top, 0]) if self.is_fcos else None
        return Candidates(boxes.expand(-1, -1, scores.shape[-1], -1), scores, torch.sigmoid(out["cls_logits"][b, top]),
                          objectness, torch.ones_like(top, dtype=torch.bool))

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        m = self.model
        images, geometry = _prepare(m, image)
        if isinstance(layer, str) and layer in ("fpn", "roi"):
            if layer == "roi":
                raise LayerError(f"layer 'roi' needs a two-stage detector, got {type(m).__name__}")
            layer = None
        feats, leaves = _run_backbone(m, images.tensors, layer)
        features = list(feats.values())
        with torch.no_grad():
            levels_out = self._head(features)
            anchors = m.anchor_generator(images, features)[0]
            anchors = anchors.split([lv["cls_logits"].shape[0] for lv in levels_out])
            boxes, scores, labels, lvl, idx = [], [], [], [], []
            for li, (out, anc) in enumerate(zip(levels_out, anchors, strict=True)):
                num_classes = out["cls_logits"].shape[-1]
                s = self._scores(out).flatten()
                keep = s > m.score_thresh
                s = s[keep]
                topk_idxs = torch.where(keep)[0]
                num_topk = det_utils._topk_min(topk_idxs, m.topk_candidates, 0)
                s, order = s.topk(num_topk)
                topk_idxs = topk_idxs[order]
                anchor_idxs = torch.div(topk_idxs, num_classes, rounding_mode="floor")
                b = self._decode(out["bbox_regression"][anchor_idxs], anc[anchor_idxs])
                boxes.append(box_ops.clip_boxes_to_image(b, geometry.resized))
                scores.append(s)
                labels.append(topk_idxs % num_classes)
                lvl.append(torch.full_like(anchor_idxs, li))
                idx.append(anchor_idxs)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = self.select(boxes, scores, labels, m.nms_thresh, m.detections_per_img, candidates)
            dets = Detections(resize_boxes(boxes[keep], geometry.resized, geometry.original), scores[keep],
                              labels[keep], torch.cat(lvl)[keep], torch.cat(idx)[keep])
        state = {"features": features, "names": list(feats), "leaves": leaves, "anchors": anchors,
                 "local": layer is None,
                 "centres": _layer_centres(m, feats, leaves, layer, geometry)}
        return Trace(dets, geometry, self, state)

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
               ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        st = trace.state
        features, anchors = st["features"], st["anchors"]
        levels, indices, labels = detections.levels, detections.indices, detections.labels
        if len(levels) and int(levels.max()) >= len(features):
            raise ValueError(f"detection level out of range: this detector has {len(features)} levels")
        radius = self._receptive_radius(frozen_norm) if st["local"] else None
        stats = self._norm_stats(trace) if radius is not None and frozen_norm else None
        rows, groups, group_of = [], [], torch.empty_like(levels)
        with torch.enable_grad():
            for li, feature in enumerate(features):
                sel = torch.where(levels == li)[0]
                if len(sel) == 0:
                    continue
                if int(indices[sel].max()) >= self._num_outputs(feature):
                    raise ValueError(f"detection index out of range on level {li}")
                if radius is None:
                    out = self._head([feature])[0]  # the head treats levels independently: only those needed
                    a = indices[sel]
                    y = self._attributes({k: v[a] for k, v in out.items()}, labels[sel], anchors[li][a], trace.geometry)
                    rows.append((sel, y))
                    continue
                level_stats = None if stats is None else {k: v[li] for k, v in stats.items()}
                centre = st["centres"][st["names"][li]]
                for part, group, y in self._crops(feature, sel, indices, labels, anchors[li], radius, trace,
                                                  level_stats, centre):
                    rows.append((part, y))
                    groups.append(group)
                    group_of[part] = len(groups) - 1
            order = torch.cat([r[0] for r in rows])
            y = torch.cat([r[1] for r in rows])[torch.argsort(order)]
        if radius is None:
            groups, group_of = leaf_groups(st["leaves"], levels, trace.geometry, st["names"], st["centres"])
        return y, groups, group_of

    def embed(self, trace: Trace, detections: Detections) -> Tensor:
        features, head = trace.state["features"], self.model.embedding_head
        n_anchors = self.model.head.classification_head.num_anchors
        out = torch.zeros(len(detections), head.dim, device=detections.boxes.device)
        for li, feature in enumerate(features):
            sel = torch.where(detections.levels == li)[0]
            if len(sel):
                flat = head(feature.detach()).flatten(2)[0]  # [E, h * w]
                out[sel] = flat[:, detections.indices[sel] // n_anchors].T.to(out.dtype)
        return out

    def _num_outputs(self, feature: Tensor) -> int:
        return feature.shape[-2] * feature.shape[-1] * self.model.head.classification_head.num_anchors

    def _attributes(self, picked: dict[str, Tensor], label: Tensor, anchors: Tensor, geometry: Geometry) -> Tensor:
        """``Tensor[K, 5]`` (score and signed edges) from the head outputs of K detections (``[K, *]`` each)."""
        score = self._scores(picked).gather(1, label[:, None])[:, 0]
        box = self._decode(picked["bbox_regression"], anchors)
        box = box_ops.clip_boxes_to_image(box, geometry.resized)
        return torch.cat([score[:, None], _edges(box, geometry)], 1)

    def _crops(self, feature: Tensor, sel: Tensor, indices: Tensor, labels: Tensor, anchors: Tensor, radius: int,
               trace: Trace, norm_stats: dict | None = None, cell_centre: tuple[float, float] = (0.0, 0.0)
               ) -> Iterator[tuple[Tensor, FeatureGroup, Tensor]]:
        """Run the head on the ``radius`` neighbourhood of each detection's cell only.

        Without normalisation across positions, an output at cell p depends on the cells within the head's
        receptive radius alone; a crop clipped at the map's border keeps the convolutions' own zero padding
        there, so the output at p is the same as on the whole map. Detections with equal crop shapes and
        centre offsets are batched; their crops are leaves whose rows are independent. With ``norm_stats``
        (``{id(GroupNorm): (mean, rstd)}`` of this level), GroupNorm layers normalise with those fixed
        statistics, which makes them act on each position alone.
        """
        h, w = feature.shape[-2:]
        n_anchors = self.model.head.classification_head.num_anchors
        pos, anchor = indices[sel] // n_anchors, indices[sel] % n_anchors
        centre = torch.stack([pos // w, pos % w], 1)
        if norm_stats is not None and self._even_reach(radius):
            # One batch for the whole level: unclipped crops, zero outside the map, through "valid" convolutions
            # that mask what lies outside the map before each one (the zero padding the whole map would have
            # there). Each layer computes only the cells the next needs; the head's output is the centre cell.
            size = 2 * radius + 1
            windows = Windows(centre - radius, (size, size), (h, w))
            padded = F.pad(feature.detach(), (radius, radius, radius, radius))
            crops = Windows(centre, (size, size), tuple(padded.shape[-2:])).gather(padded).requires_grad_(True)
            with _frozen_groupnorm(self.model.head, norm_stats), _valid_convs(self.model.head, windows):
                out = self.model.head([crops])
            picked = {k: v[torch.arange(len(sel)), anchor] for k, v in out.items()}
            y = self._attributes(picked, labels[sel], anchors[indices[sel]], trace.geometry)
            rows = torch.arange(len(sel), device=sel.device)
            yield sel, CropGroup(crops, rows, trace.geometry, feature, windows, cell_centre), y
            return
        lo = (centre - radius).clamp_min(0)
        hi = torch.minimum(centre + radius + 1, torch.tensor([h, w], device=centre.device))
        keys = torch.cat([hi - lo, centre - lo], 1)
        for key in torch.unique(keys, dim=0):
            mine = (keys == key).all(1)
            part = sel[mine]
            windows = Windows(lo[mine], (int(key[0]), int(key[1])), (h, w))
            crops = windows.gather(feature.detach()).requires_grad_(True)
            with _frozen_groupnorm(self.model.head, norm_stats):
                out = self.model.head([crops])
            at = (key[2] * windows.size[1] + key[3]) * n_anchors + anchor[mine]
            picked = {k: v[torch.arange(len(part)), at] for k, v in out.items()}
            y = self._attributes(picked, labels[part], anchors[indices[part]], trace.geometry)
            rows = torch.arange(len(part), device=part.device)
            yield part, CropGroup(crops, rows, trace.geometry, feature, windows, cell_centre), y

    def _even_reach(self, radius: int) -> bool:
        """Whether every output convolution of the head sees exactly ``radius`` cells through its tower, so that
        "valid" convolutions take a ``2 * radius + 1`` crop to one cell on every output (see :func:`_valid_convs`)."""
        for branch in (self.model.head.classification_head, self.model.head.regression_head):
            convs = [m for m in branch.conv.modules() if isinstance(m, nn.Conv2d)]
            square = all(m.kernel_size[0] == m.kernel_size[1] and m.dilation[0] == m.dilation[1]
                         for m in branch.modules() if isinstance(m, nn.Conv2d))
            if not square:  # crops must shrink alike on both axes
                return False
            if any(type(m).forward is not nn.Conv2d.forward or "forward" in vars(m) or m.padding_mode != "zeros"
                   for m in (self.model.head.modules()) if isinstance(m, nn.Conv2d)):
                return False  # _valid_convs replaces forward by a plain F.conv2d: only for plain convolutions
            tower = receptive_radius(convs, ())
            outputs = [m for m in branch.children() if m is not branch.conv]
            if tower is None or any(not isinstance(m, nn.Conv2d) or tower + (receptive_radius([m], ()) or 0) != radius
                                    for m in outputs):
                return False
        return True

    def _receptive_radius(self, frozen_norm: bool = False) -> int | None:
        """How many cells an output of the head can see in each direction, or ``None`` when it sees further.

        Only torchvision's own heads built from stride-1 "same" convolutions, ReLUs and per-position
        normalisation qualify: RetinaNet, and FCOS without GroupNorm. GroupNorm (FCOS, RetinaNet v2) pools
        statistics over the whole level, so every output depends on every cell, unless ``frozen_norm``
        holds those statistics fixed.
        """
        head = self.model.head
        if type(head) not in _LOCAL_HEADS:
            return None
        local = _LOCAL_LAYERS + ((nn.GroupNorm,) if frozen_norm else ())
        radius = 0
        for branch in (head.classification_head, head.regression_head):
            if type(branch) not in _LOCAL_HEADS:
                return None
            # The tower ("conv", a chain) runs first; the output convolutions sit side by side on top of it.
            tower = receptive_radius([m for m in branch.conv.modules() if not list(m.children())], local)
            outputs = [receptive_radius([m], ()) for m in branch.children() if m is not branch.conv]
            if tower is None or None in outputs:
                return None
            radius = max(radius, tower + max(outputs, default=0))
        return radius


    def _norm_stats(self, trace: Trace) -> dict[int, list[tuple[Tensor, Tensor]]]:
        """Per GroupNorm layer of the head, its ``(mean, rstd)`` (``[1, G]`` each) on every level, in level
        order: the statistics of this trace's forward pass, computed once and kept in the trace."""
        st = trace.state
        if "norm_stats" not in st:
            stats: dict[int, list[tuple[Tensor, Tensor]]] = {}

            def record(module: nn.GroupNorm, args: tuple) -> None:
                x = args[0].detach()
                var, mean = torch.var_mean(x.reshape(x.shape[0], module.num_groups, -1), dim=2, unbiased=False)
                stats.setdefault(id(module), []).append((mean, torch.rsqrt(var + module.eps)))

            norms = [m for m in self.model.head.modules() if isinstance(m, nn.GroupNorm)]
            handles = [m.register_forward_pre_hook(record) for m in norms]
            try:
                with torch.no_grad():
                    self.model.head([f.detach() for f in st["features"]])
            finally:
                for h in handles:
                    h.remove()
            st["norm_stats"] = stats
        return st["norm_stats"]


@contextmanager
def _frozen_groupnorm(head: nn.Module, stats: dict[int, tuple[Tensor, Tensor]] | None) -> Iterator[None]:
    """Inside the block, each GroupNorm of ``head`` normalises with the given fixed ``(mean, rstd)``."""
    if stats is None:
        yield
        return
    with ExitStack() as undo:  # patches undone in reverse order, also on an error
        for m in head.modules():
            if isinstance(m, nn.GroupNorm):
                mean, rstd = stats[id(m)]

                def forward(x: Tensor, m: nn.GroupNorm = m, mean: Tensor = mean, rstd: Tensor = rstd) -> Tensor:
                    b, c = x.shape[:2]
                    y = (x.reshape(b, m.num_groups, -1) - mean[..., None]) * rstd[..., None]
                    y = y.reshape(x.shape)
                    if m.affine:
                        shape = (1, c) + (1,) * (x.ndim - 2)
                        y = y * m.weight.reshape(shape) + m.bias.reshape(shape)
                    return y

                undo.callback(_patch(m, "forward", forward))
        yield


@contextmanager
def _valid_convs(head: nn.Module, windows: Windows) -> Iterator[None]:
    """Inside the block, each Conv2d of ``head`` (stride-1 "same" convolutions) runs without padding on crops
    placed by ``windows`` (which may reach past the map), after zeroing the cells of its input outside the map.

    A crop of ``s`` cells whose layers each shrink it by their reach then yields, at every cell it keeps, what
    the whole map's "same" convolutions (zero padding at the map's border) yield there. The mask also zeroes
    the gradient of the cells outside the map.
    """
    size = windows.size[0]
    masks: dict[int, Tensor] = {}
    for s in range(size, 0, -2):  # the centred s x s part of each crop
        k = (size - s) // 2
        ys = windows.origin[:, :1] + k + torch.arange(s, device=windows.origin.device)
        xs = windows.origin[:, 1:] + k + torch.arange(s, device=windows.origin.device)
        inside = ((ys >= 0) & (ys < windows.grid[0]))[:, :, None] & ((xs >= 0) & (xs < windows.grid[1]))[:, None, :]
        masks[s] = inside[:, None]
    with ExitStack() as undo:
        for m in head.modules():
            if isinstance(m, nn.Conv2d):

                def forward(x: Tensor, m: nn.Conv2d = m) -> Tensor:
                    x = x * masks[x.shape[-1]].to(x.dtype)
                    return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

                undo.callback(_patch(m, "forward", forward))
        yield


class TwoStageAdapter(DetectorAdapter):
    """Faster R-CNN and Mask R-CNN (and their ``_v2`` variants). Masks are not explained.

    ``layer=None`` (or ``"fpn"``) explains each detection on the FPN level its RoI was pooled from;
    ``layer="roi"`` explains it on its own RoI-pooled features.
    """

    named_layers = ("fpn", "roi")
    default_layer = "fpn"
    #: :meth:`candidates` runs the RPN's post-processing on the whole batch at once
    #: (:func:`~odam.detectors.batched_rpn.batched_proposals`); ``False`` runs torchvision's ``model.rpn``, which
    #: loops over the images (the same proposals; kept for ``benchmarks/bench_drise.py --rpn-compare``).
    batched_rpn: bool = True

    @staticmethod
    def accepts(model: object) -> bool:
        """Whether ``model`` is a torchvision Faster R-CNN or Mask R-CNN (a subclass of it)."""
        return isinstance(model, FasterRCNN)

    @property
    def score_threshold(self) -> float:
        return float(self.model.roi_heads.score_thresh)

    @property
    def max_detections(self) -> int:
        return int(self.model.roi_heads.detections_per_img)

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        m, rh = self.model, self.model.roi_heads
        batch, geometry = _prepare_batch(m, images)
        feats = m.backbone(batch.tensors)
        if self.batched_rpn:
            proposals, _, valid = batched_proposals(m.rpn, batch, feats, max_candidates)  # by objectness
        else:  # torchvision's RPN, which post-processes image by image
            per_image = [p[:max_candidates] for p in m.rpn(batch, feats)[0]]
            proposals = torch.nn.utils.rnn.pad_sequence(per_image, batch_first=True)
            counts = torch.tensor([len(p) for p in per_image], device=proposals.device)
            valid = torch.arange(proposals.shape[1], device=counts.device) < counts[:, None]
            if proposals.shape[1] == 0:
                proposals, valid = proposals.new_zeros(len(per_image), 1, 4), valid.new_zeros(len(per_image), 1)
        counts = valid.sum(1)
        rois = list(proposals[valid].split(counts.tolist()))  # each image's proposals, as MultiScaleRoIAlign takes them
        pooled = rh.box_roi_pool(feats, rois, batch.image_sizes)  # one roi_align per level for the whole batch
        class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
        boxes = rh.box_coder.decode(box_regression, rois)  # [sum P, L, 4] ([0, 4 L] when there is none)
        boxes = boxes.reshape(len(box_regression), box_regression.shape[-1] // 4, 4)
        boxes = geometry.to_original(box_ops.clip_boxes_to_image(boxes, geometry.resized))
        probs = torch.softmax(class_logits, -1)
        padded_boxes = boxes.new_zeros(*valid.shape, *boxes.shape[1:])
        padded_boxes[valid] = boxes
        padded_probs = probs.new_zeros(*valid.shape, probs.shape[-1])
        padded_probs[valid] = probs
        scores = padded_probs.clone()
        scores[..., 0] = 0  # background is never a detection
        return Candidates(padded_boxes, scores, padded_probs, None, valid)

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        m = self.model
        rh = m.roi_heads
        images, geometry = _prepare(m, image)
        mode = "fpn" if layer is None else layer if layer in ("roi", "fpn") else "module"
        feats, leaves = _run_backbone(m, images.tensors, layer if mode == "module" else None)
        with torch.no_grad():
            proposals = m.rpn(images, feats)[0][0]
            pooled = rh.box_roi_pool(feats, [proposals], images.image_sizes)
            class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
            num_classes = class_logits.shape[-1]
            boxes = rh.box_coder.decode(box_regression, [proposals])
            boxes = box_ops.clip_boxes_to_image(boxes, geometry.resized)
            scores = torch.softmax(class_logits, -1)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            roi_idx = torch.arange(len(proposals), device=scores.device).view(-1, 1).expand_as(scores)
            boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels, roi_idx = labels[:, 1:].reshape(-1), roi_idx[:, 1:].reshape(-1)
            inds = torch.where(scores > rh.score_thresh)[0]
            boxes, scores, labels, roi_idx = boxes[inds], scores[inds], labels[inds], roi_idx[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, roi_idx = boxes[keep], scores[keep], labels[keep], roi_idx[keep]
            keep = self.select(boxes, scores, labels, rh.nms_thresh, rh.detections_per_img, candidates)
            roi_idx = roi_idx[keep]
            dets = Detections(resize_boxes(boxes[keep], geometry.resized, geometry.original), scores[keep],
                              labels[keep], self._roi_levels(proposals)[roi_idx], roi_idx)
        state = {"features": feats, "leaves": leaves, "proposals": proposals, "mode": mode,
                 "image_sizes": images.image_sizes,
                 "centres": _layer_centres(m, feats, leaves, layer if mode == "module" else None, geometry)}
        return Trace(dets, geometry, self, state)

    def embed(self, trace: Trace, detections: Detections) -> Tensor:
        st, rh = trace.state, self.model.roi_heads
        props = st["proposals"][detections.indices]
        pooled = rh.box_roi_pool(st["features"], [props], st["image_sizes"])
        return self.model.embedding_head(rh.box_head(pooled))

    def _roi_levels(self, boxes: Tensor) -> Tensor:
        pool = self.model.roi_heads.box_roi_pool
        if len(pool.featmap_names) == 1:
            return torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        return pool.map_levels([boxes])

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
               ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        st = trace.state
        geometry, rh = trace.geometry, self.model.roi_heads
        pool, proposals = rh.box_roi_pool, st["proposals"]
        names = [n for n in pool.featmap_names if n in st["features"]]  # as MultiScaleRoIAlign filters them
        if len(detections) and int(detections.indices.max()) >= len(proposals):
            raise ValueError(f"detection index out of range: this image has {len(proposals)} proposals")
        props = proposals[detections.indices]
        levels = self._roi_levels(props)
        with torch.enable_grad():
            if st["mode"] == "module":
                x = pool(st["features"], [props], st["image_sizes"])
                groups, group_of = leaf_groups(st["leaves"], levels, geometry, names, st["centres"])
            else:
                # Pool each RoI from its level without a graph: the pooled rows are the leaves, and since
                # the box head treats rows independently one backward pass serves every detection.
                groups, group_of, parts = [], torch.empty_like(levels), []
                for li, name in enumerate(names):
                    sel = torch.where(levels == li)[0]
                    if len(sel) == 0:
                        continue
                    rois = torch.cat([torch.zeros_like(props[sel, :1]), props[sel]], 1)
                    level_map = st["features"][name].detach()
                    leaf = roi_align(level_map, rois, pool.output_size, pool.scales[li], pool.sampling_ratio)
                    leaf.requires_grad_(True)
                    rows = torch.arange(len(sel), device=sel.device)
                    centre = st["centres"][name]
                    if st["mode"] == "roi":
                        groups.append(RoIGroup(leaf, rows, props[sel], geometry, centre))
                    else:
                        groups.append(RoILevelGroup(leaf, rows, geometry, level_map, rois, pool.scales[li],
                                                    pool.sampling_ratio, centre))
                    group_of[sel] = len(groups) - 1
                    parts.append((sel, leaf))
                order = torch.cat([p[0] for p in parts])
                x = torch.cat([p[1] for p in parts])[torch.argsort(order)]
            class_logits, box_regression = rh.box_predictor(rh.box_head(x))
            k = torch.arange(len(props), device=props.device)
            score = torch.softmax(class_logits, -1)[k, detections.labels]
            reg = box_regression.reshape(len(props), -1, 4)[k, detections.labels]
            box = rh.box_coder.decode_single(reg, props)
            box = box_ops.clip_boxes_to_image(box, geometry.resized)
            y = torch.cat([score[:, None], _edges(box, geometry)], 1)
        return y, groups, group_of
