"""Append-only JSON-lines journals that make every evaluation runner resumable: each record is flushed and
synced as it is written, and a line cut short by a killed process is dropped when the journal is read.

Two kinds of journal share the same file handling (:func:`append_rows`, :func:`complete_lines`):

* per-image records keyed by ``image_id`` (the correlation and NMS runners): :func:`image_rows`,
  :func:`append_row`;
* per-object records keyed by ``(image_id, ann_id, method)`` (the explanation runner): :class:`ObjectJournal`
  to resume, :func:`object_records` to summarise.

A run claims its folder with ``config.json`` (written atomically) only after every setting has been checked
(:func:`check_settings`, :func:`claim`), and a folder whose claim has no record yet may be claimed again with
other settings: a run that stopped before its first record leaves nothing to protect.
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


def claim(out: Path, settings: dict, journals: Sequence[Path], paths: Sequence[str] = ()) -> None:
    """Write ``out/config.json`` for a new run, or check that the run there agrees on every setting.

    Unlike :func:`check_settings`, a stored run that lacks a setting differs on it, and the error names every
    setting that differs, sorted. The settings named in ``paths`` are file paths: they agree when they resolve to
    the same file. A run that differs is replaced when none of ``journals`` holds a record yet.

    Call it after every setting has been checked, so that a refused command claims nothing.

    Raises:
        ValueError: ``out`` holds a run with other settings and records (one line).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> claim(out, {"data": "d", "steps": 10}, [out / "objects.jsonl"], paths=("data",))
        >>> append_row(out / "objects.jsonl", {"image_id": 1})
        >>> claim(out, {"data": "./d", "steps": 20}, [out / "objects.jsonl"], paths=("data",))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... holds a run with other settings (steps); use another --out
    """
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        same_file = {k: Path(str(old.get(k))).resolve() == Path(str(settings.get(k))).resolve() for k in paths}
        changed = sorted(k for k in settings if old.get(k) != settings[k] and not same_file.get(k, False))
        if not changed:
            return
        if has_records(journals):
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(settings, indent=2) + "\n")


def object_key(row: dict) -> tuple[int, int, str]:
    """The key of a per-object record: ``(image_id, ann_id, method)``.

    Example:
        >>> object_key({"image_id": 3, "ann_id": 7, "method": "odam", "order": 0})
        (3, 7, 'odam')
    """
    return int(row["image_id"]), int(row["ann_id"]), str(row["method"])


class ObjectJournal:
    """An append-only JSON-lines file of per-object records, keyed by :func:`object_key`.

    Opening it reads the keys of the records there, dropping a last line cut short by a killed process (see
    :func:`complete_lines`), so the next append starts on a fresh line. Each :meth:`extend` (one image's
    records) is one write, synced to disk.

    Attributes:
        path: the journal file (created by the first :meth:`extend`).
        keys: the keys of the records in the file.

    Raises:
        ValueError: a complete line that is not a record (``path:line: not a record of this evaluation``).

    Example:
        >>> import tempfile
        >>> journal = ObjectJournal(Path(tempfile.mkdtemp()) / "objects.jsonl")
        >>> journal.extend([{"order": 0, "image_id": 1, "ann_id": 2, "method": "odam"}])
        >>> (1, 2, "odam") in ObjectJournal(journal.path), (1, 2, "gradcam") in journal
        (True, False)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[tuple[int, int, str]] = set()
        for n, line in enumerate(complete_lines(path), 1):
            try:
                self.keys.add(object_key(json.loads(line)))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a record of this evaluation ({err})") from None

    def __contains__(self, key: tuple[int, int, str]) -> bool:
        return key in self.keys

    def extend(self, rows: Sequence[dict]) -> None:
        """Append the records in one write (see :func:`append_rows`) and add their keys."""
        append_rows(self.path, rows)
        self.keys.update((row["image_id"], row["ann_id"], row["method"]) for row in rows)


def object_records(path: Path, methods: Sequence[str]) -> list[dict]:
    """The records of a per-object journal, one per key (the first written), sorted by their ``order`` and then
    by their method's position in ``methods``.

    Reading changes nothing: lines that are not JSON (a line cut short by a kill) and blank lines are skipped
    (:class:`ObjectJournal` drops a cut line on the next run). A missing file has no records.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "objects.jsonl"
        >>> rows = [{"order": 1, "image_id": 1, "ann_id": 2, "method": "odam"},
        ...         {"order": 0, "image_id": 1, "ann_id": 1, "method": "odam"},
        ...         {"order": 0, "image_id": 1, "ann_id": 1, "method": "gradcam"}]
        >>> append_rows(path, rows)
        >>> [(r["order"], r["method"]) for r in object_records(path, ("gradcam", "odam"))]
        [(0, 'gradcam'), (0, 'odam'), (1, 'odam')]
    """
    if not path.exists():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill; ObjectJournal drops it on the next run
        key = (row["image_id"], row["ann_id"], row["method"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["order"], methods.index(r["method"])))
