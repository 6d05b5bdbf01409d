"""Temporary attributes on a user's module instance, undone exactly (the module is borrowed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MISSING = object()


def patch(obj: Any, name: str, value: Any) -> Callable[[], None]:
    """Set ``obj.name = value`` on the instance; returns the undo, which restores what the instance had
    (or removes the attribute if it had none of its own)."""
    before = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)

    def undo() -> None:
        if before is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, before)
    return undo
