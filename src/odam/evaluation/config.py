"""The settings of the evaluation runners: :class:`EvaluationConfig` (``odam evaluate explanations``),
:class:`CorrelationConfig` (``correlation``) and :class:`NmsConfig` (``nms``).

Plain data that imports no torch, so that ``odam evaluate`` can show its defaults at once; what a setting needs
to be checked (the NMS methods' own checks) is imported when it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from odam.nms import Suppression

#: Method names on the command line, in the order of the paper's tables.
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "drise", "odam")
#: Methods whose sanity check is run (D-RISE would cost one full D-RISE run per randomised block).
SANITY_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "odam")


#: Settings a resumed run must share with the run it resumes; the others (which methods, how many objects)
#: may grow between runs, adding records to the same journal.
IDENTITY: tuple[str, ...] = ("data", "model", "match_iou", "steps", "eval_every", "seed", "drise_masks")


@dataclass(frozen=True)
class EvaluationConfig:
    """What an evaluation measures. A rerun into the same folder must agree on :data:`IDENTITY`.

    Attributes:
        data: dataset folder or annotation file.
        model: detector spec for :func:`odam.load_detector`.
        methods: subset of :data:`METHODS`.
        max_objects: explain at most this many objects (the first ones in dataset order).
        drise_objects: D-RISE explains only the first this many of them (``None``: all).
        drise_masks: D-RISE masks per image.
        drise_batch: masked images per forward pass.
        match_iou: a detection explains an object when their IoU is above this.
        steps, eval_every: Deletion and Insertion steps and how often the detector is re-run.
        sanity_objects: the sanity check runs on the first this many objects.
        seed: seeds D-RISE's masks and Deletion's noise (per image and object).
    """

    data: str
    model: str
    methods: tuple[str, ...] = METHODS
    max_objects: int = 200
    drise_objects: int | None = None
    drise_masks: int = 5000
    drise_batch: int = 32
    match_iou: float = 0.9
    steps: int = 100
    eval_every: int = 10
    sanity_objects: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method {unknown[0] if unknown else '(none)'!r}; choose from {','.join(METHODS)}")
        for name in ("max_objects", "drise_masks", "drise_batch", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.drise_objects is not None and self.drise_objects < 0:
            raise ValueError(f"drise-objects must be >= 0, got {self.drise_objects}")
        if not 0 <= self.match_iou < 1:
            raise ValueError(f"match IoU must be in [0, 1), got {self.match_iou}")


#: The suppression methods of :class:`NmsConfig`: :data:`odam.nms.METHODS` (a copy, so that this module imports no
#: torch; a test checks that the two agree).
SUPPRESSIONS: tuple[str, ...] = ("nms", "soft-nms", "feature-nms", "odam-nms")


@dataclass(frozen=True)
class CorrelationConfig:
    """One correlation run; a rerun in the same folder must agree on all of it."""

    data: str
    model: str
    max_images: int = 100
    score_threshold: float = 0.1
    assign_iou: float = 0.5
    overlap_iou: float = 0.3
    short_edge: int = 50
    max_predictions: int = 300

    def check(self) -> None:
        for name in ("max_images", "short_edge", "max_predictions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("score_threshold", "assign_iou", "overlap_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class NmsConfig:
    """One run; a rerun in the same folder must agree on all of it."""

    data: str
    model: str
    feature_model: str | None = None
    methods: tuple[str, ...] = SUPPRESSIONS
    max_images: int | None = None
    iou_threshold: float = 0.5
    low: float = 0.2
    high: float = 0.8
    frozen_norm: bool = True
    short_edge: int = 50
    centred: bool = True
    max_candidates: int = 1000
    sweep: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # method aliases ("odam", "soft", ...) become their names
        names = []
        for m in self.methods:
            if m in SUPPRESSIONS:
                names.append(m)
                continue
            from odam.nms import Suppression

            try:
                names.append(Suppression.parse(m).method)
            except ValueError:
                names.append(m)  # reported by check()
        object.__setattr__(self, "methods", tuple(names))

    def check(self) -> None:
        bad = [m for m in self.methods if m not in SUPPRESSIONS]
        if bad or not self.methods:
            raise ValueError(f"unknown NMS method {bad[0] if bad else ''!r}; choose from {', '.join(SUPPRESSIONS)}")
        if self.max_images is not None and (isinstance(self.max_images, bool) or self.max_images < 1):
            raise ValueError(f"max_images must be a positive integer, got {self.max_images!r}")
        for name in ("iou_threshold", "low", "high"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for method in (*self.methods, "nms", "odam-nms"):  # validates short_edge, max_candidates, ...
            self.suppression(method)

    def suppression(self, method: str) -> Suppression:
        from odam.nms import Suppression

        common = {"iou_threshold": self.iou_threshold, "max_candidates": self.max_candidates,
                  "frozen_norm": self.frozen_norm, "short_edge": self.short_edge, "centred": self.centred}
        if method == "odam-nms":
            return Suppression(method, low=self.low, high=self.high, **common)
        return Suppression(method, **common)
