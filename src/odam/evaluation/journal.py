"""Append-only JSON-lines journals that make the evaluation runners resumable: each record is flushed and
synced as it is written, and a line cut short by a killed process is dropped when the journal is read.

A run claims its folder with ``config.json`` (written atomically) only after every setting has been checked,
and a folder whose claim has no record yet may be claimed again with other settings: a run that stopped
before its first record leaves nothing to protect.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from odam._atomic import atomic_write


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


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    """Append records, one JSON line each, in one write, and sync them to disk.

    An exception during the write (``KeyboardInterrupt`` included) cuts the file back to where it was, so the
    journal only ever holds whole lines; only a killed process can leave a partial last line, which
    :func:`complete_lines` drops.
    """
    data = "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def append_row(path: Path, row: dict) -> None:
    """Append one record and sync it to disk (see :func:`append_rows`)."""
    append_rows(path, [row])


def has_records(journals: Sequence[Path]) -> bool:
    """Whether any of the journals holds a complete record."""
    return any(path.exists() and b"\n" in path.read_bytes() for path in journals)


def check_settings(out: Path, settings: dict, defaults: dict, journals: Sequence[Path]) -> None:
    """Write ``out/config.json`` for a new run, or check that a rerun in ``out`` agrees with it on every setting
    (a setting the stored run lacks, added since, counts as its value in ``defaults``). ``ValueError`` names the
    first that differs, unless none of ``journals`` holds a record yet: then the new settings replace the old.

    Call it after every setting has been checked, so that a refused command claims nothing.
    """
    path = out / "config.json"
    mine = json.loads(json.dumps(settings))  # tuples become lists, as they were stored
    text = json.dumps(mine, indent=2) + "\n"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    defaults = json.loads(json.dumps(defaults))
    for key, value in mine.items():
        stored = before.get(key, defaults.get(key))
        if stored != value:
            if not has_records(journals):
                atomic_write(path, text)
                return
            raise ValueError(f"{out} holds a run with {key}={stored!r}, not {value!r}; use another --out")
