"""Heat-map overlays, per-detection panels (as in Fig. 3 of the ODAM paper) and an overview of all detections;
re-exported by :mod:`odam.viz`.

Maps are drawn as :mod:`odam.viz.colors` says, alike here and on the explorer page: coloured with the perceptual
colormap :data:`~odam.viz.colors.COLORMAP` and blended over the photo with a weight that follows the value
(:func:`~odam.viz.colors.heat_alpha`), so the photo is untouched where a map is zero. Boxes are outlined in their
class's colour (:func:`~odam.viz.colors.class_color`).

Drawing uses matplotlib's object API with the Agg canvas, never ``pyplot``: it works headless and leaves
matplotlib's global state alone.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import IdentityTransform
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from odam._image import ImageLike, load_image, to_uint8
from odam.structures import Detections, Explanation
from odam.viz import colors

#: Pixels blended at a time in float64 by overlay (about 40 MB of temporaries, matplotlib's included).
_CHUNK_PIXELS = 1 << 18
#: A panel image whose longer side is shorter than this many pixels is shown enlarged, by the smallest whole
#: factor (each pixel a block) that makes it at least this long: a 100-pixel image is shown at 300. (At 480, a
#: 320-pixel scene's panel was 2200 x 1450 pixels and 1.3 MB.)
_PANEL_MIN_SIDE_PX = 256
#: The same for the overview, whose tags need room beside small boxes.
_OVERVIEW_MIN_SIDE_PX = 640
#: A panel cell is at least this wide (a narrow image is centred in it), so that titles do not collide.
_MIN_CELL_PX = 240
#: A panel row wider than this many pixels wraps onto another row.
_MAX_ROW_PX = 2400
#: Text sizes in points: panel and column titles, colorbar ticks.
_SUPTITLE_PT, _TITLE_PT, _TICK_PT = 13.0, 10.0, 8.0
#: Thickness of the boxes in the overview, in pixels.
_OVERVIEW_LINE_PX = 3


def overlay(
    image: ImageLike,
    heatmap: Tensor,
    box: Tensor | Sequence[float] | None = None,
    *,
    alpha: float | None = None,
    opacity: float = colors.OPACITY,
    cmap: str | Colormap = colors.COLORMAP,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """Colour ``heatmap`` with ``cmap``, blend it over ``image`` and outline ``box``.

    The heat map is first brought to values ``t`` in [0, 1]:

    - with ``vmin`` and ``vmax``, on that absolute scale: ``t = clip((heat - vmin) / (vmax - vmin), 0, 1)``
      (computed in float64), so maps drawn with the same scale can be compared;
    - else, with ``normalize`` (the default), min-max normalised: ``t = (heat - min) / (max - min)``, a constant
      map becoming 0 (exactly as :func:`odam.structures.normalize_maps`);
    - else as given: the values must already lie in [0, 1].

    Each pixel is then ``(1 - a) * image + a * cmap(t)`` in float64, rounded to uint8. By default
    (``alpha=None``) the weight follows the value, ``a = opacity * sqrt(t)`` (:func:`odam.viz.colors.heat_alpha`):
    where ``t`` is 0 the photo is left as it is, and the hottest pixel is ``opacity`` colour. A number ``alpha``
    gives every pixel that same weight instead (``alpha=0.5, cmap="jet"`` was the default before).

    The box outline is two pixels thick, drawn inside the pixels the box covers (columns
    ``floor(x1) .. ceil(x2) - 1``, rows likewise) and clipped to the image.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts.
        heatmap: ``Tensor[H, W]``, any device; detached.
        box: ``(x1, y1, x2, y2)`` in pixels, a ``Tensor[4]`` or a sequence of four numbers.
        alpha: one weight of the coloured map for every pixel, in [0, 1]; ``None`` for a weight by value.
        opacity: with ``alpha=None``, the weight where ``t`` is 1, in [0, 1].
        cmap: a matplotlib colormap or its name.
        normalize: without ``vmin``/``vmax``, min-max normalise the heat map to [0, 1] first. If False, its
            values must already lie in [0, 1].
        vmin: the value drawn as ``t = 0``; give both ``vmin`` and ``vmax``, or neither.
        vmax: the value drawn as ``t = 1``, above ``vmin``.
        box_color: RGB colour of the box outline, each in 0..255.

    Returns:
        ``H x W x 3`` uint8 array.

    Raises:
        ValueError: for a heat map of another shape or with non-finite values, ``alpha`` or ``opacity`` outside
            [0, 1], only one of ``vmin`` and ``vmax``, ``vmin >= vmax``, an unknown colormap, a bad box or colour.

    Example:
        >>> import torch
        >>> heat = torch.zeros(8, 8)
        >>> heat[3, 3] = 2.0
        >>> out = overlay(torch.full((3, 8, 8), 0.5), heat, torch.tensor([1.0, 1.0, 6.0, 6.0]), vmin=0.0, vmax=4.0)
        >>> out.shape, out.dtype.name, out[1, 3].tolist()  # on the outline
        ((8, 8, 3), 'uint8', [0, 255, 0])
        >>> out[7, 7].tolist(), out[3, 3].tolist()  # 0 leaves the photo; 2.0 is t = 0.5, weight 0.75 * sqrt(0.5)
        ([128, 128, 128], [159, 89, 105])
    """
    # No pixel limit here: the heat map already has the image's size, and what follows is small per pixel.
    img = load_image(image, max_pixels=None)
    if not isinstance(heatmap, Tensor):
        raise ValueError(f"expected heatmap to be a tensor, got {type(heatmap).__name__}")
    if heatmap.shape != img.shape[1:]:
        raise ValueError(
            f"heatmap shape {tuple(heatmap.shape)} does not match image shape {tuple(img.shape[1:])}"
        )
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected alpha in [0, 1] or None, got {alpha}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"expected opacity in [0, 1], got {opacity}")
    scale = _scale(vmin, vmax)
    heat = heatmap.detach().to("cpu", torch.float32)
    if not bool(heat.isfinite().all()):
        raise ValueError(f"expected a finite heatmap, got {int((~heat.isfinite()).sum())} non-finite values")
    if scale is None and normalize:
        heat = _normalized(heat)
    elif scale is None and heat.numel() and not bool(((heat >= 0) & (heat <= 1)).all()):
        raise ValueError(
            f"expected heatmap values in [0, 1] with normalize=False, "
            f"got min {heat.min().item()} and max {heat.max().item()}"
        )
    colormap = _colormap(cmap)
    outline = None if box is None else (_box_pixels(box), _rgb(box_color))
    base, values = img.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy(), heat.numpy()
    h, w = values.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    # Blend a band of rows at a time: float64 only for _CHUNK_PIXELS pixels, never at full resolution.
    rows = max(1, _CHUNK_PIXELS // max(w, 1))
    for r in range(0, h, rows):
        t = values[r : r + rows].astype(np.float64)
        if scale is not None:
            t = np.clip((t - scale[0]) / (scale[1] - scale[0]), 0.0, 1.0)
        a = colors.heat_alpha(t, opacity)[..., None] if alpha is None else alpha
        blended = (1.0 - a) * base[r : r + rows].astype(np.float64) + a * colormap(t)[..., :3]
        np.rint(np.clip(blended, 0.0, 1.0) * 255, out=blended)  # as to_uint8: round half to even
        out[r : r + rows] = blended
    if outline is not None:
        _draw_outline(out, *outline)
    return out


def panel(
    image: ImageLike,
    explanation: Explanation,
    index: int,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_width: int = 640,
    opacity: float = colors.OPACITY,
    dpi: float | None = None,
) -> Figure:
    """One overlay per target of detection ``index``, then their combination, with one colorbar.

    **One scale.** All maps of the detection are drawn on one absolute range ``[lo, hi]``, ``lo = min(0, min of
    the maps)`` and ``hi = max of the maps``, shown by the colorbar (the axes labelled ``"colorbar"``, whose
    long axis spans exactly ``(lo, hi)``), so a weak map looks weak beside a strong one. Each column's title gives
    its map's largest value, e.g. ``left  max 1.57`` (and its smallest too when that is negative). A constant map
    shows only the photo, with ``all zero`` (or ``constant 0.5``) written on it and in its title; when every map
    is constant there is no colorbar. The last column, ``combined (normalised)``, is
    ``explanation.combined()``: the element-wise max of the maps each min-max normalised, on its own 0..1 scale.

    **Look.** Each map is blended as :func:`overlay` does by default: colormap
    :data:`odam.viz.colors.COLORMAP`, weight ``opacity * sqrt(t)`` for the value ``t`` on the scale, so the photo is
    untouched where a map is zero. Every column outlines the box in its class's colour
    (:func:`odam.viz.colors.class_color`). The figure title is ``#index``, the class (its name if ``class_names``
    is given, else ``class 2``) and the score, e.g. ``#3 person 0.87``, as :func:`overview` numbers detections.

    **Resolution.** Images are blended at the image's own resolution, at most ``max_width`` pixels wide (and
    ``2 * max_width`` high): a larger image and its maps are shrunk (antialiased bilinear) *before* they are
    coloured and blended, so memory beyond the inputs stays at a few bytes per image pixel, whatever the size.
    Each blended image is shown pixel for pixel, except that one whose longer side is under 256 pixels is shown
    enlarged by the smallest whole factor (each pixel a block of pixels) that brings it to 256 or more (but no
    wider than ``max_width``): a 100-pixel image is shown at 300. Columns wrap onto more rows when a row would
    be wider than 2400 pixels (six 640-pixel columns become two rows of three).

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts (with no pixel
            limit: the maps already have the image's size).
        explanation: maps of shape ``[N, T, H, W]`` at the image's resolution.
        index: which detection, ``0 <= index < N``.
        class_names: names indexed by label (a sequence or a mapping).
        max_width: the widest a column's image is drawn, in pixels.
        opacity: the weight of the colormap at the top of the scale, in [0, 1].
        dpi: dots per inch; the images are drawn pixel for pixel whatever it is, and text is sized in points,
            so it sets how large text is beside them. ``None``: 100, more for columns over 400 pixels wide
            (``100 * width / 400``) so that titles stay readable.

    Returns:
        A matplotlib figure on an Agg canvas with ``T + 1`` image axes, then the colorbar's.

    Example:
        >>> import torch
        >>> from odam.structures import Detections, Explanation
        >>> d = Detections(torch.tensor([[1.0, 1.0, 6.0, 6.0]]), torch.tensor([0.87]), torch.tensor([0]))
        >>> maps = torch.zeros(1, 2, 8, 8)
        >>> maps[0, 1, 3, 3] = 1.5
        >>> fig = panel(torch.zeros(3, 8, 8), Explanation(d, ("score", "left"), maps), 0, class_names=["person"])
        >>> fig.get_suptitle(), [ax.get_title() for ax in fig.axes]
        ('#0 person 0.87', ['score  all zero', 'left  max 1.5', 'combined (normalised)', ''])
        >>> fig.axes[-1].get_label(), [float(v) for v in fig.axes[-1].get_ylim()]
        ('colorbar', [0.0, 1.5])
    """
    n, index = len(explanation), operator.index(index)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for an explanation of {n} detections")
    if dpi is not None and (isinstance(dpi, bool) or not isinstance(dpi, (int, float))
                            or not (math.isfinite(dpi) and dpi > 0)):
        raise ValueError(f"expected dpi to be a positive number or None, got {dpi!r}")
    _check_max_width(max_width)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"expected opacity in [0, 1], got {opacity}")
    img = load_image(image, max_pixels=None)
    h, w = img.shape[1:]
    maps = explanation.maps[index].detach()
    if maps.shape[-2:] != (h, w):
        raise ValueError(f"heatmap shape {tuple(maps.shape[-2:])} does not match image shape {(h, w)}")
    det = explanation.detections[index]
    label, score = int(det.labels[0]), float(det.scores[0])
    name = _class_name(label, class_names) if class_names is not None else f"class {label}"

    size = _drawn_size(w, h, max_width)
    ranges, shrunk, combined = [], [], None
    for target, heat in zip(explanation.targets, maps, strict=True):  # one full-resolution map at a time
        lo_k, hi_k = (float(v) for v in torch.aminmax(heat))
        if not (math.isfinite(lo_k) and math.isfinite(hi_k)):
            raise ValueError(f"expected finite maps, got non-finite values in the {target!r} map")
        ranges.append((lo_k, hi_k))
        unit = _normalized(heat)
        combined = unit if combined is None else torch.maximum(combined, unit, out=combined)
        shrunk.append(_resize(heat.to("cpu", torch.float32), size))
    shrunk.append(_shrink(combined.to("cpu", torch.float32), size))
    del combined
    lo, hi = min(0.0, *(r[0] for r in ranges)), max(r[1] for r in ranges)

    box = det.boxes[0].detach().to("cpu", torch.float64)
    small = img
    if size != (w, h):
        small = _shrink(img.detach().to("cpu", torch.float32), size)
        box = box * box.new_tensor([size[0] / w, size[1] / h] * 2)
    color = colors.rgb(colors.class_color(label))

    columns = []  # (title, blended image, note written on it)
    for target, (lo_k, hi_k), heat in zip(explanation.targets, ranges, shrunk[:-1], strict=True):
        if hi_k > lo_k:
            blended = overlay(small, heat, box, opacity=opacity, vmin=lo, vmax=hi, box_color=color)
            extent = f"min {lo_k:.3g}  max {hi_k:.3g}" if lo_k < 0 else f"max {hi_k:.3g}"
            columns.append((f"{target}  {extent}", blended, None))
        else:
            note = "all zero" if hi_k == 0 else f"constant {hi_k:.3g}"
            columns.append((f"{target}  {note}", overlay(small, heat, box, alpha=0.0, box_color=color), note))
    blended = overlay(small, shrunk[-1], box, opacity=opacity, normalize=False, box_color=color)
    flat = all(hi_k == lo_k for lo_k, hi_k in ranges)  # then combined() is all zero
    columns.append(("combined (normalised)" + ("  all zero" if flat else ""), blended, "all zero" if flat else None))
    return _panel_figure(columns, f"#{index} {name} {score:.2f}", None if hi == lo else (lo, hi), dpi, max_width)


def save_panel(
    path: str | os.PathLike,
    image: ImageLike,
    explanation: Explanation,
    index: int,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_width: int = 640,
    opacity: float = colors.OPACITY,
    dpi: float | None = None,
) -> Path:
    """Write :func:`panel` as a PNG at ``path`` (parent folders are created) and return the path.

    Example:
        >>> import tempfile, torch
        >>> from odam.structures import Detections, Explanation
        >>> d = Detections(torch.tensor([[1.0, 1.0, 6.0, 6.0]]), torch.tensor([0.9]), torch.tensor([0]))
        >>> e = Explanation(d, ("score",), torch.rand(1, 1, 8, 8))
        >>> save_panel(Path(tempfile.mkdtemp()) / "a" / "p.png", torch.zeros(3, 8, 8), e, 0).name
        'p.png'
    """
    fig = panel(image, explanation, index, class_names=class_names, max_width=max_width, opacity=opacity, dpi=dpi)
    try:
        out = _prepare(path)
        fig.savefig(out, format="png", dpi=fig.dpi)
    finally:
        fig.clear()  # no pyplot, so nothing to close: release the artists instead
    return out


def overview(
    image: ImageLike,
    detections: Detections,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_width: int = 1280,
) -> np.ndarray:
    """The photo with every detection outlined in its class's colour and numbered ``#k`` in a tag.

    ``k`` is the detection's index, as in :func:`panel`'s title ``#k person 0.87``. Boxes are three pixels
    thick, inside the pixels they cover (as :func:`overlay` draws them) and clipped to the image, in
    :func:`odam.viz.colors.class_color` of their label. Each tag sits on the box's top-left corner, just above the
    box (inside it when there is no room above), filled with the box's colour and written in black or white,
    whichever reads better on it; it holds ``#k``, then the class name when ``class_names`` is given. Detection
    0 is drawn last, so its box and tag lie on top.

    An image wider than ``max_width`` pixels (or higher than ``2 * max_width``) is shrunk first (antialiased
    bilinear), so memory beyond the input does not grow with it. One whose longer side is under 640 pixels is
    enlarged by the smallest whole factor that brings it to 640 or more (each pixel a block of pixels; but no
    wider than ``max_width``), so that the tags fit beside small boxes.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts.
        detections: boxes in the image's pixels.
        class_names: names indexed by label (a sequence or a mapping), written after the number.
        max_width: the widest the result is, in pixels.

    Returns:
        ``H' x W' x 3`` uint8 array: ``H x W`` unless the image was shrunk or enlarged.

    Example:
        >>> import torch
        >>> from odam.structures import Detections
        >>> d = Detections(torch.tensor([[10.0, 30.0, 60.0, 90.0]]), torch.tensor([0.9]), torch.tensor([1]))
        >>> out = overview(torch.zeros(3, 480, 640), d)
        >>> out.shape, out[60, 10].tolist()  # the left edge, in class 1's colour (#e69f00)
        ((480, 640, 3), [230, 159, 0])
        >>> overview(torch.zeros(3, 100, 120), d).shape  # enlarged 6 times
        (600, 720, 3)
    """
    fig = _overview_figure(image, detections, class_names=class_names, max_width=max_width)
    try:
        canvas = fig.canvas
        canvas.draw()
        width, height = canvas.get_width_height()
        return np.asarray(canvas.buffer_rgba())[:height, :width, :3].copy()
    finally:
        fig.clear()


def save_overview(
    path: str | os.PathLike,
    image: ImageLike,
    detections: Detections,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_width: int = 1280,
) -> Path:
    """Write :func:`overview` as a PNG at ``path`` (parent folders are created) and return the path.

    Example:
        >>> import tempfile, torch
        >>> from odam.structures import Detections
        >>> d = Detections(torch.tensor([[1.0, 1.0, 6.0, 6.0]]), torch.tensor([0.9]), torch.tensor([0]))
        >>> save_overview(Path(tempfile.mkdtemp()) / "a" / "o.png", torch.zeros(3, 8, 8), d).name
        'o.png'
    """
    array = overview(image, detections, class_names=class_names, max_width=max_width)
    out = _prepare(path)
    Image.fromarray(array).save(out, format="PNG")
    return out


def save_overlay(
    path: str | os.PathLike,
    image: ImageLike,
    heatmap: Tensor,
    box: Tensor | Sequence[float] | None = None,
    **kwargs,
) -> Path:
    """Write :func:`overlay` (``kwargs`` are its keyword options) as a PNG at ``path`` and return the path.

    Example:
        >>> import tempfile, torch
        >>> save_overlay(Path(tempfile.mkdtemp()) / "o.png", torch.zeros(3, 8, 8), torch.rand(8, 8)).name
        'o.png'
    """
    array = overlay(image, heatmap, box, **kwargs)
    out = _prepare(path)
    Image.fromarray(array).save(out, format="PNG")
    return out


# --- drawing -------------------------------------------------------------------------------------------


def _figure(width: int, height: int, dpi: float) -> Figure:
    """A figure on an Agg canvas of exactly ``width x height`` pixels at ``dpi``."""
    # Agg truncates figsize * dpi to whole pixels; a hundredth of a pixel more keeps float rounding from losing one.
    fig = Figure(figsize=((width + 0.01) / dpi, (height + 0.01) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _panel_figure(
    columns: list[tuple[str, np.ndarray, str | None]],
    title: str,
    scale: tuple[float, float] | None,
    dpi: float | None,
    max_width: int,
) -> Figure:
    """Lay out ``columns`` (title, image, note) in rows of cells, then the colorbar of ``scale``; sizes in pixels."""
    dh, dw = columns[0][1].shape[:2]
    factor = _enlargement(dw, dh, _PANEL_MIN_SIDE_PX, max_width)  # small images: whole blocks per pixel
    iw, ih = dw * factor, dh * factor
    cell = max(iw, _MIN_CELL_PX)
    dpi = float(dpi) if dpi is not None else 100.0 * max(1.0, iw / 400)
    pt = dpi / 72  # pixels per point
    gap, title_h, top = round(0.8 * _TITLE_PT * pt), round(1.9 * _TITLE_PT * pt), round(2.3 * _SUPTITLE_PT * pt)
    bar_w = round(1.2 * _TITLE_PT * pt) if scale is not None else 0
    right = bar_w + round((1.2 * _TITLE_PT + 9 * _TICK_PT) * pt) if scale is not None else 0  # pad, ticks, label
    n = len(columns)
    per_row = max(1, min(n, (_MAX_ROW_PX - 2 * gap - right + gap) // (cell + gap)))
    rows = math.ceil(n / per_row)
    per_row = math.ceil(n / rows)  # balanced rows
    width = gap + per_row * cell + (per_row - 1) * gap + right + gap
    height = top + rows * (title_h + ih) + gap
    fig = _figure(width, height, dpi)

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Figure fractions of a ``w x h`` pixel box whose top-left corner is at pixel ``(x, y)``."""
        return x / width, 1 - (y + h) / height, w / width, h / height

    for k, (text, blended, note) in enumerate(columns):
        row, col = divmod(k, per_row)
        x = gap + col * (cell + gap) + (cell - iw) / 2
        y = top + row * (title_h + ih) + title_h
        ax = fig.add_axes(rect(x, y, iw, ih), label=f"column {k}")
        ax.imshow(blended, interpolation="nearest", aspect="auto")
        ax.set_title(text, fontsize=_TITLE_PT, pad=0.4 * _TITLE_PT)
        ax.set_axis_off()
        if note is not None:
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="white",
                    fontsize=1.2 * _TITLE_PT, bbox={"boxstyle": "round,pad=0.3", "fc": "black", "alpha": 0.6,
                                                   "ec": "none"})
    if scale is not None:
        x = gap + per_row * cell + (per_row - 1) * gap + round(1.0 * _TITLE_PT * pt)
        span = rows * (title_h + ih) - title_h
        cax = fig.add_axes(rect(x, top + title_h, bar_w, span), label="colorbar")
        mappable = ScalarMappable(norm=Normalize(*scale), cmap=_colormap(colors.COLORMAP))
        bar = fig.colorbar(mappable, cax=cax)
        bar.ax.tick_params(labelsize=_TICK_PT)
        bar.set_label("map value (one scale for all but combined)", fontsize=_TICK_PT)
    fig.suptitle(title, fontsize=_SUPTITLE_PT, fontweight="bold", y=1 - 0.35 * _SUPTITLE_PT * pt / height,
                 va="top")
    return fig


def _overview_figure(
    image: ImageLike,
    detections: Detections,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None,
    max_width: int,
) -> Figure:
    """:func:`overview` before it is rendered: the boxed photo as a figure image, one text artist per tag."""
    if not isinstance(detections, Detections):
        raise ValueError(f"expected detections to be Detections, got {type(detections).__name__}")
    _check_max_width(max_width)
    img = load_image(image, max_pixels=None)
    h, w = img.shape[1:]
    size = _drawn_size(w, h, max_width)
    small = img if size == (w, h) else _shrink(img.detach().to("cpu", torch.float32), size)
    factor = _enlargement(*size, _OVERVIEW_MIN_SIDE_PX, max_width)
    photo = to_uint8(small)
    if factor > 1:
        photo = np.ascontiguousarray(photo.repeat(factor, axis=0).repeat(factor, axis=1))
    width, height = size[0] * factor, size[1] * factor
    scale = torch.tensor([width / w, height / h] * 2, dtype=torch.float64)
    boxes = detections.boxes.detach().to("cpu", torch.float64) * scale
    labels = detections.labels.tolist()
    names = [_class_name(label, class_names) for label in labels] if class_names is not None else None
    fig = _figure(width, height, 72.0)  # 72 dpi: a point is a pixel
    font = min(24.0, max(12.0, width / 50))  # pixels
    pad = 0.25 * font
    tags = []
    for k in reversed(range(len(detections))):  # detection 0 last, on top
        color = colors.class_color(labels[k])
        block = _box_pixels(boxes[k])
        _draw_outline(photo, block, np.array(colors.rgb(color), dtype=np.uint8), _OVERVIEW_LINE_PX)
        c1, r1, c2, _ = block
        text = f"#{k}" if names is None else f"#{k} {names[k]}"
        tag_h, tag_w = 1.2 * font + 2 * pad, 0.62 * font * len(text) + 2 * pad  # a generous estimate
        above = r1 - tag_h >= 0
        y = height - r1 + pad if above else height - max(r1, 0) - pad  # display pixels from the bottom
        va = "bottom" if above else "top"
        x, ha = max(c1, 0) + pad, "left"
        if x - pad + tag_w > width and c2 - tag_w >= 0:
            x, ha = min(c2, width) - pad, "right"
        tags.append((x, y, text, color, ha, va))
    fig.figimage(photo, origin="upper")
    for x, y, text, color, ha, va in tags:
        r, g, b = (v / 255 for v in colors.rgb(color))
        ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        fig.text(x, y, text, transform=IdentityTransform(), ha=ha, va=va, color=ink, fontsize=font,
                 fontweight="bold", bbox={"boxstyle": f"square,pad={pad / font}", "fc": color, "ec": "none"})
    return fig


# --- helpers -------------------------------------------------------------------------------------------


def _prepare(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str]) -> str:
    try:
        return str(class_names[label])
    except (IndexError, KeyError) as err:
        raise ValueError(f"label {label} has no entry in class_names ({len(class_names)} names)") from err


def _check_max_width(max_width: int) -> None:
    if isinstance(max_width, bool) or not isinstance(max_width, (int, np.integer)) or max_width < 1:
        raise ValueError(f"expected max_width to be a positive int, got {max_width!r}")


def _scale(vmin: float | None, vmax: float | None) -> tuple[float, float] | None:
    if vmin is None and vmax is None:
        return None
    if vmin is None or vmax is None:
        raise ValueError(f"give both vmin and vmax, or neither; got vmin={vmin} and vmax={vmax}")
    lo, hi = float(vmin), float(vmax)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"expected finite vmin < vmax, got vmin={vmin} and vmax={vmax}")
    return lo, hi


def _colormap(cmap: str | Colormap) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(f"unknown colormap {cmap!r}") from err


def _rgb(color: tuple[int, int, int]) -> np.ndarray:
    values = list(color)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise ValueError(f"expected box_color as three ints in 0..255, got {color!r}")
    return np.array(values, dtype=np.uint8)


def _box_pixels(box: Tensor | Sequence[float]) -> tuple[int, int, int, int]:
    """The pixel block ``box`` touches: columns ``c1 .. c2 - 1`` and rows ``r1 .. r2 - 1`` as ``(c1, r1, c2, r2)``."""
    values = torch.as_tensor(box, dtype=torch.float64).detach().cpu().flatten().tolist()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected box as four finite numbers (x1, y1, x2, y2), got {values}")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise ValueError(f"expected box with x1 <= x2 and y1 <= y2, got {values}")
    return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)


def _draw_outline(out: np.ndarray, block: tuple[int, int, int, int], rgb: np.ndarray, thickness: int = 2) -> None:
    """Paint a ``thickness``-pixel outline inside the pixel ``block`` of ``out`` (``[h, w, 3]``), clipped to it.

    Four strips, so the work and memory follow the box's perimeter, not the image's area.
    """
    h, w = out.shape[:2]
    c1, r1, c2, r2 = block
    t = thickness

    def paint(top: int, bottom: int, left: int, right: int) -> None:
        top, bottom, left, right = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
        if top < bottom and left < right:
            out[top:bottom, left:right] = rgb

    paint(r1, min(r1 + t, r2), c1, c2)  # top
    paint(max(r2 - t, r1), r2, c1, c2)  # bottom
    paint(r1, r2, c1, min(c1 + t, c2))  # left
    paint(r1, r2, max(c2 - t, c1), c2)  # right


def _normalized(heat: Tensor) -> Tensor:
    """``normalize_maps(heat)`` for one ``[H, W]`` map, bit for bit, with one full-size temporary instead of four."""
    lo, hi = torch.aminmax(heat)
    span = hi - lo
    if not bool(span > 0):
        return torch.zeros_like(heat)
    return (heat - lo).div_(span.clamp_min(torch.finfo(heat.dtype).tiny))


def _drawn_size(w: int, h: int, max_width: int) -> tuple[int, int]:
    """``(width, height)`` an image is drawn at: its own size, or shrunk to at most ``max_width`` wide and
    ``2 * max_width`` high, keeping its aspect."""
    factor = min(1.0, max_width / w, 2 * max_width / h)
    if factor == 1.0:
        return w, h
    return max(1, min(max_width, round(w * factor))), max(1, min(2 * max_width, round(h * factor)))


def _enlargement(w: int, h: int, min_side: int, max_width: int) -> int:
    """The smallest whole factor that makes the longer side of ``w x h`` at least ``min_side``, or the largest that
    keeps it within ``max_width x 2 max_width`` if that is smaller; at least 1."""
    return max(1, min(math.ceil(min_side / max(w, h)), max_width // w, 2 * max_width // h))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` (``[..., H, W]``) resized to ``size = (width, height)``, antialiased bilinear; as is if equal."""
    if x.shape[-1] == size[0] and x.shape[-2] == size[1]:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])
    small = F.interpolate(flat, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)
    return small.reshape(*lead, size[1], size[0])


def _shrink(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` (``[..., H, W]`` in [0, 1]) resized as :func:`_resize` does, kept in [0, 1]."""
    small = _resize(x, size)
    return small if small is x else small.clamp_(0, 1)  # the filter may step a rounding past 1
