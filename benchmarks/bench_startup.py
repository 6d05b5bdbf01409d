"""How long the ``odam`` command takes to answer ``--help`` and argument errors, and how big the wheel is.

Each command runs ``--repeats`` times in a fresh interpreter, taking turns so that the machine's load falls on all
alike; the table gives the median wall time and its ratio to ``python -c "import torch"`` measured in the same
rounds (what every command paid before the command line became lazy). With ``--wheel`` it also builds the wheel
(``pip wheel . --no-deps``) and reports its size against the 25 MB goal.

    .venv/bin/python benchmarks/bench_startup.py --wheel --write docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from odam.data.stats import write_block

ROOT = Path(__file__).resolve().parents[1]
ODAM = [sys.executable, "-m", "odam"]
#: (label, argv, goal in seconds or None)
COMMANDS: tuple[tuple[str, list[str], float | None], ...] = (
    ("`python -c pass`", [sys.executable, "-c", "pass"], None),
    ("`python -c 'import torch'`", [sys.executable, "-c", "import torch"], None),
    ("`odam --help`", [*ODAM, "--help"], 1.0),
    ("`odam explain --help`", [*ODAM, "explain", "--help"], 1.0),
    ("`odam explain` (missing arguments)", [*ODAM, "explain"], 1.0),
    ("`odam explain x.png --out o --bad` (unknown option)", [*ODAM, "explain", "x.png", "--out", "o", "--bad"], 1.0),
    ("`odam data synthcrowd` (missing arguments)", [*ODAM, "data", "synthcrowd"], 1.0),
    ("`odam train --help`", [*ODAM, "train", "--help"], 1.0),
    ("`odam evaluate nms --help`", [*ODAM, "evaluate", "nms", "--help"], 1.0),
)


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def wheel_bytes() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                        "-w", tmp], check=True)
        [wheel] = Path(tmp).glob("odam-*.whl")
        return wheel.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--wheel", action="store_true", help="also build the wheel and report its size")
    parser.add_argument("--write", type=Path, default=None, help="replace the bench_startup block of this file")
    args = parser.parse_args()
    times: dict[str, list[float]] = {label: [] for label, _, _ in COMMANDS}
    for _ in range(args.repeats):
        for label, argv, _ in COMMANDS:
            times[label].append(timed(argv))
    median = {label: statistics.median(t) for label, t in times.items()}
    torch_s = median[COMMANDS[1][0]]
    lines = [f"`python benchmarks/bench_startup.py{' --wheel' if args.wheel else ''}` on {platform.machine()} "
             f"({os.cpu_count()} CPUs), Python {platform.python_version()}; median of {args.repeats} runs each, "
             "in turns.", "",
             "| command | seconds | / `import torch` | goal |", "|---|---|---|---|"]
    for label, _, goal in COMMANDS:
        verdict = "" if goal is None else f"< {goal:g} s: {'met' if median[label] < goal else '**missed**'}"
        lines.append(f"| {label} | {median[label]:.2f} | {median[label] / torch_s:.2f}x | {verdict} |")
    if args.wheel:
        size = wheel_bytes()
        lines += ["", f"Wheel (`pip wheel . --no-deps`): {size / 1e6:.1f} MB; goal ≤ 25 MB: "
                      f"{'met' if size <= 25e6 else '**missed**'}."]
    text = "\n".join(lines)
    print(text)
    if args.write is not None:
        write_block(args.write, "bench_startup", text)


if __name__ == "__main__":
    main()
