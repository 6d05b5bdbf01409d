"""The training engine behind ``odam train`` (single process, or DDP under torchrun), and Odam-Train.

:class:`TrainConfig` is plain data (:mod:`odam.train.config`); the rest, which imports torch, loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from odam.train.config import TrainConfig

if TYPE_CHECKING:
    from odam.train.engine import train
    from odam.train.evaluate import evaluate_coco
    from odam.train.odam_train import OdamTrainer

__all__ = ["OdamTrainer", "TrainConfig", "evaluate_coco", "train"]

_HOMES = {"train": "odam.train.engine", "evaluate_coco": "odam.train.evaluate", "OdamTrainer": "odam.train.odam_train"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'odam.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
