"""Every test, doctests included, gets its own temporary folder as the default one (``tempfile.gettempdir()``
and ``$TMPDIR`` for the subprocesses it starts), so that what a test or an example leaves behind with
``tempfile.mkdtemp()`` goes with the test's ``tmp_path``. pyproject.toml keeps only failed tests' folders.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
