"""Adapter conformance cases: one :class:`odam.testing.Case` per detector family, run by
``tests/test_conformance.py``.

A case module (``tests/cases/<family>.py``) defines ``CASES: list[Case]``; :data:`MODULES` lists them all, and a
missing one is an error (a family's extra is installed by ``make test``).
"""

from __future__ import annotations

import importlib

from odam.testing import Case

__all__ = ["MODULES", "Case", "all_cases"]

#: Case modules, in the order the suite lists them.
MODULES = ("torchvision", "retinaface", "detr", "yolo")


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for name in MODULES:
        cases.extend(importlib.import_module(f"tests.cases.{name}").CASES)
    return cases
