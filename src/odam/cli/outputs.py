"""Explain a list of images and write what ``odam explain`` and ``odam demo`` produce: the explorer page, the
panels, the overviews and ``explanations.json`` (:func:`explain_images`)."""

from __future__ import annotations

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
from odam.cli.common import DRISE_MASKS, NAMED_IMAGES, PHOTO_PREFIX, Progress, one_line, report_error
from odam.data.photos import SCENE, load_photo, photo_path
from odam.detectors.base import LayerError
from odam.explainers import create_explainer
from odam.heatmaps import vector_grid
from odam.metrics import energy_pointing_game
from odam.models import configure
from odam.nms import Decisions, Suppressed
from odam.structures import Detections, Explanation
from odam.viz import explorer_html, explorer_image, save_overview, save_panel

#: Detections explained per call, so that progress shows within an image.
DETECTION_BATCH = 16
#: ``index.html`` is rewritten after an image at most this often, in seconds (and after the last one).
PAGE_EVERY = 30.0


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
