"""One atomic writer for every file odam writes: a file either keeps its old content or has the new one, never
a part of it, whether the process finishes, raises, is interrupted (Ctrl-C) or is killed.

The new content goes to a temporary file next to the target, created with mode ``0o666 & ~umask`` (what
``open(path, "w")`` gives, so an ordinary ``0644`` file, not ``mkstemp``'s private ``0600``), is synced to
disk and then renamed over the target. On any exception, ``KeyboardInterrupt`` included, the temporary file
is removed and the target is left as it was. A process killed with SIGKILL may leave a temporary file (its
name starts with ``.`` and contains ``.tmp``), never a cut target.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; when the block ends without an exception, it replaces
    ``path``. The temporary name keeps ``path``'s suffix, for writers that choose a format by it.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "plot.png"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_bytes(b"\\x89PNG...")
        >>> target.read_bytes()[:4], sorted(p.name for p in target.parent.iterdir())
        (b'\\x89PNG', ['plot.png'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask, as open() gives
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "config.json"
        >>> atomic_write(target, '{"a": 1}\\n')
        >>> target.read_text()
        '{"a": 1}\\n'
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)

