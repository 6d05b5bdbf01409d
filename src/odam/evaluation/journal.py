"""Append-only JSON-lines journals that make the evaluation runners resumable: each record is flushed and
synced as it is written, and a line cut short by a killed process is dropped when the journal is read."""

from __future__ import annotations

import json
import os
from pathlib import Path


def complete_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines journal; a last line cut short by a killed process is cut from the file too,
    so that the next append starts on a fresh line. A missing file has no lines."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    return raw.decode("utf-8").splitlines()


def image_rows(path: Path) -> dict[int, dict]:
    """Per-image records by ``image_id`` (the first of repeated ones)."""
    rows: dict[int, dict] = {}
    for n, line in enumerate(complete_lines(path), 1):
        try:
            row = json.loads(line)
            rows.setdefault(int(row["image_id"]), row)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a record of this run ({err})") from None
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one record and sync it to disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
