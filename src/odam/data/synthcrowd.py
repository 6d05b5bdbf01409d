"""SynthCrowd: crowded synthetic scenes with exact ground truth, written as COCO json and CrowdHuman odgt.

Every object is drawn from parts (a person has a head with hair, a torso, two arms and two legs) into a
local canvas, so its amodal silhouette is known exactly. Objects are drawn far to near (painter's order,
sorted by where they stand), and each pixel remembers which object drew it last; that gives the visible
mask, and from the masks the visible box. The full box is the bounding box of the whole silhouette, even
where it is hidden or outside the image (as CrowdHuman's ``fbox``); the head box is the bounding box of
the head.

Two styles:

* ``crowd``: one class, ``person``; 8 to 20 people per image. Each placed person gets, with probability
  0.35, a companion standing close behind or beside them (about a quarter of all people are companions), so
  that full boxes overlap with IoU > 0.5 (see docs/SYNTHCROWD.md for the measured statistics).
* ``mixed``: ``person`` (2 to 4), ``dog`` and ``car`` (1 to 3 each) at moderate density.

Each image has its own random stream, ``numpy.random.default_rng([seed, index])``, so the output depends
only on ``(seed, index, size, style)`` and images can be rendered in any order or in parallel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageFilter
from tqdm import tqdm

from odam.data.dataset import Dataset, ImageRecord

STYLES: tuple[str, ...] = ("crowd", "mixed")
CATEGORIES: dict[str, tuple[str, ...]] = {"crowd": ("person",), "mixed": ("person", "dog", "car")}

#: Objects with less than this share of their silhouette visible are kept but marked ``ignore``.
IGNORE_BELOW_VISIBLE = 0.1
#: Objects with fewer visible pixels than this are dropped (nothing left to annotate).
MIN_VISIBLE_PIXELS = 12


@dataclass
class _Shape:
    """One object's silhouette on its local canvas, placed at ``(x0, y0)`` in the image."""

    label: int
    x0: int
    y0: int
    colors: np.ndarray  # uint8 [h, w, 3]
    mask: np.ndarray  # bool [h, w]: the amodal silhouette
    head: tuple[float, float, float, float] | None  # xyxy in image pixels


# ---------------------------------------------------------------------------------------------- drawing


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys + 0.5, xs + 0.5


def _capsule(ys: np.ndarray, xs: np.ndarray, p: tuple[float, float], q: tuple[float, float], r: float) -> np.ndarray:
    """Pixels within ``r`` of the segment p-q (points as (x, y))."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    t = ((xs - px) * dx + (ys - py) * dy) / max(dx * dx + dy * dy, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return (xs - px - t * dx) ** 2 + (ys - py - t * dy) ** 2 <= r * r


def _ellipse(ys: np.ndarray, xs: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _trapezoid(ys: np.ndarray, xs: np.ndarray, cx: float, top: float, bottom: float, half_top: float,
               half_bottom: float) -> np.ndarray:
    t = np.clip((ys - top) / max(bottom - top, 1e-6), 0.0, 1.0)
    half = half_top + t * (half_bottom - half_top)
    return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= half)


def _color(rng: np.random.Generator, saturation=(0.2, 0.9), value=(0.2, 0.95), hue=(0.0, 6.0)) -> np.ndarray:
    """A random RGB colour in [0, 255]; ``hue`` in sixths of the colour wheel."""
    h = rng.uniform(*hue)
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _pattern(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, scale: float) -> Callable[[], np.ndarray]:
    """A clothing texture on the local canvas: solid, stripes, checks or dots in two colours."""
    a, b = _color(rng), _color(rng)
    kind = rng.integers(4)
    period = max(2.5, scale * rng.uniform(0.03, 0.08))
    if kind == 0:
        sel = np.zeros(ys.shape, bool)
    elif kind == 1:
        sel = (ys // period) % 2 == 0
    elif kind == 2:
        sel = ((ys // period) + (xs // period)) % 2 == 0
    else:
        sel = ((ys % (2 * period) - period) ** 2 + (xs % (2 * period) - period) ** 2) < (0.45 * period) ** 2
    return np.where(sel[..., None], a, b).astype(np.float32)


def _compose(parts: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``(mask, colours)`` parts in order onto an empty canvas; returns (colours, silhouette)."""
    colors = np.zeros((*shape, 3), np.float32)
    mask = np.zeros(shape, bool)
    for m, c in parts:
        colors[m] = c[m]
        mask |= m
    return colors, mask


def _person(rng: np.random.Generator, height: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Draw a person ``height`` pixels tall. Returns (colors [h,w,3], mask [h,w], head xyxy in local pixels)."""
    h = height
    aspect = rng.uniform(0.30, 0.42)
    w = aspect * h
    pad = 0.25 * h  # room for raised or swinging arms
    ch, cw = int(math.ceil(h)) + 2, int(math.ceil(w + 2 * pad)) + 2
    ys, xs = _grid(ch, cw)
    cx = cw / 2 + rng.uniform(-0.03, 0.03) * h
    head_ry = h * rng.uniform(0.060, 0.072)
    head_rx = head_ry * rng.uniform(0.75, 0.9)
    head_cy = 1 + head_ry
    head_cx = cx + rng.uniform(-0.02, 0.02) * h
    shoulder_y = head_cy + head_ry + 0.03 * h
    hip_y = h * rng.uniform(0.50, 0.56)
    half_shoulder = w * rng.uniform(0.30, 0.40)
    half_hip = w * rng.uniform(0.22, 0.30)
    limb = 0.045 * h

    skin = _color(rng, (0.3, 0.65), (0.3, 0.95), hue=(0.1, 0.6))
    hair = _color(rng, (0.1, 0.6), (0.05, 0.5))
    shirt = _pattern(rng, ys, xs, h)
    trousers = _pattern(rng, ys, xs, h) * 0.7

    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (mask, colours) in drawing order
    legs_out = rng.uniform(0.0, 0.22) * w
    for side in (-1, 1):
        hip = (cx + side * half_hip * 0.55, hip_y)
        foot = (cx + side * (half_hip * 0.5 + legs_out * rng.uniform(0.5, 1.0)), h - 1 - 0.02 * h)
        parts.append((_capsule(ys, xs, hip, foot, 0.06 * h), trousers))
        shoe = _ellipse(ys, xs, foot[0] + side * 0.02 * h, foot[1], 0.05 * h, 0.022 * h)
        parts.append((shoe, np.broadcast_to(_color(rng, value=(0.05, 0.4)), (*ys.shape, 3))))
    torso = _trapezoid(ys, xs, cx, shoulder_y - 0.02 * h, hip_y + 0.05 * h, half_shoulder, half_hip)
    parts.append((torso, shirt))
    neck = _capsule(ys, xs, (head_cx, head_cy), (cx, shoulder_y), 0.028 * h)
    parts.append((neck, np.broadcast_to(skin, (*ys.shape, 3))))
    for side in (-1, 1):
        shoulder = (cx + side * (half_shoulder - limb * 0.6), shoulder_y + limb * 0.5)
        angle = math.radians(rng.uniform(-20, 35) if rng.random() < 0.85 else rng.uniform(60, 150))
        length = h * rng.uniform(0.32, 0.38)
        hand = (shoulder[0] + side * length * math.sin(angle), shoulder[1] + length * math.cos(angle))
        elbow = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        parts.append((_capsule(ys, xs, shoulder, elbow, limb), shirt))
        parts.append((_capsule(ys, xs, elbow, hand, limb * 0.85), np.broadcast_to(skin, (*ys.shape, 3))))
    face = _ellipse(ys, xs, head_cx, head_cy, head_rx, head_ry)
    parts.append((face, np.broadcast_to(skin, (*ys.shape, 3))))
    hair_mask = face & (ys < head_cy - head_ry * rng.uniform(0.0, 0.5))
    parts.append((hair_mask, np.broadcast_to(hair, (*ys.shape, 3))))

    colors, mask = _compose(parts, (ch, cw))
    head = (head_cx - head_rx, head_cy - head_ry, head_cx + head_rx, head_cy + head_ry)
    return colors, mask, head


def _dog(rng: np.random.Generator, height: float) -> tuple[np.ndarray, np.ndarray, None]:
    """A four-legged animal ``height`` pixels tall, facing left or right."""
    h = height
    length = h * rng.uniform(1.1, 1.5)
    ch, cw = int(math.ceil(h)) + 2, int(math.ceil(length + 0.5 * h)) + 2
    ys, xs = _grid(ch, cw)
    facing = 1 if rng.random() < 0.5 else -1
    cx = cw / 2
    body_cy, body_ry, body_rx = 0.45 * h, 0.17 * h, 0.42 * length
    fur = _pattern(rng, ys, xs, h) * 0.6 + _color(rng, (0.2, 0.6), (0.2, 0.8)) * 0.4
    dark = np.broadcast_to(_color(rng, value=(0.05, 0.3)), (*ys.shape, 3))
    parts = []
    for dxf in (-0.32, -0.2, 0.2, 0.32):
        top = (cx + dxf * length, body_cy)
        foot = (cx + dxf * length + rng.uniform(-0.05, 0.05) * h, h - 1 - 0.03 * h)
        parts.append((_capsule(ys, xs, top, foot, 0.055 * h), fur))
    parts.append((_ellipse(ys, xs, cx, body_cy, body_rx, body_ry), fur))
    neck_top = (cx + facing * 0.45 * length, 0.2 * h)
    parts.append((_capsule(ys, xs, (cx + facing * 0.3 * length, body_cy), neck_top, 0.09 * h), fur))
    parts.append((_ellipse(ys, xs, neck_top[0], neck_top[1], 0.14 * h, 0.12 * h), fur))
    snout = (neck_top[0] + facing * 0.16 * h, neck_top[1] + 0.04 * h)
    parts.append((_ellipse(ys, xs, snout[0], snout[1], 0.09 * h, 0.055 * h), fur))
    parts.append((_ellipse(ys, xs, snout[0] + facing * 0.07 * h, snout[1] - 0.01 * h, 0.025 * h, 0.02 * h), dark))
    parts.append((_ellipse(ys, xs, neck_top[0] - facing * 0.06 * h, neck_top[1] - 0.1 * h, 0.04 * h, 0.08 * h), dark))
    tail_base = (cx - facing * 0.4 * length, body_cy - 0.05 * h)
    tail_tip = (tail_base[0] - facing * 0.2 * h, tail_base[1] - rng.uniform(0.0, 0.3) * h)
    parts.append((_capsule(ys, xs, tail_base, tail_tip, 0.03 * h), fur))
    return (*_compose(parts, (ch, cw)), None)


def _car(rng: np.random.Generator, height: float) -> tuple[np.ndarray, np.ndarray, None]:
    """A car seen from the side, ``height`` pixels tall."""
    h = height
    length = h * rng.uniform(2.0, 2.6)
    ch, cw = int(math.ceil(h)) + 2, int(math.ceil(length)) + 2
    ys, xs = _grid(ch, cw)
    cx = cw / 2
    paint = np.broadcast_to(_color(rng, (0.3, 1.0), (0.3, 1.0)), (*ys.shape, 3))
    glass = np.broadcast_to(_color(rng, (0.0, 0.3), (0.5, 0.9)) * np.array([0.8, 0.9, 1.0]), (*ys.shape, 3))
    tyre = np.broadcast_to(np.array([25.0, 25.0, 28.0]), (*ys.shape, 3))
    hub = np.broadcast_to(np.array([160.0, 160.0, 165.0]), (*ys.shape, 3))
    wheel_r = 0.2 * h
    wheel_y = h - 1 - wheel_r
    body = (ys >= 0.42 * h) & (ys <= wheel_y + 0.05 * h) & (np.abs(xs - cx) <= length / 2 - 0.06 * h)
    body |= _ellipse(ys, xs, cx - length / 2 + 0.1 * h, 0.62 * h, 0.1 * h, 0.2 * h)
    body |= _ellipse(ys, xs, cx + length / 2 - 0.1 * h, 0.62 * h, 0.1 * h, 0.2 * h)
    shift = rng.uniform(-0.1, 0.1) * length
    cabin = _trapezoid(ys, xs, cx + shift, 0.04 * h, 0.45 * h, 0.22 * length, 0.33 * length)
    window = _trapezoid(ys, xs, cx + shift, 0.1 * h, 0.4 * h, 0.18 * length, 0.28 * length)
    parts = [(cabin, paint), (window, glass), (body, paint)]
    for side in (-1, 1):
        wx = cx + side * 0.3 * length
        parts.append((_ellipse(ys, xs, wx, wheel_y, wheel_r, wheel_r), tyre))
        parts.append((_ellipse(ys, xs, wx, wheel_y, 0.45 * wheel_r, 0.45 * wheel_r), hub))
    return (*_compose(parts, (ch, cw)), None)


_DRAW = {"person": _person, "dog": _dog, "car": _car}
#: Height of each class relative to a person standing at the same depth.
_RELATIVE_HEIGHT = {"person": 1.0, "dog": (0.35, 0.5), "car": (0.45, 0.6)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured backdrop: smooth colour noise at two scales, a horizon with floor tiles or stripes."""
    out = np.zeros((size, size, 3), np.float32)
    for cells, amp in ((4, 1.0), (16, 0.35)):
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        up = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
        out += amp * up
    out /= 1.35
    ys, xs = _grid(size, size)
    horizon = size * rng.uniform(0.15, 0.45)
    floor = ys > horizon
    period = size * rng.uniform(0.03, 0.08)
    if rng.random() < 0.5:  # tiles in perspective
        depth = (ys - horizon).clip(min=1.0)
        u = (xs - size / 2) / depth * size * 0.1
        v = size * 2.0 / depth
        tiles = ((u // period + v // 1.0) % 2 == 0)
    else:
        tiles = (ys // period) % 2 == 0
    floor_color = _color(rng, (0.0, 0.4), (0.3, 0.8))
    out[floor] = 0.55 * out[floor] + 0.45 * floor_color * np.where(tiles[floor, None], 1.0, 0.75)
    wall = ~floor
    stripes = (xs // (period * rng.uniform(1, 3))) % 2 == 0
    out[wall] = 0.7 * out[wall] + 0.3 * _color(rng) * np.where(stripes[wall, None], 1.0, 0.85)
    return out


def _sample_objects(rng: np.random.Generator, size: int, style: str) -> list[tuple[str, float, float, float]]:
    """(class, centre x, foot y, height) per object, in image pixels."""

    def height_at(foot_y: float) -> float:  # nearer (lower) people look taller
        t = (foot_y / size - 0.3) / 0.95
        return size * float(np.clip(0.18 + 0.62 * t, 0.14, 0.85)) * rng.uniform(0.85, 1.15)

    objects = []
    if style == "crowd":
        n = int(rng.integers(8, 21))
        while len(objects) < n:
            foot = rng.uniform(0.4, 1.25) * size
            x = rng.uniform(-0.05, 1.05) * size
            h = height_at(foot)
            objects.append(("person", x, foot, h))
            if rng.random() < 0.35 and len(objects) < n:  # a companion, close behind or beside
                side = 1 if rng.random() < 0.5 else -1
                dx = side * rng.uniform(0.08, 0.3) * h * 0.36
                dy = rng.uniform(-0.08, 0.04) * h
                objects.append(("person", x + dx, foot + dy, h * rng.uniform(0.92, 1.05)))
    else:
        for cls in ("person", "dog", "car"):
            for _ in range(int(rng.integers(2, 5) if cls == "person" else rng.integers(1, 4))):
                foot = rng.uniform(0.5, 1.1) * size
                h = height_at(foot)
                rel = _RELATIVE_HEIGHT[cls]
                h *= 1.0 if isinstance(rel, float) else rng.uniform(*rel)
                objects.append((cls, rng.uniform(0.0, 1.0) * size, foot, h))
    return objects


def render_scene(seed: int, index: int, size: int = 320, style: str = "crowd") -> tuple[np.ndarray, list[dict]]:
    """Render image ``index`` of the dataset with ``seed``.

    Returns:
        ``(image, objects)``: ``uint8 [size, size, 3]``, and per kept object, far to near, a dict with
        ``label`` (1-based), ``box``, ``vbox``, ``hbox`` (``xyxy`` floats; ``hbox`` is NaN for non-persons),
        ``mask`` (``bool [size, size]`` visible pixels), ``visible`` (visible share of the silhouette) and
        ``ignore``.

    Example:
        >>> image, objects = render_scene(seed=0, index=0, size=160)
        >>> image.shape, image.dtype, len(objects) >= 5
        ((160, 160, 3), dtype('uint8'), True)
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    rng = np.random.default_rng([seed, index])
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    names = CATEGORIES[style]
    specs = sorted(_sample_objects(rng, size, style), key=lambda o: o[2])  # far (small foot y) first
    shapes: list[_Shape] = []
    for cls, x, foot, height in specs:
        colors, mask, head = _DRAW[cls](rng, height)
        ch, cw = mask.shape
        x0, y0 = int(round(x - cw / 2)), int(round(foot - ch))
        shape = _Shape(names.index(cls) + 1, x0, y0, colors, mask,
                       None if head is None else (head[0] + x0, head[1] + y0, head[2] + x0, head[3] + y0))
        # paste, clipped to the image
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + cw, size), min(y0 + ch, size)
        if ix0 < ix1 and iy0 < iy1:
            local = mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
            region = canvas[iy0:iy1, ix0:ix1]
            region[local] = colors[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][local]
            owner[iy0:iy1, ix0:ix1][local] = len(shapes)
        shapes.append(shape)

    image = _finish(rng, canvas)
    objects = []
    for k, shape in enumerate(shapes):
        visible = owner == k
        count = int(visible.sum())
        if count < MIN_VISIBLE_PIXELS:
            continue
        rows, cols = np.nonzero(shape.mask)
        box = (shape.x0 + cols.min(), shape.y0 + rows.min(), shape.x0 + cols.max() + 1, shape.y0 + rows.max() + 1)
        vrows = np.nonzero(visible.any(1))[0]
        vcols = np.nonzero(visible.any(0))[0]
        vbox = (vcols[0], vrows[0], vcols[-1] + 1, vrows[-1] + 1)
        share = count / len(rows)
        objects.append({
            "label": shape.label, "box": tuple(float(v) for v in box), "vbox": tuple(float(v) for v in vbox),
            "hbox": tuple(float(v) for v in shape.head) if shape.head else (math.nan,) * 4,
            "mask": visible, "visible": share, "ignore": share < IGNORE_BELOW_VISIBLE,
        })
    return image, objects


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Lighting gradient, camera blur and sensor noise."""
    size = canvas.shape[0]
    ys, xs = _grid(size, size)
    angle = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.25) * ((xs * math.cos(angle) + ys * math.sin(angle)) / size - 0.5)
    canvas = canvas * light[..., None]
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, rng.uniform(2.0, 7.0), canvas.shape).astype(np.float32)
    return noisy.round().clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ writing


def _render_to_file(args: tuple[int, int, int, str, str]) -> ImageRecord:
    seed, index, size, style, image_dir = args
    image, objects = render_scene(seed, index, size, style)
    path = Path(image_dir) / f"{index:06d}.png"
    Image.fromarray(image).save(path, compress_level=1)
    n = len(objects)

    def boxes(key: str) -> np.ndarray:
        return np.array([o[key] for o in objects], np.float32).reshape(n, 4)

    masks = []
    for o in objects:
        rle = mask_utils.encode(np.asfortranarray(o["mask"].astype(np.uint8)))
        masks.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return ImageRecord(
        id=index + 1, file=path, width=size, height=size, boxes=boxes("box"),
        labels=np.array([o["label"] for o in objects], np.int64), ignore=np.array([o["ignore"] for o in objects], bool),
        vboxes=boxes("vbox"), hboxes=boxes("hbox"), masks=masks, ann_ids=np.zeros(n, np.int64),
    )


def generate(
    out: str | os.PathLike,
    num_images: int,
    seed: int,
    *,
    size: int = 320,
    style: str = "crowd",
    workers: int = 1,
    progress: bool = True,
) -> Dataset:
    """Write a SynthCrowd dataset: ``out/images/NNNNNN.png``, ``out/annotations.json`` and ``out/annotations.odgt``.

    The same arguments give byte-identical files, whatever ``workers`` is.

    Args:
        out: the dataset folder (created).
        num_images: how many images, >= 1.
        seed: the dataset seed; use seeds never used for training for held-out sets.
        size: image side in pixels, >= 64.
        style: ``"crowd"`` (one class, dense) or ``"mixed"`` (person, dog, car).
        workers: processes used to render.
        progress: show a progress bar on stderr.

    Returns:
        The dataset as written.

    Example:
        >>> import tempfile
        >>> data = generate(tempfile.mkdtemp(), num_images=2, seed=7, size=96, progress=False)
        >>> len(data), data.categories
        (2, ('person',))
    """
    from odam.data import write_coco, write_odgt

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 64:
        raise ValueError(f"size must be an integer >= 64, got {size!r}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    root = Path(out)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, size, style, str(image_dir)) for i in range(num_images)]
    bar = tqdm(total=num_images, desc="synthcrowd", unit="img", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            records = []
            for record in pool.map(_render_to_file, jobs, chunksize=8):
                records.append(record)
                bar.update()
    else:
        records = []
        for job in jobs:
            records.append(_render_to_file(job))
            bar.update()
    bar.close()
    next_id = 1
    for record in records:
        record.ann_ids = np.arange(next_id, next_id + len(record), dtype=np.int64)
        next_id += len(record)
    dataset = Dataset(records, CATEGORIES[style], info={"generator": "odam synthcrowd", "seed": seed,
                                                        "size": size, "style": style})
    write_coco(dataset, root / "annotations.json")
    write_odgt(dataset, root / "annotations.odgt")
    return dataset
