"""The settings of a training run (:class:`TrainConfig`): plain data, importing no torch, so that ``odam train``
can show its defaults at once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint (``training``).

    Attributes:
        model: ``"fcos"``, ``"retinanet"`` or ``"fasterrcnn"``.
        backbone: see :data:`odam.architectures.BACKBONES`.
        data: the training dataset (a folder with ``annotations.json`` or ``annotations.odgt``, or the file).
        out: the checkpoint folder.
        val: the validation dataset; ``None`` holds out the last ``val_fraction`` of ``data``.
        epochs: passes over the training set.
        batch_size: images per step and process.
        lr: peak learning rate, reached after ``warmup_iters`` linear warm-up steps, then cosine decay to 0.
        momentum, weight_decay: SGD's (no decay on biases and norm weights).
        clip_grad: gradient-norm clipping threshold.
        seed: the seed every random choice derives from.
        min_size, max_size: the model's resize limits at inference.
        jitter: scale jitter: each training image is resized to one of :func:`jitter_sizes` (five sizes spread
            over ``[jitter[0], jitter[1]] * min_size``, rounded to multiples of 16, plus ``min_size``), at random.
        flip: probability of a horizontal flip.
        nms_thresh, score_thresh: the model's inference settings.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun each rank uses ``cuda:LOCAL_RANK``.
        workers: data-loading processes per rank.
        max_iters: stop each epoch after this many iterations (for smoke tests); ``None`` for all.
        odam_train: add Odam-Train's consistency and separation loss (paper Sec. 3.2; FCOS and Faster R-CNN),
            see :mod:`odam.train.odam_train`.
        odam_weight: its weight lambda.
        odam_negatives: ``"all"`` (Eq. 3) or ``"overlapping"`` (only other objects' positives whose box
            overlaps the best one's).
        odam_max_positives: at most this many positives per image enter the loss; ``None`` for all.
        odam_second_order: differentiate through the gradient weights too (slower; reaches the head).
        feature_embedding: add FeatureNMS's embedding head (``embedding_dim``-d) and train it with the pair
            margin loss (weight ``embedding_weight``), see :mod:`odam.train.embedding`.
    """

    model: str
    data: str
    out: str
    backbone: str = "tiny"
    val: str | None = None
    val_fraction: float = 0.05
    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 300
    clip_grad: float = 10.0
    seed: int = 0
    min_size: int = 320
    max_size: int = 320
    jitter: tuple[float, float] = (0.8, 1.2)
    flip: float = 0.5
    nms_thresh: float = 0.6
    score_thresh: float = 0.05
    device: str = "cpu"
    workers: int = 0
    max_iters: int | None = None
    odam_train: bool = False
    odam_weight: float = 1.0
    odam_negatives: str = "all"
    odam_max_positives: int | None = None
    odam_second_order: bool = False
    feature_embedding: bool = False
    embedding_dim: int = 32
    embedding_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        from odam.architectures import ARCHITECTURES, BACKBONES
        from odam.losses import NEGATIVES

        if self.model not in ARCHITECTURES:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(ARCHITECTURES)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {', '.join(BACKBONES)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("min_size", 1), ("max_size", 1), ("warmup_iters", 0),
                          ("workers", 0), ("seed", 0), ("max_iters", 1), ("odam_max_positives", 1),
                          ("embedding_dim", 1)):
            value = getattr(self, name)
            if name in ("max_iters", "odam_max_positives") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (self.clip_grad > 0 and math.isfinite(self.clip_grad)):
            raise ValueError(f"clip_grad must be a positive number, got {self.clip_grad!r}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        lo, hi = self.jitter
        if not 0 < lo <= 1.0 <= hi:
            raise ValueError(f"jitter must satisfy 0 < low <= 1 <= high, got {self.jitter!r}")
        if not (self.odam_weight >= 0 and math.isfinite(self.odam_weight)):
            raise ValueError(f"odam_weight must be a non-negative number, got {self.odam_weight!r}")
        if self.odam_negatives not in NEGATIVES:
            raise ValueError(f"odam_negatives must be one of {', '.join(NEGATIVES)}, got {self.odam_negatives!r}")
        if not (self.embedding_weight >= 0 and math.isfinite(self.embedding_weight)):
            raise ValueError(f"embedding_weight must be a non-negative number, got {self.embedding_weight!r}")
        if self.odam_train and self.model == "retinanet":
            raise ValueError("--odam-train supports fcos and fasterrcnn, not retinanet")

    def model_kwargs(self, num_classes: int) -> dict[str, Any]:
        kwargs = {"backbone": self.backbone, "num_classes": num_classes, "min_size": self.min_size,
                  "max_size": self.max_size, "nms_thresh": self.nms_thresh, "score_thresh": self.score_thresh}
        if self.feature_embedding:
            kwargs["embedding_dim"] = self.embedding_dim
        return kwargs
