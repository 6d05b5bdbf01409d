"""``odam demo --out DIR``: ``odam explain`` with the bundled model on a bundled scene."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import odam
from odam.cli import common
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR
from odam.cli.explain import explain_images
from odam.models import configure

#: A SynthCrowd crowd scene (seed 3, image 0, never used for training), shipped with the package.
DEMO_SCENE = Path(__file__).parents[1] / "assets" / "synthcrowd-scene.png"
DEMO_SCORE_THRESHOLD = 0.5


def add_parser(sub: Any, common_options: argparse.ArgumentParser) -> None:
    """Add ``demo`` to the subcommands ``sub``; ``common_options`` holds ``--out``, ``--device`` and ``--debug``."""
    demo = sub.add_parser("demo", parents=[common_options], help=f"explain {DEFAULT_MODEL} on a bundled scene",
                          description=f"Explain every detection of the bundled {DEFAULT_MODEL} (score >= "
                                      f"{DEMO_SCORE_THRESHOLD}) on a bundled SynthCrowd scene.")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``odam demo``; returns the exit status."""
    device = common.device(args.device)
    detector = odam.load_detector(DEFAULT_MODEL)
    model = configure(detector.model, score_threshold=DEMO_SCORE_THRESHOLD).to(device)
    print(f"odam demo: {DEFAULT_MODEL} (trained on SynthCrowd, see docs/MODELS.md) on {DEMO_SCENE.name}")
    failed = explain_images(model, [str(DEMO_SCENE)], args.out, spec=DEFAULT_MODEL, targets=odam.TARGETS,
                            class_names=detector.categories, debug=args.debug)
    return EXIT_ERROR if failed else 0
