"""The README works for a newcomer: every Python snippet (of the README and of docs/EXPLORER.md) runs offline as
written, each on its own in a fresh interpreter with the network cut, unless it is marked ``# needs a download``
(then it must still compile); every ``photo:NAME`` the command-line examples name exists; every ``odam`` command
line in it parses."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from odam.cli import build_parser
from odam.cli.common import NAMED_IMAGES

ROOT = Path(__file__).parents[1]
TEXT = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SNIPPETS += re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "EXPLORER.md").read_text(), flags=re.S)
NEEDS_DOWNLOAD = "# needs a download"
#: Run before each snippet: any attempt to reach the network raises.
OFFLINE = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("the README snippet tried to reach the network")
socket.socket.connect = _refuse
socket.create_connection = _refuse
"""


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 4
    assert sum(NEEDS_DOWNLOAD not in s for s in SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_offline_as_written(index: int, tmp_path: Path) -> None:
    code = SNIPPETS[index]
    compile(code, f"README snippet {index}", "exec")
    if NEEDS_DOWNLOAD in code:
        return
    env = {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin",
           "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", OFFLINE + code],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"README snippet {index} failed:\n{code}\n{result.stderr[-3000:]}"


def test_named_photos_exist() -> None:
    named = set(re.findall(r"photo:([a-z_0-9]+)", TEXT))
    assert named, "the README's command-line examples should name images that exist"
    assert named <= set(NAMED_IMAGES), sorted(named - set(NAMED_IMAGES))


def _command_lines() -> list[list[str]]:
    """Every ``odam ...`` command of the README's indented blocks, continuation lines joined, comments dropped;
    those with ``...`` (elided options) or ``[--option]`` (a usage line) left out."""
    lines, joined = [], ""
    for raw in TEXT.splitlines():
        line = raw.strip()
        if joined:
            joined += " " + line
        elif line.startswith("odam ") and raw.startswith("    "):
            joined = line
        else:
            continue
        if joined.endswith("\\"):
            joined = joined[:-1]
            continue
        if "..." not in joined and " [-" not in joined:  # elided options, or a usage line
            lines.append(shlex.split(joined.split(" # ")[0].split("  #")[0])[1:])
        joined = ""
    return lines


def test_every_command_line_parses() -> None:
    """Each command of the README is accepted by the command's parser: its options exist and take those values
    (parsed only; nothing runs)."""
    commands = _command_lines()
    assert len(commands) >= 8
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"odam {' '.join(argv)}: rejected by the parser ({exit_.code})")
