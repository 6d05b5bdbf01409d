"""Heat-map overlays and per-detection panels (as in Fig. 3 of the ODAM paper).

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

from odam._image import ImageLike, load_image, to_uint8
from odam.structures import Explanation, normalize_maps

#: Width of one panel column, in inches.
_PANEL_INCHES = 3.0
#: Room for the suptitle and the subplot titles, in inches.
_TITLE_INCHES = 0.8


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
    img = load_image(image)
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
        heat = normalize_maps(heat)
    elif heat.numel() and not bool(((heat >= 0) & (heat <= 1)).all()):
        raise ValueError(
            f"expected heatmap values in [0, 1] with normalize=False, "
            f"got min {heat.min().item()} and max {heat.max().item()}"
        )
    colours = _colormap(cmap)(heat.numpy().astype(np.float64))[..., :3]
    base = img.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    blended = (1.0 - alpha) * base + alpha * colours
    out = to_uint8(torch.from_numpy(blended).permute(2, 0, 1).clamp(0, 1))
    if box is not None:
        out[_outline_mask(box, *out.shape[:2])] = _rgb(box_color)
    return out


def panel(
    image: ImageLike,
    explanation: Explanation,
    index: int,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> Figure:
    """One row of overlays for detection ``index``: one per target, then their combination.

    The last column shows ``explanation.combined()`` (the element-wise max of the normalised maps). Every
    column outlines the detection's box; the figure title is the label (its name if ``class_names`` is
    given) and the score, e.g. ``person 0.87``.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1], or anything :func:`odam.load_image` accepts.
        explanation: maps of shape ``[N, T, H, W]`` at the image's resolution.
        index: which detection, ``0 <= index < N``.
        class_names: names indexed by label (a sequence or a mapping).

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
    img = load_image(image)
    det = explanation.detections[index]
    one = Explanation(det, explanation.targets, explanation.maps[index : index + 1])
    label, score = int(det.labels[0]), float(det.scores[0])
    name = str(label)
    if class_names is not None:
        try:
            name = str(class_names[label])
        except (IndexError, KeyError) as err:
            raise ValueError(f"label {label} has no entry in class_names ({len(class_names)} names)") from err

    titles = [*explanation.targets, "combined"]
    maps = [*one.maps[0], one.combined()[0]]
    h, w = img.shape[1:]
    fig = Figure(
        figsize=(_PANEL_INCHES * len(titles), _PANEL_INCHES * h / w + _TITLE_INCHES), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(titles), squeeze=False)[0]
    for ax, title, heat in zip(axes, titles, maps, strict=True):
        # The combined map is already in [0, 1]; normalising it again would stretch it.
        ax.imshow(overlay(img, heat, det.boxes[0], normalize=title != "combined"))
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
    fig = panel(image, explanation, index, class_names=class_names)
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


def _outline_mask(box: Tensor | Sequence[float], h: int, w: int, thickness: int = 2) -> np.ndarray:
    """``[h, w]`` bool mask of a ``thickness``-pixel outline drawn inside ``box``, clipped to the image."""
    values = torch.as_tensor(box, dtype=torch.float64).detach().cpu().flatten().tolist()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected box as four finite numbers (x1, y1, x2, y2), got {values}")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise ValueError(f"expected box with x1 <= x2 and y1 <= y2, got {values}")
    c1, r1, c2, r2 = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    t = thickness
    inside = (cols >= c1) & (cols < c2) & (rows >= r1) & (rows < r2)
    core = (cols >= c1 + t) & (cols < c2 - t) & (rows >= r1 + t) & (rows < r2 - t)
    return inside & ~core
