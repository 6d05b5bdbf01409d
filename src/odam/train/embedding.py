"""FeatureNMS's embedding head, trained inside a detector's training step (``odam train --feature-embedding``).

:class:`EmbeddingTrainer` watches one training forward pass of a torchvision FCOS, RetinaNet or Faster R-CNN
built with ``embedding_dim > 0`` (see :func:`odam.architectures.build_detector`), then embeds the positives the
detector's own matcher assigned to ground-truth objects and returns :func:`odam.losses.pair_margin_loss` on
them:

* **FCOS / RetinaNet**: the embedding head runs on every FPN level the detection head saw; a positive location
  (or anchor) takes the vector at its cell.
* **Faster R-CNN**: the sampled proposals with a foreground label, embedded from the box head's representation.

The loss trains the embedding head and, through the features it reads, the network below it, jointly with the
detection losses (as FeatureNMS does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from odam._patching import patch as _patch
from odam.losses import pair_margin_loss


class EmbeddingTrainer:
    """FeatureNMS's pair margin loss for the embedding head of one detector during training.

    Args:
        model: the detector (not its DDP wrapper), with ``model.embedding_head``.
        alpha, beta: the margin and the boundary of :func:`odam.losses.pair_margin_loss`.
        weight: the loss weight.
        max_positives: at most this many positives per image (drawn from torch's global generator).

    Example:
        >>> import torch, odam
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = odam.create_model("odam:fcos", num_classes=2, min_size=64, max_size=64, embedding_dim=8).train()
        >>> trainer = EmbeddingTrainer(model)
        >>> with trainer.capture():
        ...     losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4, 40, 60], [20, 2, 60, 50]]),
        ...                                                "labels": torch.tensor([1, 1])}])
        >>> loss, stats = trainer.loss()
        >>> bool(loss > 0), int(stats["different_pairs"]) > 0
        (True, True)
    """

    def __init__(self, model: nn.Module, *, alpha: float = 0.2, beta: float = 1.0, weight: float = 1.0,
                 max_positives: int = 128) -> None:
        if not isinstance(model, (FCOS, RetinaNet, FasterRCNN)):
            raise ValueError(f"the embedding head trains on torchvision FCOS, RetinaNet and Faster R-CNN, got "
                             f"{type(model).__name__}")
        if not isinstance(getattr(model, "embedding_head", None), nn.Module):
            raise ValueError("this model has no embedding head: build it with embedding_dim > 0")
        if isinstance(max_positives, bool) or not isinstance(max_positives, int) or max_positives < 2:
            raise ValueError(f"max_positives must be an integer >= 2, got {max_positives!r}")
        self.model, self.alpha, self.beta, self.weight = model, alpha, beta, weight
        self.max_positives = max_positives
        self._seen: dict[str, Any] = {}

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Instrument the model for its training forward passes inside the block (the last one counts);
        everything is removed after, also on an error."""
        self._seen = {}
        m = self.model
        with ExitStack() as undo:  # hooks removed and patches undone in reverse order, also on an error
            if isinstance(m, FasterRCNN):
                rh = m.roi_heads
                undo.callback(_patch(rh, "select_training_samples", self._wrap_sampling(rh.select_training_samples)))
                undo.callback(rh.box_head.register_forward_hook(self._on_box_head).remove)
            else:
                undo.callback(m.head.register_forward_hook(self._on_head).remove)
                undo.callback(_patch(m.head, "compute_loss", self._wrap_loss(m.head.compute_loss)))
            yield

    def _on_head(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._seen = {"features": list(args[0])}

    def _wrap_loss(self, original: Any) -> Any:
        def compute_loss(targets: list, head_outputs: dict, anchors: list, matched_idxs: list, *rest: Any) -> Any:
            self._seen["matched"] = matched_idxs
            return original(targets, head_outputs, anchors, matched_idxs, *rest)
        return compute_loss

    def _wrap_sampling(self, original: Any) -> Any:
        def select_training_samples(proposals: list, targets: list) -> Any:
            out = original(proposals, targets)
            self._seen = {"proposals": out[0], "matched": out[1], "labels": out[2]}
            return out
        return select_training_samples

    def _on_box_head(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._seen["representation"] = output

    def loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted pair margin loss of the last captured pass, and its stats."""
        s, self._seen = self._seen, {}  # do not keep the batch's activations alive after the step
        if "matched" not in s:
            raise RuntimeError("no training forward pass was captured: run the model on images and targets in "
                               "train mode inside 'with trainer.capture():'")
        head = self.model.embedding_head
        if isinstance(self.model, FasterRCNN):
            labels = torch.cat(s["labels"])
            counts = torch.tensor([len(p) for p in s["proposals"]], device=labels.device)
            image = torch.repeat_interleave(torch.arange(len(counts), device=labels.device), counts)
            gt = torch.cat(s["matched"])
            pos = torch.where(labels > 0)[0]
            keep = torch.cat([self._sample(pos[image[pos] == b]) for b in range(len(counts))])
            emb = head(s["representation"][keep])
            return pair_margin_loss(emb, gt[keep], image_index=image[keep], alpha=self.alpha, beta=self.beta,
                                    weight=self.weight)
        features = s["features"]
        n_anchors = self.model.head.classification_head.num_anchors
        # [B, sum(h * w * A), E]: the cell's vector for each anchor, in the head's flattening order
        flat = torch.cat([head(f).permute(0, 2, 3, 1).repeat_interleave(n_anchors, 2).flatten(1, 2)
                          for f in features], 1)
        embs, gts, images = [], [], []
        for b, matched in enumerate(s["matched"]):
            idx = self._sample(torch.where(matched >= 0)[0])
            embs.append(flat[b, idx])
            gts.append(matched[idx])
            images.append(torch.full_like(idx, b))
        return pair_margin_loss(torch.cat(embs), torch.cat(gts), image_index=torch.cat(images), alpha=self.alpha,
                                beta=self.beta, weight=self.weight)

    def _sample(self, idx: Tensor) -> Tensor:
        if len(idx) <= self.max_positives:
            return idx
        return idx[torch.randperm(len(idx))[: self.max_positives].to(idx.device)]
