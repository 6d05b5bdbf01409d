"""The ``odam`` command: a thin layer over the public API.

``odam explain IMAGE... [--model SPEC] --out DIR`` writes one panel PNG per detection and ``explanations.json``
(the bundled ``synthcrowd-fcos`` is the default model); ``odam demo --out DIR`` does the same on a bundled
SynthCrowd scene. ``odam train`` trains a detector and ``odam data`` makes and describes datasets.
Every error is one line on stderr (``odam: error: ...``) and exit status 2; ``--debug`` shows the traceback instead.
Ctrl-C stops any command with one line (``odam: interrupted``) and exit status 130; every file it has written is
complete (written atomically, journals line by line), and rerunning a resumable command continues the run.

One module per command: :mod:`odam.cli.explain`, :mod:`odam.cli.demo`, :mod:`odam.cli.train`,
:mod:`odam.cli.data` and :mod:`odam.cli.evaluate`; what they share is in :mod:`odam.cli.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import odam
from odam.cli import data, demo, evaluate, explain, train
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR, EXIT_INTERRUPTED, report_error
from odam.cli.demo import DEMO_SCENE, DEMO_SCORE_THRESHOLD
from odam.cli.explain import explain_images, map_stats

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_SCENE",
    "DEMO_SCORE_THRESHOLD",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "build_parser",
    "explain_images",
    "main",
    "map_stats",
]


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"odam: error: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``odam`` command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Example:
        >>> main(["explain", "photo.png", "--model", "no-such-model", "--out", "out"])  # one line on stderr
        2
    """
    debug = False
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # usage errors and --help
            return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
        debug = args.debug
        try:
            return args.run(args)
        except Exception as err:
            if debug:
                raise
            report_error(err)
            return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("odam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The ``odam`` command's argument parser (every subcommand); :func:`main` runs what it parses.

    Example:
        >>> build_parser().parse_args(["explain", "photo:crowd", "--out", "out"]).methods
        'odam'
    """
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    shared.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    shared.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    parser = _Parser(prog="odam", description="Per-detection heat maps for object detectors (ODAM).")
    parser.add_argument("--version", action="version", version=f"odam {odam.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{explain,demo,train,data,evaluate}")
    explain.add_parser(sub, shared)
    demo.add_parser(sub, shared)
    train.add_parser(sub, shared)
    data.add_parser(sub)
    evaluate.add_parser(sub)
    return parser
