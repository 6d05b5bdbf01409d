"""Append-only JSON-lines journals that make every evaluation runner resumable: each record is flushed and
synced as it is written, and a line cut short by a killed process is dropped when the journal is read.

Two kinds of journal share the same file handling (:func:`append_rows`, :func:`complete_lines`) and the same
class, :class:`Journal` (what is done, to resume):

* per-image records keyed by ``image_id`` (the correlation and NMS runners): :func:`image_key`,
  :func:`image_rows` to summarise;
* per-object records keyed by ``(image_id, ann_id, method)`` (the explanation runner): :class:`ObjectJournal`
  to resume, :func:`object_records` to summarise.

**Several processes.** Under ``torchrun`` each rank appends to its own file: rank 0 to the journal's own name
(``images.jsonl``, as a single process does, so runs from before distributed evaluation still resume), rank
``r`` to ``images.rank{r}.jsonl`` beside it (:func:`rank_path`). Whatever reads a journal reads the whole family
(:func:`journal_paths`): a record is done if any rank's file holds it, and the merge keeps the first record of
each key (rank 0's file first, then by rank, each in its order of lines). A process changes no file but its
own: it cuts its own last line if a kill left it short, and reads the others' up to their last newline.

A run claims its folder with ``config.json`` (written atomically) only after every setting has been checked
(:func:`check_settings`, :func:`claim`), and a folder whose claim has no record yet may be claimed again with
other settings: a run that stopped before its first record leaves nothing to protect.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

from odam._atomic import atomic_write


def rank_path(path: Path, rank: int) -> Path:
    """The file rank ``rank`` writes the journal ``path`` to: ``path`` itself for rank 0 (and a single process),
    ``images.rank2.jsonl`` beside ``images.jsonl`` for rank 2.

    Example:
        >>> rank_path(Path("run/images.jsonl"), 0).as_posix(), rank_path(Path("run/images.jsonl"), 2).as_posix()
        ('run/images.jsonl', 'run/images.rank2.jsonl')
    """
    if rank < 0:
        raise ValueError(f"expected a rank >= 0, got {rank}")
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def journal_paths(path: Path) -> list[Path]:
    """The journal ``path`` (whether it exists or not) and the rank journals beside it that exist
    (:func:`rank_path`), by rank: whatever number of processes wrote them, they are one journal.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for name in ("images.rank10.jsonl", "images.rank2.jsonl", "images.rank0.jsonl", "objects.rank1.jsonl"):
        ...     _ = (run / name).write_text("")
        >>> [p.name for p in journal_paths(run / "images.jsonl")]
        ['images.jsonl', 'images.rank2.jsonl', 'images.rank10.jsonl']
    """
    pattern = re.compile(rf"{re.escape(path.stem)}\.rank([1-9][0-9]*){re.escape(path.suffix)}")
    ranks = []
    if path.parent.is_dir():
        for other in path.parent.iterdir():
            match = pattern.fullmatch(other.name)
            if match:
                ranks.append((int(match[1]), other))
    return [path, *(other for _, other in sorted(ranks))]


def whole_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines journal up to its last newline, read without changing the file: a last line
    cut short by a kill, or still being written by another process, is left out. A missing file has no lines.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "images.jsonl"
        >>> _ = path.write_text('{"image_id": 1}\\n{"image_id": 2')
        >>> whole_lines(path), path.read_text().endswith("2")
        (['{"image_id": 1}'], True)
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    return raw[: raw.rfind(b"\n") + 1].decode("utf-8").splitlines()


def complete_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines journal; a last line cut short by a killed process is cut from the file too,
    so that the next append starts on a fresh line. A missing file has no lines. Only the process that appends
    to ``path`` may call it; others read with :func:`whole_lines`."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    return raw.decode("utf-8").splitlines()


def _records(path: Path) -> Iterable[tuple[Path, int, dict]]:
    """``(file, line number, record)`` of every whole line of the journal ``path``'s family, in merge order."""
    for part in journal_paths(path):
        for n, line in enumerate(whole_lines(part), 1):
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{part}:{n}: not a record of this run ({err})") from None
            yield part, n, row


def image_key(row: dict) -> int:
    """The key of a per-image record: its ``image_id``.

    Example:
        >>> image_key({"image_id": "3", "predictions": 2})
        3
    """
    return int(row["image_id"])


def image_rows(path: Path) -> dict[int, dict]:
    """Per-image records by ``image_id``, from the journal ``path`` and its rank journals (:func:`journal_paths`):
    the first of repeated ones, ``path`` first, then by rank. Reading changes nothing.

    Raises:
        ValueError: a whole line that is not a record (``file:line: not a record of this run``).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> append_rows(run / "images.jsonl", [{"image_id": 4, "v": "a"}])
        >>> append_rows(run / "images.rank1.jsonl", [{"image_id": 1, "v": "b"}, {"image_id": 4, "v": "c"}])
        >>> image_rows(run / "images.jsonl")
        {4: {'image_id': 4, 'v': 'a'}, 1: {'image_id': 1, 'v': 'b'}}
    """
    rows: dict[int, dict] = {}
    for part, n, row in _records(path):
        try:
            rows.setdefault(image_key(row), row)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{part}:{n}: not a record of this run ({err})") from None
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
    """Whether any of the journals, or any of their rank journals (:func:`journal_paths`), holds a whole record."""
    return any(b"\n" in part.read_bytes() for path in journals for part in journal_paths(path) if part.exists())


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


class Journal:
    """What is done: the keys of the records in a journal and its rank journals, and this rank's file to add to.

    Opening it cuts a last line cut short by a killed process from this rank's own file (see
    :func:`complete_lines`), so the next append starts on a fresh line, and reads the keys of every rank's file
    (:func:`journal_paths`) without changing the others. Each :meth:`extend` is one write, synced to disk.

    Args:
        path: the journal (rank 0's file, e.g. ``images.jsonl``).
        key: a record's key, e.g. :func:`image_key` or :func:`object_key`.
        rank: the rank that appends (:func:`rank_path`).

    Attributes:
        path: this rank's file (created by the first :meth:`extend`).
        keys: the keys of the records in the journal's files when opened, and of those added since.

    Raises:
        ValueError: a whole line that is not a record (``file:line: not a record of this run``).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> append_rows(run / "images.jsonl", [{"image_id": 1}])
        >>> journal = Journal(run / "images.jsonl", image_key, rank=1)
        >>> journal.extend([{"image_id": 2}])
        >>> journal.path.name, 1 in journal, 2 in Journal(run / "images.jsonl", image_key), 3 in journal
        ('images.rank1.jsonl', True, True, False)
    """

    def __init__(self, path: Path, key: Callable[[dict], Hashable], rank: int = 0) -> None:
        self.path, self.key = rank_path(path, rank), key
        complete_lines(self.path)
        self.keys: set[Hashable] = set()
        for part, n, row in _records(path):
            try:
                self.keys.add(key(row))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{part}:{n}: not a record of this run ({err})") from None

    def __contains__(self, key: Hashable) -> bool:
        return key in self.keys

    def extend(self, rows: Sequence[dict]) -> None:
        """Append the records in one write (see :func:`append_rows`) and add their keys."""
        append_rows(self.path, rows)
        self.keys.update(self.key(row) for row in rows)


class ObjectJournal(Journal):
    """A :class:`Journal` of per-object records, keyed by :func:`object_key`.

    Example:
        >>> import tempfile
        >>> journal = ObjectJournal(Path(tempfile.mkdtemp()) / "objects.jsonl")
        >>> journal.extend([{"order": 0, "image_id": 1, "ann_id": 2, "method": "odam"}])
        >>> (1, 2, "odam") in ObjectJournal(journal.path), (1, 2, "gradcam") in journal
        (True, False)
    """

    def __init__(self, path: Path, rank: int = 0) -> None:
        super().__init__(path, object_key, rank)


def object_records(path: Path, methods: Sequence[str]) -> list[dict]:
    """The records of a per-object journal and its rank journals (:func:`journal_paths`), one per key (the first
    written: ``path`` first, then by rank), sorted by their ``order`` and then by their method's position in
    ``methods``.

    Reading changes nothing: a last line cut short by a kill (:class:`ObjectJournal` drops it on the next run),
    and lines that are blank or not JSON, are skipped. A missing file has no records.

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
    rows, seen = [], set()
    for part in journal_paths(path):
        for line in whole_lines(part):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            key = object_key(row)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return sorted(rows, key=lambda r: (r["order"], methods.index(r["method"])))
