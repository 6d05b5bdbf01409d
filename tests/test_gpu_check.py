"""benchmarks/gpu_check.sh where no GPU is visible: one line, exit 0, nothing run; its usage errors; its syntax."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the test means the same on a machine that has one.
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable} | env
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_without_a_gpu_it_says_so_in_one_line_and_passes() -> None:
    result = _run()
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "gpu_check: no CUDA GPU visible to torch, nothing to run\n", "")


def test_usage_errors_exit_2_before_anything_runs(tmp_path: Path) -> None:
    result = _run("--frobnicate")
    assert result.returncode == 2 and result.stderr == "gpu_check: unknown argument --frobnicate (see --help)\n"
    result = _run("--budget", "soon")
    assert result.returncode == 2 and "--budget must be whole seconds, got soon" in result.stderr
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    result = _run("--write", str(doc))
    assert result.returncode == 2 and "has no <!-- gpu_check:start -->" in result.stderr
    assert doc.read_text() == "no markers here\n"


def test_help_lists_the_steps() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for step in ("--device cuda", "bench_batched.py", "bench_nms.py", "--resume", "NCCL", "--write"):
        assert step in result.stdout


def test_the_script_parses_and_passes_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_performance_md_has_the_markers_it_fills() -> None:
    text = (SCRIPT.parents[1] / "docs" / "PERFORMANCE.md").read_text()
    assert text.count("<!-- gpu_check:start -->") == 1 and text.count("<!-- gpu_check:end -->") == 1
