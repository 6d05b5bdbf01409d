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


def check_settings(out: Path, settings: dict, defaults: dict) -> None:
    """Write ``out/config.json`` for a new run, or check that a rerun in ``out`` agrees with it on every setting
    (a setting the stored run lacks, added since, counts as its value in ``defaults``). ``ValueError`` names the
    first that differs."""
    path = out / "config.json"
    mine = json.loads(json.dumps(settings))  # tuples become lists, as they were stored
    if not path.exists():
        path.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    defaults = json.loads(json.dumps(defaults))
    for key, value in mine.items():
        stored = before.get(key, defaults.get(key))
        if stored != value:
            raise ValueError(f"{out} holds a run with {key}={stored!r}, not {value!r}; use another --out")
