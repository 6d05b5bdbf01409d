"""Evaluation over datasets: the explanation metrics runner and its reports.

The settings (:mod:`odam.evaluation.config`) import no torch; ``run`` and ``summarize`` load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from odam.evaluation.config import METHODS, EvaluationConfig

if TYPE_CHECKING:
    from odam.evaluation.explanations import run
    from odam.evaluation.report import summarize

__all__ = ["METHODS", "EvaluationConfig", "run", "summarize"]

_HOMES = {"run": "odam.evaluation.explanations", "summarize": "odam.evaluation.report"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'odam.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
