"""The explorer: one self-contained, interactive HTML page of explained detections (no network, opens from file://).

:func:`explorer_image` turns one image, its explanations (one per method: ODAM, Grad-CAM, D-RISE, ...) and,
optionally, the suppression record of :func:`odam.nms.decide` into a JSON-serialisable dict;
:func:`explorer_html` writes a page of such dicts; :func:`read_explorer` reads them back out of a page;
:func:`explanation_html` is the page of one :class:`~odam.structures.Explanation` inside an ``<iframe>``, for a
notebook. The page's script and style are ``explorer.js`` and ``explorer.css`` beside this module, inlined.

Each image is one ``<script type="application/json" id="odam-image-{i}">`` block (``<``, ``>`` and ``&``
written as ``\\u003c``, ``\\u003e``, ``\\u0026``), parsed by the page only when the image is first shown; map
images are decoded only when shown. A block ``id="odam-page"`` holds the title, each image's name and detection
count, the errors, the colormap (:func:`odam.viz.colors.colormap_table`, 256 x RGB flattened), the blending
weight at opacity 1 of :func:`odam.viz.colors.heat_alpha` at the same 256 values (``alpha``) and the default
opacity (:data:`odam.viz.colors.OPACITY`).

Schema of one image (what :func:`explorer_image` returns)::

    name: str                          the image's name (a file name)
    width, height: int                 the image's size in pixels; boxes are in these pixels
    image: str                         JPEG data URI, downscaled to at most image_side on the long side
    methods: [str]                     the explanation methods; the first is the main one
    targets: [str]                     every target any method explains, the main method's first
    detections: [{index, label, name, score, box: [x1, y1, x2, y2], color: "#rrggbb"}]
    grid: [gw, gh]                     size of the stored maps (long side at most map_side)
    maps: {method: [{target: MAP, ..., "combined": MAP} for each detection]}
    nms: null or NMS

    MAP = {lo, hi: float             the map's minimum and maximum at full resolution
           zero: bool                the map is all zero (lo == hi == 0)
           png: str or null          data URI of an 8-bit grayscale PNG (or lossless WebP, where smaller) of
                                     q = round(255 (v - lo) / (hi - lo)) of the map resized to grid, over crop;
                                     null when every q is 0; or of a lossy WebP of q (the smallest found) whose
                                     decoded levels are within MAP_TOLERANCE of q everywhere (see below)
           crop: [x0, y0, x1, y1]    where png lies in the grid (x1, y1 exclusive); q is 0 (the value is lo)
                                     outside it; null with png}
    "combined" is Explanation.combined() of the detection, values in [0, 1] (normalised units).
    A map whose lossless encoding is over 2 kB (a smooth map over much of the image, as Grad-CAM's: 8-bit
    rounding noise does not compress losslessly) is stored as lossy WebP where that is smaller and its decoded
    levels differ from q by at most :data:`MAP_TOLERANCE` (10 levels: 3.9% of the map's [lo, hi] at worst, about
    1 level RMS) anywhere in crop; a lossy map is a VP8 WebP, a lossless one PNG or VP8L WebP. Local maps (as
    ODAM's) stay lossless: their q round-trips exactly.

    NMS = {method: str, settings: {name: value}, evidence: "correlation" | "embedding distance" | "decay" | null,
           grid: [w, h] of the candidate maps or null,
           candidates: [{index, box, label, name, color, score (the detector's), final (after the method),
                         fate: "kept" | "suppressed" | "capped", rule (as in Decisions.rules),
                         suppressor: candidate index or -1, iou, evidence (null for NaN),
                         detection: k for a kept candidate (candidate decisions.keep[k]) else null,
                         map: MAP of the candidate's map or null}],
           pairs: [{a, b (candidate indices), detections: [ka, kb], iou, correlation (null without maps)}]}
    pairs lists the kept candidates of one class that overlap with IoU > 0.3, by IoU, with the correlation
    (:func:`odam.heatmaps.correlation`) of their candidate maps.

The page shows, in the colours of :mod:`odam.viz.colors` (a value t in [0, 1] has the colormap's colour at
t with alpha ``heat_alpha(t, opacity)``, over the photo, which is desaturated under a map), each map of the
selected detection on one shared absolute scale ``[min(0, min lo), max hi]`` over its attribute maps
("combined" in its own 0..1 units), or each on its own ``[lo, hi]`` with "per-map normalisation"; "compare
methods" shows every method's map of one target side by side, each normalised (methods have different units).
The keys left and right select the previous and next detection among the table's visible rows, in its current
order. Every text of the data (file, class and method names, errors, rules) reaches the page as text
(``textContent``), never as markup.

DOM hooks (stable; the tests and anyone scripting the page use them)::

    body[data-image=i][data-view="explain"|"suppression"]
    #odam-images button[data-image=i]           the image list; aria-current="true" on the shown one
    #odam-errors li                              one per failed image
    #odam-empty                                  shown for an image without detections (or a page without images)
    #odam-boxes .odam-box[data-index=k]          the detection boxes on the image; hidden attribute when
                                                 below the score threshold; class "selected"
    #odam-table tbody tr[data-index=k]           the detection table, same hiding; class "selected"
    #odam-table th[data-sort="index"|"name"|"score"|"box"]   click to sort (score: descending first; again:
                                                 reverse); aria-sort on the sorted one
    #odam-threshold, #odam-opacity               range inputs; #odam-normalise checkbox (per-map normalisation)
    #odam-mode button[data-mode="attribute"|"compare"], #odam-method, #odam-target selects, #odam-zoom checkbox
    #odam-colorbar[data-lo][data-hi][data-normalised="true"|"false"]
    #odam-maps[data-detection=k][data-mode][data-state="loading"|"ready"]
        canvas.odam-heat[data-method][data-target][data-detection][data-lo][data-hi][data-zero="true"|"false"]
                        [data-scale-lo][data-scale-hi]   (lo/hi: the stored map's; scale: what the colours span)
        .odam-zero                               the visible "all zero" label of a zero map
    #odam-nms-table tbody tr[data-candidate=c][data-fate][data-rule][data-suppressor=s][data-detection=k]
    #odam-pairs-only checkbox; #odam-pairs-table tbody tr[data-a][data-b]
    #odam-nms-maps[data-candidate=c][data-other=o][data-suppressor=s][data-state]   the maps of candidate c and
        of o (c's suppressor, or the other of a pair; -1: none); s = o when o suppressed c, else -1;
        canvas.odam-heat[data-candidate][data-lo][data-hi][data-zero], each panel with both boxes (.odam-box)

Example:
    >>> import torch
    >>> from odam.structures import Detections, Explanation
    >>> d = Detections(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), torch.tensor([0.9]), torch.tensor([1]))
    >>> e = Explanation(d, ("score",), torch.rand(1, 1, 8, 8))
    >>> page = explorer_html([explorer_image(torch.rand(3, 8, 8), {"odam": e}, name="a.jpg")], title="demo")
    >>> [(im["name"], len(im["detections"])) for im in read_explorer(page)]
    [('a.jpg', 1)]
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, features
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_iou

from odam.heatmaps import correlation
from odam.structures import Explanation
from odam.viz.colors import OPACITY, class_color, colormap_table, heat_alpha

if TYPE_CHECKING:
    from odam.nms import Decisions

#: What the evidence of each suppression method is (:attr:`odam.nms.Decisions.evidence`).
EVIDENCE = {"odam-nms": "correlation", "feature-nms": "embedding distance", "soft-nms": "decay"}
#: Kept candidates of one class that overlap more than this are listed as pairs in the suppression view.
PAIR_IOU = 0.3
_JPEG_QUALITY = 85
_WEBP = features.check("webp")
#: The most a lossy map's decoded 8-bit levels may differ from the levels q it encodes (of 255 over [lo, hi]).
MAP_TOLERANCE = 10
_LOSSY_ABOVE = 2048  # bytes of a map's lossless encoding above which lossy WebP is tried
_LOSSY_QUALITIES = tuple(range(100, 49, -1))  # lossy WebP qualities searched, best first
_BLOCK = re.compile(r'<script type="application/json" id="odam-image-(\d+)">(.*?)</script>', re.DOTALL)


def explorer_image(
    image: Tensor,
    explanations: Mapping[str, Explanation],
    *,
    name: str,
    class_names: Sequence[str] | None = None,
    decisions: Decisions | None = None,
    candidate_maps: Tensor | None = None,
    map_side: int = 256,
    image_side: int = 1024,
) -> dict:
    """Everything the explorer page shows of one image, as a JSON-serialisable dict (schema in the module doc).

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], any device.
        explanations: method name (``"odam"``, ``"gradcam"``, ...) to its explanation; all explain the same
            detections in the same order (the same boxes), at the image's size; the first is the main one.
            Others may explain fewer targets.
        name: how the page names the image (e.g. its file name).
        class_names: names indexed by label; a label without one is shown as its number.
        decisions: what a suppression decided on this image's candidates (:func:`odam.nms.decide`); its kept
            candidates, in ``decisions.keep`` order, are the explained detections.
        candidate_maps: ``Tensor[N_candidates, h, w]``, the maps the suppression compared (Odam-NMS's vectors
            as small maps), shown for a suppressed candidate beside its suppressor's.
        map_side: the stored maps' long side at most (maps are downscaled, antialiased, to it).
        image_side: the embedded JPEG's long side at most.

    Returns:
        The dict: boxes, scores and labels, the image as a JPEG data URI, and each map quantised to 8 bits
        between its own minimum and maximum, cropped to where it is not at its minimum, as a PNG data URI.

    Example:
        >>> import torch
        >>> from odam.structures import Detections, Explanation
        >>> d = Detections(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0.9]), torch.tensor([1]))
        >>> maps = torch.zeros(1, 2, 8, 8)
        >>> maps[0, 0, 1:3, 2:5] = 2.0
        >>> data = explorer_image(torch.rand(3, 8, 8), {"odam": Explanation(d, ("score", "left"), maps)},
        ...                       name="a.jpg", class_names=["bg", "person"])
        >>> data["detections"][0]["name"], data["grid"], data["maps"]["odam"][0]["score"]["crop"]
        ('person', [8, 8], [2, 1, 5, 3])
        >>> data["maps"]["odam"][0]["score"]["hi"], data["maps"]["odam"][0]["left"]["zero"]
        (2.0, True)
    """
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected image of shape [3, H, W], got {_shape(image)}")
    for what, value in (("map_side", map_side), ("image_side", image_side)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    if not isinstance(explanations, Mapping) or not explanations:
        raise ValueError("explanations must map at least one method name to an Explanation")
    height, width = (int(s) for s in image.shape[-2:])
    methods = [str(m) for m in explanations]
    first = methods[0]
    main = explanations[first]
    for method, e in explanations.items():
        if not isinstance(e, Explanation):
            raise ValueError(f"explanation {method!r} is a {type(e).__name__}, not an Explanation")
        if len(e) != len(main):
            raise ValueError(f"explanation {method!r} has {len(e)} detections, {first!r} has {len(main)}")
        if tuple(e.maps.shape[-2:]) != (height, width):
            raise ValueError(f"maps of {method!r} are {e.maps.shape[-2]}x{e.maps.shape[-1]}, "
                             f"the image is {height}x{width}")
        if len(e) and not torch.allclose(_cpu(e.detections.boxes), _cpu(main.detections.boxes), rtol=0, atol=1e-3):
            raise ValueError(f"explanation {method!r} explains other boxes than {first!r}")
    targets = list(dict.fromkeys(t for e in explanations.values() for t in e.targets))
    grid = _grid(height, width, map_side)
    maps = {}
    for method, e in explanations.items():
        per_detection = []
        for k in range(len(e)):
            x = e.maps[k].detach().float()
            encoded = _encode_maps(torch.cat([x, _combined(x)]), grid, f"{method!r} detection {k}")
            per_detection.append(dict(zip([*e.targets, "combined"], encoded, strict=True)))
        maps[method] = per_detection
    return {
        "name": str(name),
        "width": width,
        "height": height,
        "image": _photo_uri(image, image_side),
        "methods": methods,
        "targets": targets,
        "detections": _detections(main.detections.boxes, main.detections.scores, main.detections.labels,
                                  class_names),
        "grid": [grid[1], grid[0]],
        "maps": maps,
        "nms": None if decisions is None else _suppression(decisions, candidate_maps, main, class_names, map_side),
    }


def explorer_html(images: Sequence[Mapping], *, title: str, errors: Sequence[Mapping[str, str]] = ()) -> str:
    """The explorer page of ``images`` (dicts of :func:`explorer_image`), one self-contained HTML document.

    Args:
        images: the images, in the order the page lists them.
        title: the page's title.
        errors: images that could not be explained, each ``{"image": name, "error": message}``; listed as failed.

    Returns:
        The page, ending with a newline.

    Example:
        >>> page = explorer_html([], title="nothing", errors=[{"image": "b.jpg", "error": "not an image"}])
        >>> page.startswith("<!doctype html>"), "<title>nothing</title>" in page, read_explorer(page)
        (True, True, [])
    """
    summary = []
    for i, im in enumerate(images):
        if not isinstance(im, Mapping) or not {"name", "detections", "maps"} <= im.keys():
            raise ValueError(f"image {i} is not a dict of explorer_image (needs name, detections, maps)")
        summary.append({"name": str(im["name"]), "detections": len(im["detections"])})
    failed = []
    for e in errors:
        if not isinstance(e, Mapping) or not {"image", "error"} <= e.keys():
            raise ValueError(f"an error must be a dict with image and error, got {e!r}")
        failed.append({"image": str(e["image"]), "error": str(e["error"])})
    page = {"title": str(title), "images": summary, "errors": failed, "opacity": OPACITY,
            "colormap": colormap_table().reshape(-1).tolist(),
            "alpha": [round(float(a), 6) for a in heat_alpha(np.linspace(0.0, 1.0, 256), 1.0)]}
    parts = ["<!doctype html>", '<html lang="en">', '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(str(title))}</title>", f"<style>\n{_asset('explorer.css', 'style')}</style>",
             "<body>", _BODY, f'<script type="application/json" id="odam-page">{_script_json(page)}</script>']
    parts += [f'<script type="application/json" id="odam-image-{i}">{_script_json(im)}</script>'
              for i, im in enumerate(images)]
    parts += [f"<script>\n{_asset('explorer.js', 'script')}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def explanation_html(image: Tensor | None, explanation: Explanation, class_names: Sequence[str] | None = None) -> str:
    """The explorer of one explanation, as an ``<iframe srcdoc=...>`` to show inline in a notebook (its script
    runs, its style stays inside).

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1] the maps are drawn over; ``None``: a grey image of the maps' size.
        explanation: the explanation.
        class_names: names indexed by label.

    Returns:
        The ``<iframe>`` element.

    Example:
        >>> import torch
        >>> from odam.structures import Detections, Explanation
        >>> d = Detections(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0.9]), torch.tensor([1]))
        >>> frame = explanation_html(None, Explanation(d, ("score",), torch.rand(1, 1, 8, 8)))
        >>> frame.startswith("<iframe srcdoc=") and "&lt;!doctype html&gt;" in frame
        True
    """
    if image is None:
        h, w = explanation.maps.shape[-2:]
        image = torch.full((3, h, w), 0.5)
    page = explorer_html([explorer_image(image, {"explanation": explanation}, name="explanation",
                                         class_names=class_names)], title="odam explanation")
    return (f'<iframe srcdoc="{escape(page, quote=True)}" title="odam explanation" '
            'style="width:100%;height:920px;border:1px solid #d0d7de;border-radius:6px"></iframe>')


def read_explorer(html: str) -> list[dict]:
    """The per-image dicts of an explorer page, in page order (what :func:`explorer_image` returned).

    Example:
        >>> read_explorer(explorer_html([], title="empty"))
        []
    """
    blocks = sorted((int(i), text) for i, text in _BLOCK.findall(html))
    return [json.loads(text) for _, text in blocks]


_BODY = """<div class="odam-app">
<aside class="odam-sidebar">
  <h1 id="odam-title"></h1>
  <nav aria-label="images"><ul id="odam-images" class="odam-image-list"></ul></nav>
  <section id="odam-errors-section" class="odam-errors" hidden><h2>Failed</h2><ul id="odam-errors"></ul></section>
</aside>
<main class="odam-main">
  <header class="odam-bar">
    <h2 id="odam-image-name"></h2>
    <div class="odam-seg" role="tablist">
      <button type="button" id="odam-tab-explain" data-view="explain" role="tab">Explanations</button>
      <button type="button" id="odam-tab-suppression" data-view="suppression" role="tab" hidden>Suppression</button>
    </div>
    <label class="odam-ctl" id="odam-threshold-label">score &ge;
      <input type="range" id="odam-threshold" min="0" max="1" step="0.01" value="0">
      <output id="odam-threshold-value">0.00</output></label>
  </header>
  <p id="odam-empty" class="odam-note" hidden></p>
  <section id="odam-explain-view" class="odam-view odam-explain">
    <div class="odam-left">
      <div class="odam-viewer"><div class="odam-stage" id="odam-stage"><div class="odam-frame">
        <img id="odam-photo" alt=""><div id="odam-boxes" class="odam-boxes"></div></div></div></div>
      <div class="odam-side odam-detections">
        <table id="odam-table" class="odam-table">
          <thead><tr><th data-sort="index">#</th><th data-sort="name">label</th>
            <th data-sort="score" class="odam-num">score</th><th data-sort="box" class="odam-num">box</th></tr></thead>
          <tbody></tbody>
        </table>
      </div>
    </div>
    <section class="odam-maps-section">
      <div class="odam-toolbar">
        <span id="odam-selected" class="odam-selected"></span>
        <div class="odam-seg" id="odam-mode" hidden>
          <button type="button" data-mode="attribute">By attribute</button>
          <button type="button" data-mode="compare">Compare methods</button>
        </div>
        <label class="odam-ctl" id="odam-method-label" hidden>method <select id="odam-method"></select></label>
        <label class="odam-ctl" id="odam-target-label" hidden>target <select id="odam-target"></select></label>
        <label class="odam-ctl">opacity <input type="range" id="odam-opacity" min="0" max="1" step="0.05"></label>
        <label class="odam-ctl"><input type="checkbox" id="odam-normalise"> per-map normalisation</label>
        <label class="odam-ctl"><input type="checkbox" id="odam-zoom"> zoom to box</label>
        <div id="odam-colorbar" class="odam-colorbar">
          <canvas width="256" height="1"></canvas>
          <div class="odam-ticks"><span></span><span></span><span></span></div>
          <div class="odam-unit"></div>
        </div>
      </div>
      <div id="odam-maps" class="odam-panels" data-detection="" data-state="ready"></div>
    </section>
  </section>
  <section id="odam-nms-view" class="odam-view" hidden>
    <p id="odam-nms-summary" class="odam-note"></p>
    <div class="odam-side odam-nms-side">
      <label class="odam-ctl"><input type="checkbox" id="odam-pairs-only"> overlapping pairs that were both
        kept</label>
      <table id="odam-nms-table" class="odam-table">
        <thead><tr><th>cand.</th><th>label</th><th class="odam-num">score</th><th class="odam-num">final</th>
          <th>fate</th><th class="odam-num">IoU</th><th id="odam-evidence-head" class="odam-num">evidence</th>
          <th>rule</th></tr></thead>
        <tbody></tbody>
      </table>
      <table id="odam-pairs-table" class="odam-table" hidden>
        <thead><tr><th>kept</th><th>kept</th><th>label</th><th class="odam-num">IoU</th>
          <th class="odam-num">correlation</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
    <div id="odam-nms-maps" class="odam-panels odam-pair-panels" data-candidate="" data-other=""
      data-suppressor="" data-state="ready"></div>
  </section>
</main>
</div>"""


def _asset(name: str, tag: str) -> str:
    """The text of ``name`` beside this module, checked to be safe inside ``<tag>``."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    if f"</{tag}" in text.lower():
        raise RuntimeError(f"{name} contains '</{tag}', which would end the page's <{tag}> early")
    return text


def _script_json(value: Any) -> str:
    """``value`` as JSON that cannot end a ``<script>`` block or open markup."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _cpu(x: Tensor) -> Tensor:
    return x.detach().float().cpu()


def _number(x: float) -> float | None:
    """A float for JSON: ``None`` for NaN (no value)."""
    return None if math.isnan(x) else float(x)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _detections(boxes: Tensor, scores: Tensor, labels: Tensor, class_names: Sequence[str] | None) -> list[dict]:
    out = []
    for k, (box, score, label) in enumerate(zip(_cpu(boxes).tolist(), _cpu(scores).tolist(),
                                                labels.detach().cpu().tolist(), strict=True)):
        out.append({"index": k, "label": int(label), "name": _name(int(label), class_names), "score": score,
                    "box": box, "color": class_color(int(label))})
    return out


def _grid(height: int, width: int, side: int) -> tuple[int, int]:
    """``(rows, columns)`` of a ``height x width`` map downscaled so that its long side is at most ``side``."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _photo_uri(image: Tensor, side: int) -> str:
    pixels = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    photo = Image.fromarray(np.ascontiguousarray(pixels))
    h, w = pixels.shape[:2]
    rows, cols = _grid(h, w, side)
    if (rows, cols) != (h, w):
        photo = photo.resize((cols, rows), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=_JPEG_QUALITY)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _combined(maps: Tensor) -> Tensor:
    """``Tensor[1, H, W]``: :meth:`Explanation.combined` of one detection's maps ``Tensor[T, H, W]`` (the same
    numbers as ``normalize_maps(maps).amax(0)``, without a normalised copy of every map)."""
    flat = maps.flatten(1)
    out = torch.zeros_like(maps[0])
    for m, lo, span in zip(maps, flat.amin(1).tolist(), (flat.amax(1) - flat.amin(1)).tolist(), strict=True):
        if span > 0:
            torch.maximum(out, (m - lo) / span, out=out)
    return out[None]


def _encode_maps(maps: Tensor, grid: tuple[int, int], what: str) -> list[dict]:
    """Each map of ``maps`` (``Tensor[M, H, W]`` float, any device) resized to ``grid`` (rows, columns) as a MAP
    entry of the module's schema."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(f"maps of {what} hold values that are not finite")
    small = maps
    if tuple(maps.shape[-2:]) != grid:
        small = F.interpolate(maps[:, None], size=grid, mode="bilinear", antialias=True, align_corners=False)[:, 0]
    span = (hi - lo)[:, None, None]
    q = ((small - lo[:, None, None]) / span.clamp_min(torch.finfo(torch.float32).tiny) * 255).round().clamp(0, 255)
    q = torch.where(span > 0, q, torch.zeros_like(q)).to(torch.uint8).cpu().numpy()
    out = []
    for m, low, high in zip(q, lo.tolist(), hi.tolist(), strict=True):
        entry: dict[str, Any] = {"lo": low, "hi": high, "zero": low == 0.0 and high == 0.0, "png": None, "crop": None}
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
            entry["png"] = _gray_uri(m[y0:y1, x0:x1])
            entry["crop"] = [x0, y0, x1, y1]
        out.append(entry)
    return out


def _gray_uri(q: np.ndarray) -> str:
    """``q`` (uint8 ``[h, w]``) as a PNG data URI, or lossless WebP where that is smaller; when that is over
    ``_LOSSY_ABOVE`` bytes, the smallest lossy WebP found within :data:`MAP_TOLERANCE` of ``q``, if smaller."""
    picture = Image.fromarray(np.ascontiguousarray(q))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    best, mime = buffer.getvalue(), "image/png"
    if _WEBP:
        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", lossless=True, quality=50, method=1)
        if len(buffer.getvalue()) < len(best):
            best, mime = buffer.getvalue(), "image/webp"
        if len(best) > _LOSSY_ABOVE:
            lossy = _lossy_webp(picture, q)
            if lossy is not None and len(lossy) < len(best):
                best, mime = lossy, "image/webp"
    return _data_uri(best, mime)


def _lossy_webp(picture: Image.Image, q: np.ndarray) -> bytes | None:
    """The lossy WebP of ``picture`` (grayscale, levels ``q``) at the lowest quality of ``_LOSSY_QUALITIES`` found
    by bisection whose decoded levels are within :data:`MAP_TOLERANCE` of ``q`` everywhere; ``None`` if none is.
    (The error grows with falling quality nearly but not strictly monotonically: every candidate is checked.)"""
    levels = q.astype(np.int16)
    found = None
    low, high = 0, len(_LOSSY_QUALITIES) - 1
    while low <= high:
        middle = (low + high) // 2
        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", quality=_LOSSY_QUALITIES[middle], method=4)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as decoded:
            back = np.asarray(decoded.convert("RGB"))[..., 0]
        if back.shape == q.shape and int(np.abs(back.astype(np.int16) - levels).max()) <= MAP_TOLERANCE:
            found, low = data, middle + 1
        else:
            high = middle - 1
    return found


def _suppression(decisions: Decisions, candidate_maps: Tensor | None, main: Explanation,
                 class_names: Sequence[str] | None, map_side: int) -> dict:
    """The ``nms`` entry of the schema: every candidate's fate, and the overlapping kept pairs."""
    c = decisions.candidates
    n = len(c)
    keep = [int(i) for i in decisions.keep.tolist()]
    if len(keep) != len(main):
        raise ValueError(f"decisions keep {len(keep)} candidates, the explanations have {len(main)} detections")
    if keep and not torch.allclose(_cpu(c.boxes)[keep], _cpu(main.detections.boxes), rtol=0, atol=1e-3):
        raise ValueError("the kept candidates of decisions are not the explained detections "
                         "(detection k must be candidate decisions.keep[k])")
    encoded: list[dict | None] = [None] * n
    grid = None
    if candidate_maps is not None:
        if not isinstance(candidate_maps, Tensor) or candidate_maps.ndim != 3 or candidate_maps.shape[0] != n:
            raise ValueError(f"expected candidate_maps of shape [{n}, h, w], got {_shape(candidate_maps)}")
        rows, cols = _grid(*candidate_maps.shape[-2:], map_side)
        grid = [cols, rows]
        if n:
            encoded = _encode_maps(candidate_maps.detach().float(), (rows, cols), "candidate maps")
    detection_of = {i: k for k, i in enumerate(keep)}
    rules = list(decisions.rules)
    suppressor = decisions.suppressor.tolist()
    ious, evidence, finals = (_cpu(t).tolist() for t in (decisions.iou, decisions.evidence, decisions.scores))
    candidates = _detections(c.boxes, c.scores, c.labels, class_names)
    for i, entry in enumerate(candidates):
        fate = "kept" if i in detection_of else "capped" if rules[i] == "capped" else "suppressed"
        entry.update(final=finals[i], fate=fate, rule=rules[i], suppressor=int(suppressor[i]),
                     iou=_number(ious[i]), evidence=_number(evidence[i]), detection=detection_of.get(i),
                     map=encoded[i])
    method = decisions.method
    name = str(getattr(method, "method", method))
    settings = {}
    if is_dataclass(method):
        for f in fields(method):
            value = getattr(method, f.name)
            if f.name != "method" and (value is None or isinstance(value, bool | int | float | str)):
                settings[f.name] = _number(value) if isinstance(value, float) else value
    return {"method": name, "settings": settings, "evidence": EVIDENCE.get(name), "grid": grid,
            "candidates": candidates, "pairs": _pairs(decisions, candidate_maps, keep)}


def _pairs(decisions: Decisions, candidate_maps: Tensor | None, keep: list[int]) -> list[dict]:
    """Kept candidates of one class overlapping with IoU > :data:`PAIR_IOU`, by IoU, with their maps' correlation."""
    if len(keep) < 2:
        return []
    c = decisions.candidates
    boxes, labels = _cpu(c.boxes)[keep], c.labels.detach().cpu()[keep]
    iou = box_iou(boxes, boxes)
    close = (iou > PAIR_IOU) & (labels[:, None] == labels[None]) & torch.ones_like(iou, dtype=torch.bool).triu(1)
    corr = None
    if candidate_maps is not None:
        vectors = candidate_maps.detach().float().cpu()[keep].flatten(1)
        corr = correlation(vectors, bool(getattr(decisions.method, "centred", True))).tolist()
    a, b = torch.where(close)
    pairs = [{"a": keep[i], "b": keep[j], "detections": [i, j], "iou": float(iou[i, j]),
              "correlation": None if corr is None else _number(corr[i][j])} for i, j in zip(a.tolist(), b.tolist(),
                                                                                         strict=True)]
    return sorted(pairs, key=lambda p: -p["iou"])
