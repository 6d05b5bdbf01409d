"""Odam-Train inside a training step: the ODAM maps of every positive prediction of a batch, batched, and
the auxiliary loss of :mod:`odam.losses` on them.

:class:`OdamTrainer` watches one training forward pass of a torchvision FCOS or Faster R-CNN (hooks and
wrappers installed only for that pass, removed after it), then builds the maps with the predicted confidence
score as the explained target:

* **Faster R-CNN** (exact): ``A`` is the RoI-pooled features ``[R, C, 7, 7]`` of the sampled proposals. The box
  head treats rows independently, so one autograd call of the summed scores gives every RoI's gradient. Each
  map ``relu(sum_c dS/dA_c * A_c)`` (7x7) is pasted into its proposal box on a common grid of the finest pooled
  level's stride.
* **FCOS** (documented approximation): ``A`` is the FPN level a positive location belongs to. Its score depends
  on the cells within the head's receptive radius ``R`` (tower convolutions + 1) and, through GroupNorm, on the
  statistics of the whole level. We rerun the head on a ``(2R+1)^2`` window of ``A`` around every positive with
  the GroupNorm statistics of the real forward pass held fixed (detached); convolutions are "valid", with cells
  outside the image zeroed before each one as the real zero padding does, so the recomputed score equals the
  real one. One autograd call then gives every window's gradient. What is dropped is only the gradient through
  the GroupNorm statistics; ``benchmarks/bench_odam_train.py`` measures the error against exact per-positive
  autograd (docs/PERFORMANCE.md). Maps of every level are resized (bilinear) to the finest level's grid.

ODAM's Gaussian smoothing of the gradients is not applied in training (the maps are compared by cosine on a
grid of stride 8, where it would blur a 7x7 window and cost a convolution per channel).

``second_order=False`` (the default) detaches the gradient weights: the loss trains the network through the
activations ``A`` only (the backbone and FPN; for Faster R-CNN also what feeds RoIAlign), as the reference
implementation does. ``second_order=True`` differentiates through the weights too, which also reaches the head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.ops import box_iou

from odam._patching import patch as _patch
from odam.detectors.groups import conv_reach
from odam.losses import NEGATIVES, odam_train_loss


@dataclass
class Positives:
    """The positives of one batch and their maps: ``maps[N, h, w]`` on a common grid, ``gt_index[N]``
    (the matched object within its image), ``ious[N]``, predicted ``boxes[N, 4]`` (model pixels),
    ``image_index[N]``, and ``scores[N]`` (the explained confidence scores, detached)."""

    maps: Tensor
    gt_index: Tensor
    ious: Tensor
    boxes: Tensor
    image_index: Tensor
    scores: Tensor


class OdamTrainer:
    """Odam-Train's auxiliary loss for one torchvision FCOS or Faster R-CNN during training.

    Args:
        model: the detector (not its DDP wrapper); ``capture`` instruments it for one forward pass.
        weight: lambda, the loss weight.
        negatives: ``"all"`` or ``"overlapping"`` (see :func:`odam.losses.odam_train_loss`).
        max_positives: at most this many positives per image (the best of each object first, then others at
            random from torch's global generator); ``None`` keeps all.
        second_order: differentiate through the gradient weights too.

    Example:
        >>> import torch, odam
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = odam.create_model("odam:fcos", num_classes=2, min_size=64, max_size=64).train()
        >>> trainer = OdamTrainer(model, max_positives=8)
        >>> with trainer.capture():
        ...     losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4, 40, 60], [20, 2, 60, 50]]),
        ...                                                "labels": torch.tensor([1, 1])}])
        >>> loss, stats = trainer.loss()
        >>> bool(loss > 0), int(stats["con_pairs"]) + int(stats["sep_pairs"]) > 0
        (True, True)
    """

    def __init__(self, model: nn.Module, *, weight: float = 1.0, negatives: str = "all",
                 max_positives: int | None = None, second_order: bool = False) -> None:
        if not isinstance(model, (FCOS, FasterRCNN)):
            raise ValueError(f"Odam-Train supports torchvision FCOS and Faster R-CNN, got {type(model).__name__}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if max_positives is not None and (isinstance(max_positives, bool) or not isinstance(max_positives, int)
                                          or max_positives < 1):
            raise ValueError(f"max_positives must be a positive int or None, got {max_positives!r}")
        if not (weight >= 0 and weight < float("inf")):
            raise ValueError(f"weight must be a non-negative number, got {weight!r}")
        self.model, self.weight, self.negatives = model, weight, negatives
        self.max_positives, self.second_order = max_positives, second_order
        self._seen: dict[str, Any] = {}
        if isinstance(model, FCOS):
            self.radius = _fcos_radius(model)
        elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.roi_heads.box_head.modules()):
            raise ValueError("Odam-Train needs a box head that treats RoIs independently; this one has batch norm, "
                             "which couples them in training (e.g. fasterrcnn_resnet50_fpn_v2)")

    @property
    def seen(self) -> dict[str, Any]:
        """What the last training pass inside :meth:`capture` recorded (FCOS: ``features``, ``head`` outputs,
        ``matched`` anchors and ``targets``), for a slow reference such as ``benchmarks/bench_odam_train.py``."""
        return self._seen

    # ------------------------------------------------------------------------------------------- capture

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Instrument the model for its training forward passes inside the block (the last one counts);
        everything is removed after, also on an error."""
        self._seen = {}
        m = self.model
        with ExitStack() as undo:  # hooks removed and patches undone in reverse order, also on an error
            undo.callback(m.backbone.register_forward_pre_hook(self._on_backbone).remove)
            if isinstance(m, FCOS):
                undo.callback(m.head.register_forward_hook(self._on_head).remove)
                undo.callback(_patch(m.head, "compute_loss", self._wrap_fcos_loss(m.head.compute_loss)))
                for branch in (m.head.classification_head, m.head.regression_head):
                    for layer in branch.conv:
                        if isinstance(layer, nn.GroupNorm):
                            undo.callback(layer.register_forward_pre_hook(self._on_norm).remove)
            else:
                rh = m.roi_heads
                undo.callback(_patch(rh, "select_training_samples", self._wrap_sampling(rh.select_training_samples)))
                undo.callback(rh.box_roi_pool.register_forward_hook(self._on_pool).remove)
                undo.callback(rh.box_predictor.register_forward_hook(self._on_predictor).remove)
            yield

    def _on_backbone(self, module: nn.Module, args: tuple) -> None:
        # A new forward pass: forget the previous one's statistics and outputs.
        self._seen = {"padded": tuple(args[0].shape[-2:]), "norm": {}}

    def _on_head(self, module: nn.Module, args: tuple, output: dict[str, Tensor]) -> None:
        self._seen["features"], self._seen["head"] = list(args[0]), output

    def _on_norm(self, module: nn.GroupNorm, args: tuple) -> None:
        x = args[0].detach().float()
        b = x.shape[0]
        flat = x.reshape(b, module.num_groups, -1)
        var, mean = torch.var_mean(flat, dim=2, unbiased=False)
        self._seen["norm"].setdefault(id(module), []).append((mean, torch.rsqrt(var + module.eps)))

    def _wrap_fcos_loss(self, original: Any) -> Any:
        def compute_loss(targets: list, head_outputs: dict, anchors: list, matched_idxs: list) -> Any:
            self._seen.update(targets=targets, anchors=anchors, matched=matched_idxs)
            return original(targets, head_outputs, anchors, matched_idxs)
        return compute_loss

    def _wrap_sampling(self, original: Any) -> Any:
        def select_training_samples(proposals: list, targets: list) -> Any:
            out = original(proposals, targets)
            self._seen.update(proposals=out[0], matched=out[1], labels=out[2], targets=targets)
            return out
        return select_training_samples

    def _on_pool(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._seen["pooled"] = output

    def _on_predictor(self, module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> None:
        self._seen["predictions"] = output

    # ---------------------------------------------------------------------------------------------- loss

    def loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted auxiliary loss of the last captured pass, and its stats (see ``odam_train_loss``)."""
        p = self.positives()
        self._seen = {}  # do not keep the batch's activations alive after the step
        return odam_train_loss(p.maps.flatten(1), p.gt_index, p.ious, boxes=p.boxes, image_index=p.image_index,
                               negatives=self.negatives, weight=self.weight)

    def positives(self) -> Positives:
        """The positives of the last captured training pass, with their maps."""
        if "matched" not in self._seen:
            raise RuntimeError("no training forward pass was captured: run the model on images and targets in "
                               "train mode inside 'with trainer.capture():'")
        return self._fcos() if isinstance(self.model, FCOS) else self._fasterrcnn()

    def _select(self, gt: Tensor, ious: Tensor) -> Tensor:
        """Indices of the kept positives of one image: each object's best first, then the rest at random."""
        n = len(gt)
        if self.max_positives is None or n <= self.max_positives:
            return torch.arange(n, device=gt.device)
        order = torch.randperm(n).to(gt.device)
        by_iou = torch.argsort(ious[order], descending=True, stable=True)
        ranked = order[by_iou]
        first = torch.ones(n, dtype=torch.bool, device=gt.device)
        seen_gt = set()
        for k, g in enumerate(gt[ranked].tolist()):
            first[k] = g not in seen_gt
            seen_gt.add(g)
        bests = ranked[first][torch.randperm(int(first.sum())).to(gt.device)]
        rest = order[~torch.isin(order, bests)]
        return torch.cat([bests, rest])[: self.max_positives]

    # --------------------------------------------------------------------------------------- Faster R-CNN

    def _fasterrcnn(self) -> Positives:
        s, rh = self._seen, self.model.roi_heads
        pooled = s["pooled"]
        class_logits, box_regression = s["predictions"]
        labels = torch.cat(s["labels"])
        counts = [len(p) for p in s["proposals"]]
        image = torch.repeat_interleave(torch.arange(len(counts), device=labels.device),
                                        torch.tensor(counts, device=labels.device))
        matched = torch.cat(s["matched"])
        proposals = torch.cat(s["proposals"])
        pos = torch.where(labels > 0)[0]
        with torch.no_grad():
            boxes = rh.box_coder.decode(box_regression[pos].detach(), [proposals[pos]])
            boxes = boxes[torch.arange(len(pos), device=pos.device), labels[pos]].reshape(-1, 4)
            gts = [t["boxes"] for t in s["targets"]]
            first = torch.tensor([0, *[len(g) for g in gts]], device=pos.device).cumsum(0)[:-1]  # per image
            ious = _paired_iou(boxes, torch.cat(gts)[first[image[pos]] + matched[pos]])
        sub = torch.cat([part[self._select(matched[pos[part]], ious[part])]
                         for part in (torch.where(image[pos] == b)[0] for b in range(len(counts)))])
        keep = pos[sub]
        score = torch.softmax(class_logits[keep], -1).gather(1, labels[keep][:, None])[:, 0]
        # Rows are independent through the box head: one call gives each kept RoI's gradient. The detector's
        # own loss still has to go back through this graph, hence retain_graph.
        grads = torch.autograd.grad(score.sum(), pooled, retain_graph=True, create_graph=self.second_order)[0][keep]
        maps = F.relu((grads * pooled[keep]).sum(1))  # [N, 7, 7]
        stride = 1.0 / max(rh.box_roi_pool.scales)
        size = tuple(int(-(-d // stride)) for d in s["padded"])
        pasted = _paste(maps, proposals[keep].detach(), size, stride)
        return Positives(pasted, matched[keep], ious[sub], boxes[sub], image[keep], score.detach())

    # ----------------------------------------------------------------------------------------------- FCOS

    def _fcos(self) -> Positives:
        s, m = self._seen, self.model
        features, out = s["features"], s["head"]
        sizes = [f.shape[-2] * f.shape[-1] for f in features]
        starts = torch.tensor([0, *sizes], device=features[0].device).cumsum(0)
        picked = []  # (image, anchor index, gt, iou, box)
        with torch.no_grad():
            for b, (target, anchors, matched) in enumerate(zip(s["targets"], s["anchors"], s["matched"], strict=True)):
                idx = torch.where(matched >= 0)[0]
                gt = matched[idx]
                boxes = m.box_coder.decode(out["bbox_regression"][b, idx].detach(), anchors[idx])
                ious = _paired_iou(boxes, target["boxes"][gt])
                k = self._select(gt, ious)
                picked.append((torch.full_like(idx[k], b), idx[k], gt[k], ious[k], boxes[k],
                               target["labels"][gt[k]]))
        image, idx, gt, ious, boxes, labels = (torch.cat(t) for t in zip(*picked, strict=True))
        level = torch.searchsorted(starts, idx, right=True) - 1
        h0, w0 = features[0].shape[-2:]
        maps = features[0].new_zeros(len(idx), h0, w0, dtype=torch.float32)
        scores = features[0].new_zeros(len(idx), dtype=torch.float32)
        for li, feature in enumerate(features):
            sel = torch.where(level == li)[0]
            if len(sel) == 0:
                continue
            h, w = feature.shape[-2:]
            cell = idx[sel] - starts[li]
            level_maps, score = self._fcos_level(feature, li, image[sel], cell // w, cell % w, labels[sel])
            level_maps = _to_grid(level_maps, (h0, w0))
            maps = maps.index_put((sel,), level_maps)
            scores[sel] = score.detach()
        return Positives(maps, gt, ious, boxes, image, scores)

    def _fcos_level(self, feature: Tensor, level: int, image: Tensor, ys: Tensor, xs: Tensor, labels: Tensor
                    ) -> tuple[Tensor, Tensor]:
        """Maps ``[n, h, w]`` on this level's grid for the positives at cells ``(ys, xs)``, and their scores."""
        r, head = self.radius, self.model.head
        h, w = feature.shape[-2:]
        k = 2 * r + 1
        padded = F.pad(feature, (r, r, r, r))
        inside = F.pad(feature.new_ones(1, 1, h, w), (r, r, r, r))
        offsets = torch.arange(k, device=feature.device)
        rows, cols = (ys[:, None] + offsets)[:, :, None], (xs[:, None] + offsets)[:, None, :]
        windows = padded.permute(0, 2, 3, 1)[image[:, None, None], rows, cols].permute(0, 3, 1, 2)  # [n, C, k, k]
        mask = inside[0, 0][rows, cols][:, None]  # [n, 1, k, k]
        windows = windows.float()
        with torch.enable_grad(), torch.autocast(feature.device.type, enabled=False):
            cls_feat, cls_mask = self._tower(head.classification_head.conv, windows, mask, level, image)
            box_feat, box_mask = self._tower(head.regression_head.conv, windows, mask, level, image)
            logits = _centre(_valid(head.classification_head.cls_logits, cls_feat * cls_mask))
            ctr = _centre(_valid(head.regression_head.bbox_ctrness, box_feat * box_mask))[:, 0]
            score = torch.sqrt(torch.sigmoid(logits.gather(1, labels[:, None])[:, 0]) * torch.sigmoid(ctr))
            grads = torch.autograd.grad(score.sum(), windows, create_graph=self.second_order)[0]
        local = F.relu((grads * windows).sum(1))  # [n, k, k]
        n = len(ys)
        canvas = local.new_zeros(n, h + 2 * r, w + 2 * r)
        items = torch.arange(n, device=feature.device)[:, None, None]
        canvas = canvas.index_put((items, rows, cols), local)
        return canvas[:, r:r + h, r:r + w], score

    def _tower(self, tower: nn.Sequential, x: Tensor, mask: Tensor, level: int, image: Tensor
               ) -> tuple[Tensor, Tensor]:
        for layer in tower:
            if isinstance(layer, nn.Conv2d):
                x = _valid(layer, x * mask)
                p = layer.padding[0]
                mask = mask[..., p:mask.shape[-2] - p, p:mask.shape[-1] - p]
            elif isinstance(layer, nn.GroupNorm):
                mean, rstd = self._seen["norm"][id(layer)][level]
                n, c = x.shape[:2]
                g = layer.num_groups
                y = (x.reshape(n, g, -1) - mean[image][:, :, None]) * rstd[image][:, :, None]
                x = y.reshape(x.shape)
                if layer.affine:
                    x = x * layer.weight.view(1, c, 1, 1) + layer.bias.view(1, c, 1, 1)
            else:
                x = layer(x)
        return x, mask


# ---------------------------------------------------------------------------------------------- helpers


def _fcos_radius(model: FCOS) -> int:
    """The head's receptive radius in cells; ValueError when the head is not built of the layers we rerun."""
    head = model.head
    radius = 0
    for branch, outputs in ((head.classification_head, ("cls_logits",)),
                            (head.regression_head, ("bbox_ctrness",))):
        reach = 0
        for layer in branch.conv:
            if isinstance(layer, nn.Conv2d):
                reach += _conv_reach(layer)
            elif not isinstance(layer, (nn.GroupNorm, nn.ReLU)):
                raise ValueError(f"Odam-Train for FCOS reruns the head's towers; it supports Conv2d, GroupNorm and "
                                 f"ReLU, not {type(layer).__name__}")
        radius = max(radius, reach + max(_conv_reach(getattr(branch, o)) for o in outputs))
    return radius


def _conv_reach(conv: nn.Conv2d) -> int:
    """:func:`odam.detectors.groups.conv_reach`, for the square, undilated kernels that :func:`_valid` reruns."""
    reach = conv_reach(conv)
    if reach is None or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError(f"Odam-Train for FCOS needs stride-1 'same' convolutions with odd square kernels in the "
                         f"head, got {conv}")
    return reach


def _valid(conv: nn.Conv2d, x: Tensor) -> Tensor:
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    return F.conv2d(x, conv.weight.to(x.dtype), bias, stride=1, padding=0)


def _centre(x: Tensor) -> Tensor:
    """The centre cell of ``Tensor[n, c, h, w]`` (1x1 when both branches reach equally far)."""
    return x[:, :, x.shape[-2] // 2, x.shape[-1] // 2]


def _to_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps on a coarser FPN level (``Tensor[N, h, w]``) resampled onto the finest level's ``size`` grid.

    Cell ``j`` of a level with stride ``s`` is centred on pixel ``(j + 0.5) * s``. A coarse level can cover
    more than the finest one (its cell counts are rounded up), so it is upsampled by the exact stride ratio
    (a power of two) and cropped, not stretched to ``size``.
    """
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    ratio = 2 ** round(math.log2(size[0] / h))
    up = F.interpolate(maps[:, None], scale_factor=ratio, mode="bilinear", align_corners=False)[:, 0]
    up = F.pad(up, (0, max(0, size[1] - up.shape[-1]), 0, max(0, size[0] - up.shape[-2])))
    return up[:, : size[0], : size[1]]


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    if len(a) == 0:
        return a.new_zeros(0)
    return box_iou(a, b).diagonal() if len(a) <= 512 else torch.cat(
        [box_iou(a[i:i + 512], b[i:i + 512]).diagonal() for i in range(0, len(a), 512)])


def _paste(maps: Tensor, boxes: Tensor, size: tuple[int, int], stride: float) -> Tensor:
    """Maps ``[N, ph, pw]`` stretched over ``boxes`` (model pixels) on a grid of ``size`` cells of ``stride``
    pixels, zero outside the box; bilinear, differentiable w.r.t. the maps."""
    h, w = size
    ys = (torch.arange(h, device=maps.device, dtype=maps.dtype) + 0.5) * stride
    xs = (torch.arange(w, device=maps.device, dtype=maps.dtype) + 0.5) * stride
    gx = 2 * (xs[None] - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]).clamp_min(1e-6) - 1
    gy = 2 * (ys[None] - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]).clamp_min(1e-6) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
