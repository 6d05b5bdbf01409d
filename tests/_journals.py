"""What the resume and distributed-evaluation tests read from a run's folder: its JSON-lines journals, and its
summaries without their timing fields."""

from __future__ import annotations

import json
from pathlib import Path


def journal_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines journal (none if it is missing); every line must be whole."""
    text = path.read_text() if path.exists() else ""
    assert text == "" or text.endswith("\n")  # every line whole
    return [json.loads(line) for line in text.splitlines()]


def without(value: object, keys: tuple[str, ...]) -> object:
    """``value`` without the fields ``keys`` (timings), at any depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value
