"""Heat-map overlays and per-detection panels (as in Fig. 3 of the ODAM paper); re-exported by :mod:`odam.viz`.

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
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from odam._image import ImageLike, load_image
from odam.structures import Explanation

#: Width of one panel column, in inches.
_PANEL_INCHES = 3.0
#: Room for the suptitle and the subplot titles, in inches.
_TITLE_INCHES = 0.8
#: Pixels blended at a time in float64 by overlay (about 40 MB of temporaries, matplotlib's included).
_CHUNK_PIXELS = 1 << 18


def overlay(
    image: ImageLike,
    heatmap: Tensor,
    box: Tensor | Sequence[float] | None = None,
    *,
    alpha: float = 0.5,
    cmap: str | Colormap = "jet",
    normalize: bool = True,
    box_color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """Colour ``heatmap`` with ``cmap``, blend it over ``image`` and outline ``box``.

    Each pixel is ``(1 - alpha) * image + alpha * cmap(heat)``, rounded to uint8. The box outline is two
    pixels thick, drawn inside the pixels the box covers (columns ``floor(x1) .. ceil(x2) - 1``, rows
    likewise) and clipped to the image.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts.
        heatmap: ``Tensor[H, W]``, any device; detached.
        box: ``(x1, y1, x2, y2)`` in pixels, a ``Tensor[4]`` or a sequence of four numbers.
        alpha: weight of the coloured heat map, in [0, 1].
        cmap: a matplotlib colormap or its name.
        normalize: min-max normalise the heat map to [0, 1] first (a constant map becomes 0). If False, its
            values must already lie in [0, 1].
        box_color: RGB colour of the box outline, each in 0..255.

    Returns:
        ``H x W x 3`` uint8 array.

    Example:
        >>> import torch
        >>> out = overlay(torch.zeros(3, 8, 8), torch.rand(8, 8), torch.tensor([1.0, 1.0, 6.0, 6.0]))
        >>> out.shape, out.dtype.name, out[1, 3].tolist()
        ((8, 8, 3), 'uint8', [0, 255, 0])
    """
    # No pixel limit here: the heat map already has the image's size, and what follows is small per pixel.
    img = load_image(image, max_pixels=None)
    if not isinstance(heatmap, Tensor):
        raise ValueError(f"expected heatmap to be a tensor, got {type(heatmap).__name__}")
    if heatmap.shape != img.shape[1:]:
        raise ValueError(
            f"heatmap shape {tuple(heatmap.shape)} does not match image shape {tuple(img.shape[1:])}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha}")
    heat = heatmap.detach().to("cpu", torch.float32)
    if not bool(heat.isfinite().all()):
        raise ValueError(f"expected a finite heatmap, got {int((~heat.isfinite()).sum())} non-finite values")
    if normalize:
        heat = _normalized(heat)
    elif heat.numel() and not bool(((heat >= 0) & (heat <= 1)).all()):
        raise ValueError(
            f"expected heatmap values in [0, 1] with normalize=False, "
            f"got min {heat.min().item()} and max {heat.max().item()}"
        )
    colormap = _colormap(cmap)
    outline = None if box is None else (_box_pixels(box), _rgb(box_color))
    base, unit = img.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy(), heat.numpy()
    h, w = unit.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    # Blend a band of rows at a time: float64 only for _CHUNK_PIXELS pixels, never at full resolution.
    rows = max(1, _CHUNK_PIXELS // max(w, 1))
    for r in range(0, h, rows):
        colours = colormap(unit[r : r + rows].astype(np.float64))[..., :3]
        blended = (1.0 - alpha) * base[r : r + rows].astype(np.float64) + alpha * colours
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
    dpi: float = 100.0,
) -> Figure:
    """One row of overlays for detection ``index``: one per target, then their combination.

    The last column shows ``explanation.combined()`` (the element-wise max of the normalised maps). Every
    column outlines the detection's box; the figure title is the label (its name if ``class_names`` is
    given) and the score, e.g. ``person 0.87``.

    Each column is ``3`` inches wide. An image wider than that at ``dpi`` is drawn at that resolution: the
    image and each normalised map are shrunk (antialiased bilinear) before they are coloured and blended, and
    the box outline is two pixels thick at the size drawn. So memory beyond the inputs stays at a few bytes
    per image pixel, whatever the image's size.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts (with no pixel
            limit: the maps already have the image's size).
        explanation: maps of shape ``[N, T, H, W]`` at the image's resolution.
        index: which detection, ``0 <= index < N``.
        class_names: names indexed by label (a sequence or a mapping).
        dpi: the figure's resolution, in dots per inch; :func:`save_panel` passes its own.

    Returns:
        A matplotlib figure on an Agg canvas with ``T + 1`` axes.

    Example:
        >>> import torch
        >>> from odam.structures import Detections, Explanation
        >>> d = Detections(torch.tensor([[1.0, 1.0, 6.0, 6.0]]), torch.tensor([0.87]), torch.tensor([0]))
        >>> e = Explanation(d, ("score", "left"), torch.rand(1, 2, 8, 8))
        >>> fig = panel(torch.zeros(3, 8, 8), e, 0, class_names=["person"])
        >>> [ax.get_title() for ax in fig.axes], fig.get_suptitle()
        (['score', 'left', 'combined'], 'person 0.87')
    """
    n, index = len(explanation), operator.index(index)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for an explanation of {n} detections")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not (math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"expected dpi to be a positive number, got {dpi!r}")
    img = load_image(image, max_pixels=None)
    h, w = img.shape[1:]
    maps = explanation.maps[index].detach()
    if maps.shape[-2:] != (h, w):
        raise ValueError(f"heatmap shape {tuple(maps.shape[-2:])} does not match image shape {(h, w)}")
    det = explanation.detections[index]
    label, score = int(det.labels[0]), float(det.scores[0])
    name = str(label)
    if class_names is not None:
        try:
            name = str(class_names[label])
        except (IndexError, KeyError) as err:
            raise ValueError(f"label {label} has no entry in class_names ({len(class_names)} names)") from err

    size = _drawn_size(w, h, dpi)
    shown, combined = [], None
    for heat in maps:  # one full-resolution map at a time
        unit = _normalized(heat)
        combined = unit if combined is None else torch.maximum(combined, unit, out=combined)
        # As overlay(img, heat) would: normalised in float32 on the CPU.
        shown.append(_shrink(_normalized(heat.to("cpu", torch.float32)), size))
    shown.append(_shrink(combined.to("cpu", torch.float32), size))
    del combined
    box = det.boxes[0].detach().to("cpu", torch.float64)
    small = img
    if size != (w, h):
        small = _shrink(img.detach().to("cpu", torch.float32), size)
        box = box * box.new_tensor([size[0] / w, size[1] / h] * 2)

    titles = [*explanation.targets, "combined"]
    fig = Figure(figsize=(_PANEL_INCHES * len(titles), _PANEL_INCHES * h / w + _TITLE_INCHES), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(titles), squeeze=False)[0]
    for ax, title, unit in zip(axes, titles, shown, strict=True):
        ax.imshow(overlay(small, unit, box, normalize=False))  # each map is normalised already
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle(f"{name} {score:.2f}")
    return fig


def save_panel(
    path: str | os.PathLike,
    image: ImageLike,
    explanation: Explanation,
    index: int,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    dpi: int = 100,
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
    fig = panel(image, explanation, index, class_names=class_names, dpi=dpi)
    try:
        out = _prepare(path)
        fig.savefig(out, format="png", dpi=dpi)
    finally:
        fig.clear()  # no pyplot, so nothing to close: release the artists instead
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


def _prepare(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


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


def _drawn_size(w: int, h: int, dpi: float) -> tuple[int, int]:
    """``(width, height)`` of one panel column at ``dpi``: the image's own size if it is no wider."""
    width = max(1, math.ceil(_PANEL_INCHES * dpi))
    if w <= width:
        return w, h
    return width, max(1, round(h * width / w))


def _shrink(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` (``[..., H, W]`` in [0, 1]) resized to ``size = (width, height)``, antialiased; as is if equal."""
    if x.shape[-1] == size[0] and x.shape[-2] == size[1]:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])
    small = F.interpolate(flat, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)
    return small.reshape(*lead, size[1], size[0]).clamp_(0, 1)  # the filter may step a rounding past 1
