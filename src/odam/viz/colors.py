"""The colours odam draws with, shared by the static panels and the explorer page so that both read alike.

- Heat maps use :data:`COLORMAP`, a perceptually uniform colormap (matplotlib's ``inferno``), and are blended over
  the photo with a transparency that follows the value: a pixel of value ``t`` in [0, 1] is
  ``(1 - a) * photo + a * colormap(t)`` with ``a = opacity * sqrt(t)`` (:func:`heat_alpha`), so a map is invisible
  where it is zero and the photo is not tinted there. The square root keeps the middle of a peaked map visible
  (with ``a = opacity * t``, a third of the peak was a faint purple on real photos).
- Detections are outlined in a colour per class (:func:`class_color`), from a palette that stays readable on
  photos.
"""

from __future__ import annotations

import matplotlib
import numpy as np

#: The heat-map colormap: perceptually uniform, dark (and, blended by value, transparent) at zero.
COLORMAP = "inferno"
#: Default opacity of a heat map at its maximum.
OPACITY = 0.75

#: Class colours (Okabe-Ito's colour-blind-safe palette, then Tableau's), as ``#rrggbb``; label ``k`` gets
#: ``PALETTE[k % len(PALETTE)]``.
PALETTE: tuple[str, ...] = (
    "#56b4e9", "#e69f00", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7",
    "#17becf", "#bcbd22", "#e377c2", "#8c564b", "#9467bd", "#2ca02c", "#ff7f0e",
)


def class_color(label: int) -> str:
    """The outline colour of class ``label``, as ``#rrggbb``.

    Example:
        >>> class_color(1), class_color(1 + len(PALETTE)) == class_color(1)
        ('#e69f00', True)
    """
    return PALETTE[int(label) % len(PALETTE)]


def rgb(color: str) -> tuple[int, int, int]:
    """``#rrggbb`` as three ints in 0..255.

    Example:
        >>> rgb("#e69f00")
        (230, 159, 0)
    """
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def colormap_table(name: str = COLORMAP) -> np.ndarray:
    """``uint8[256, 3]``: the colormap sampled at ``k / 255`` (what the explorer page colours maps with).

    Example:
        >>> table = colormap_table()
        >>> table.shape, table[0].tolist(), table[-1].tolist()
        ((256, 3), [0, 0, 4], [252, 255, 164])
    """
    colors = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(colors * 255).astype(np.uint8)


def heat_alpha(t: np.ndarray, opacity: float = OPACITY) -> np.ndarray:
    """The blending weight of the colormap at values ``t`` in [0, 1]: ``opacity * sqrt(t)``.

    Example:
        >>> heat_alpha(np.array([0.0, 0.25, 1.0]), 0.8).tolist()
        [0.0, 0.4, 0.8]
    """
    return opacity * np.sqrt(np.clip(t, 0.0, 1.0))
