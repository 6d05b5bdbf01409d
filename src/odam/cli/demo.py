"""``odam demo --out DIR``: ``odam explain`` with the bundled model on a bundled scene: ODAM and Grad-CAM side by
side, and Odam-NMS's decisions, in the explorer page."""

from __future__ import annotations

import argparse

from odam.cli import common
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR, OWN_SCORE_THRESHOLD, SCENE

#: A SynthCrowd crowd scene (seed 3, image 0, never used for training), shipped with the package.
DEMO_SCENE = SCENE
DEMO_SCORE_THRESHOLD = OWN_SCORE_THRESHOLD
#: What the demo shows: ODAM beside Grad-CAM, under Odam-NMS.
DEMO_METHODS, DEMO_NMS = ("odam", "gradcam"), "odam-nms"


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """Add the options of ``odam demo`` to its parser."""
    demo.description = (f"Explain every detection of the bundled {DEFAULT_MODEL} (score > {DEMO_SCORE_THRESHOLD}) "
                        f"on a bundled SynthCrowd scene with {' and '.join(DEMO_METHODS)}, under {DEMO_NMS}; open "
                        "DIR/index.html.")
    common.add_output_options(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``odam demo``; returns the exit status."""
    import odam
    from odam.cli.outputs import explain_images, set_limits

    device = common.device(args.device)
    detector = odam.load_detector(DEFAULT_MODEL, nms=DEMO_NMS)
    set_limits(detector, score_threshold=DEMO_SCORE_THRESHOLD)
    detector.model.to(device)
    print(f"odam demo: {DEFAULT_MODEL} (trained on SynthCrowd, see docs/MODELS.md) on {DEMO_SCENE.name}")
    failed = explain_images(detector, [str(DEMO_SCENE)], args.out, spec=DEFAULT_MODEL, targets=odam.TARGETS,
                            methods=DEMO_METHODS, class_names=detector.categories, debug=args.debug)
    return EXIT_ERROR if failed else 0
