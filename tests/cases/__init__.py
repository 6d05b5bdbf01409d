"""Adapter conformance cases: one :class:`Case` per detector family, run by ``tests/test_conformance.py``.

A new family is supported when its case passes the suite. A case module (``tests/cases/<family>.py``) defines
``CASES: list[Case]``; add its name to :data:`MODULES`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from odam.detectors.base import DetectorAdapter

#: Case modules, in the order the suite lists them.
MODULES = ("torchvision", "retinaface", "detr", "yolo")


@dataclass
class Case:
    """One detector family, as the conformance suite sees it.

    Attributes:
        id: the test id, e.g. ``"torchvision-fcos"``.
        build: returns the user's model, seeded and in eval mode (built once per session, see :func:`get`).
        wrap: the adapter for that model (usually ``odam.wrap_detector``).
        native: the family's own inference on one image (``Tensor[3, H, W]`` in [0, 1]), as
            ``(boxes [N, 4] xyxy original pixels, scores [N], labels [N])``, in the model's own order; it may
            use a reference outside the model (e.g. onnxruntime).
        image: a test image ``Tensor[3, H, W]`` in [0, 1] on which ``detect`` returns at least two detections;
            its size must differ from the model's input size, so resizing (and padding) is exercised.
        atol: tolerance on boxes (pixels) and scores between ``detect`` and ``native``.
        score_of: maps the explained ``"score"`` attribute to the score ``detect`` reports (identity unless the
            adapter explains, e.g., a logit).
        probe: a module inside the model that the suite hooks to check the model is borrowed (any submodule
            that runs in ``detect``).
    """

    id: str
    build: Callable[[], nn.Module]
    native: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, Tensor]]
    image: Callable[[], Tensor]
    probe: Callable[[nn.Module], nn.Module]
    wrap: Callable[[nn.Module], DetectorAdapter] = field(default=None)  # type: ignore[assignment]
    atol: float = 1e-4
    score_of: Callable[[Tensor], Tensor] = lambda y: y

    def __post_init__(self) -> None:
        if self.wrap is None:
            import odam

            self.wrap = odam.wrap_detector


_MODELS: dict[str, nn.Module] = {}


def get(case: Case) -> nn.Module:
    """The case's model, built on first use and shared (tests must leave it as they found it)."""
    if case.id not in _MODELS:
        torch.manual_seed(0)
        _MODELS[case.id] = case.build()
    return _MODELS[case.id]


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for name in MODULES:
        if importlib.util.find_spec(f"tests.cases.{name}") is None:  # TODO(issue 7): strict once all exist
            continue
        cases.extend(importlib.import_module(f"tests.cases.{name}").CASES)
    return cases
