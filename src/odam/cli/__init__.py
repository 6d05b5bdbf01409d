"""The ``odam`` command: a thin layer over the public API.

``odam explain IMAGE... [--model SPEC] --out DIR`` writes one panel PNG per detection and ``explanations.json``
(the bundled ``synthcrowd-fcos`` is the default model); ``odam demo --out DIR`` does the same on a bundled
SynthCrowd scene. ``odam train`` trains a detector and ``odam data`` makes and describes datasets.
Every error is one line on stderr (``odam: error: ...``) and exit status 2; ``--debug`` shows the traceback instead.
Ctrl-C stops any command with one line (``odam: interrupted``) and exit status 130; every file it has written is
complete (written atomically, journals line by line), and rerunning a resumable command continues the run.

One module per command: :mod:`odam.cli.explain`, :mod:`odam.cli.demo`, :mod:`odam.cli.train`,
:mod:`odam.cli.data` and :mod:`odam.cli.evaluate`; what they share is in :mod:`odam.cli.common`, and
:mod:`odam.cli.outputs` writes what ``explain`` and ``demo`` produce. A command's module is imported, and its options
added, only when that command is parsed or its help is shown (:data:`COMMANDS`); torch only when a command runs.
The parsers are built from :mod:`odam.cli.common` and the torch-free settings classes
(:mod:`odam.train.config`, :mod:`odam.evaluation.config`), so ``odam --help``, every subcommand's ``--help`` and
every argument error answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import odam
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR, EXIT_INTERRUPTED, report_error
from odam.cli.demo import DEMO_SCENE, DEMO_SCORE_THRESHOLD

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


#: The subcommands: name, the module that adds its options (``add_arguments(parser)``) and runs it, and its line in
#: ``odam --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("odam.cli.explain", "explain every detection in some images"),
    "demo": ("odam.cli.demo", f"explain {DEFAULT_MODEL} on a bundled scene"),
    "train": ("odam.cli.train", "train a detector on a COCO or CrowdHuman dataset"),
    "data": ("odam.cli.data", "make or describe datasets"),
    "evaluate": ("odam.cli.evaluate", "measure detectors"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other error of the command, and a subcommand's options are
    added by its module (``filler``) when the subcommand is parsed or its help is shown, not before."""

    def __init__(self, *args: Any, filler: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filler = filler

    def _fill(self) -> None:
        if self.filler is not None:
            module, self.filler = importlib.import_module(self.filler), None
            module.add_arguments(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._fill()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._fill()
        return super().format_help()

    def format_usage(self) -> str:
        self._fill()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"odam: error: {message} (see '{self.prog} --help')\n")


def __getattr__(name: str) -> Any:
    if name in ("explain_images", "map_stats"):  # they import torch: loaded on first use
        from odam.cli import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'odam.cli' has no attribute {name!r}")


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
    """The ``odam`` command's argument parser (every subcommand, whose options are added when it is parsed);
    :func:`main` runs what it parses.

    Example:
        >>> build_parser().parse_args(["explain", "photo:crowd", "--out", "out"]).methods
        'odam'
    """
    parser = _Parser(prog="odam", description="Per-detection heat maps for object detectors (ODAM).")
    parser.add_argument("--version", action="version", version=f"odam {odam.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, line) in COMMANDS.items():
        sub.add_parser(name, help=line, filler=module)
    return parser
