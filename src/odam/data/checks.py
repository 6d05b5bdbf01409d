"""What the COCO and odgt readers and writers share: the limits, the error messages and the box checks.

Readers check everything they read. A file that cannot be read raises :class:`~odam.data.DatasetError` with one
line ``"<file>: <place>: <problem>"`` (:func:`fail`), where the place is ``top level``, ``line L column C``,
``image <id>``, ``annotation <id>``, ``category <id>`` or ``images[i]`` (an item whose id is missing or invalid)
for COCO, and ``line <n>`` (plus ``gtboxes[j]`` for one box) for odgt. A file that is missing or whose layout is
unknown raises a message with no place: ``"<file>: <problem>"``.

Limits, so that no file can make a reader (or pycocotools behind it) allocate without bound or crash: an image
side is at most :data:`MAX_IMAGE_SIDE` pixels, and every box coordinate and polygon vertex lies within
:data:`MAX_OUTSIDE` image sizes of the image (``-MAX_OUTSIDE * width <= x <= (MAX_OUTSIDE + 1) * width``, and
likewise for ``y``), which leaves room for amodal boxes and keeps every value exact enough in float32. JSON
nested deeper than Python can parse is an error of the file, not a ``RecursionError``.

Writers check the in-memory dataset first (:func:`check_dataset`: ``ValueError`` for one that the readers would
refuse), serialise it in full, then replace the target file atomically, so a failure leaves an existing file as
it was. Output is byte-stable: coordinates are rounded to :data:`DECIMALS` decimals and written as integers
where they are whole (:func:`box_out`, :func:`rounded`).
"""

from __future__ import annotations

import array
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from odam.data.dataset import Dataset, DatasetError, ImageRecord

PathLike = str | os.PathLike

#: The largest image width or height the readers accept (an RLE mask of 2**30 pixels still fits pycocotools'
#: 32-bit counts).
MAX_IMAGE_SIDE = 32768
#: How many image sizes beyond the border a box coordinate or polygon vertex may lie (amodal boxes extend past
#: the border; a huge polygon makes pycocotools allocate memory in proportion to its perimeter, or crash).
MAX_OUTSIDE = 8
#: The decimals the writers round coordinates to.
DECIMALS = 2
#: An absent visible or head box: a row of NaN.
NAN_BOX = (math.nan,) * 4


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def default_image_dir(path: Path, image_dir: PathLike | None) -> Path:
    """``image_dir`` if given, else ``path.parent / "images"`` if that folder exists, else ``path.parent``."""
    if image_dir is not None:
        return Path(image_dir)
    images = path.parent / "images"
    return images if images.is_dir() else path.parent


def read_text(path: Path, name: str) -> str:
    """The annotation file as text (UTF-8, an optional BOM dropped); a :class:`DatasetError` if unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise fail(name, None, "annotation file not found") from err
    except UnicodeDecodeError as err:
        raise fail(name, None, f"not UTF-8 text: {err.reason} at byte {err.start}") from err
    except OSError as err:
        raise fail(name, None, f"cannot read annotation file: {err.strerror or err}") from err


def fail(name: str, place: str | None, problem: str) -> DatasetError:
    """The one-line error ``"<file>: <place>: <problem>"`` (``"<file>: <problem>"`` without a place), to raise."""
    text = f"{name}: {place}: {problem}" if place else f"{name}: {problem}"
    return DatasetError(" ".join(text.splitlines()))


def show(value: Any, limit: int = 80) -> str:
    """``value`` as it looks in JSON, shortened to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # nested too deeply to show
        text = f"<deeply nested {json_kind(value)}>"
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(value: Any) -> str:
    """The JSON type name of a parsed value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for types, kind in (((int, float), "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def is_int(value: Any) -> bool:
    """A JSON integer (``bool`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_size(value: Any) -> bool:
    """An integer in ``1..MAX_IMAGE_SIDE``, or a float with such a value (some tools write ``640.0``)."""
    whole = is_int(value) or (isinstance(value, float) and value.is_integer())
    return whole and 0 < value <= MAX_IMAGE_SIDE


def is_finite(value: Any) -> bool:
    """A JSON number that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def near(value: float, size: int) -> bool:
    """Whether a coordinate lies within ``MAX_OUTSIDE`` image sizes of an image side of ``size`` pixels."""
    return -MAX_OUTSIDE * size <= value <= (MAX_OUTSIDE + 1) * size


def read_box(obj: dict, key: str, width: int, height: int, name: str, place: str, *,
         inside: bool) -> tuple[float, float, float, float]:
    """``obj[key]`` as ``[x, y, w, h]`` checked and converted to ``xyxy``.

    Args:
        inside: whether the box must overlap the image (full and visible boxes; a head box may lie outside).
    """
    value = obj[key]
    if not (isinstance(value, list) and len(value) == 4 and all(map(is_finite, value))):
        raise fail(name, place, f"{key} must be 4 finite numbers [x, y, w, h], got {show(value)}")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise fail(name, place, f"box {key} {show(value)} has non-positive size")
    if not (near(x, width) and near(x + w, width) and near(y, height) and near(y + h, height)):
        raise fail(name, place, f"box {key} {show(value)} reaches more than {MAX_OUTSIDE} image sizes beyond "
                                 f"the {width}x{height} image")
    if inside and (x + w <= 0 or y + h <= 0 or x >= width or y >= height):
        raise fail(name, place, f"box {key} {show(value)} lies entirely outside the {width}x{height} image")
    x1, y1, x2, y2 = array.array("f", (x, y, x + w, y + h)).tolist()  # as float32 (bounded above, so no overflow)
    if x2 <= x1 or y2 <= y1:
        raise fail(name, place, f"box {key} {show(value)} has non-positive size in float32")
    return x1, y1, x2, y2


def box_array(rows: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``float32 [N, 4]`` (also for no rows)."""
    return np.array(rows, np.float32).reshape(-1, 4)


def read_flag(obj: dict, key: str, name: str, place: str, prefix: str = "") -> bool:
    """``obj[key]`` (default 0) as a bool; it must be 0, 1, ``true`` or ``false``."""
    value = obj.get(key, 0)
    if isinstance(value, bool) or (is_int(value) and value in (0, 1)):
        return bool(value)
    raise fail(name, place, f"{prefix}{key} must be 0 or 1, got {show(value)}")


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def check_dataset(dataset: Dataset) -> None:
    """Raise ``ValueError`` for an in-memory dataset the writers cannot write or the readers would refuse."""
    categories = dataset.categories
    if not all(isinstance(c, str) and c for c in categories) or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct non-empty strings, got {categories!r}")
    image_ids: set[int] = set()
    ann_ids: set[int] = set()
    for rec in dataset.images:
        if not isinstance(rec.id, (int, np.integer)) or isinstance(rec.id, bool):
            raise ValueError(f"image id must be an integer, got {rec.id!r}")
        where = f"image {rec.id}"
        if rec.id in image_ids:
            raise ValueError(f"{where}: duplicate image id")
        image_ids.add(int(rec.id))
        for key in ("width", "height"):
            value = getattr(rec, key)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        n = len(rec.boxes)
        for key, shape in (("boxes", (n, 4)), ("labels", (n,)), ("ignore", (n,)), ("vboxes", (n, 4)),
                           ("hboxes", (n, 4)), ("ann_ids", (n,))):
            value = np.asarray(getattr(rec, key))
            if value.shape != shape:
                raise ValueError(f"{where}: {key} must have shape {list(shape)}, got {list(value.shape)}")
        labels = np.asarray(rec.labels)
        if n and not (np.issubdtype(labels.dtype, np.integer) and labels.min() >= 1
                      and labels.max() <= len(categories)):
            raise ValueError(f"{where}: labels must be integers in 1..{len(categories)}, got {labels.tolist()}")
        for key in ("vboxes", "hboxes"):
            rows = np.isnan(np.asarray(getattr(rec, key), np.float64))
            if (rows.any(1) & ~rows.all(1)).any():
                raise ValueError(f"{where}: each row of {key} must be all NaN (absent) or all finite")
        ids = np.asarray(rec.ann_ids)
        if n and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{where}: ann_ids must be integers, got dtype {ids.dtype}")
        for ann_id in ids.tolist():
            if ann_id < 1 or ann_id in ann_ids:
                problem = "is not positive" if ann_id < 1 else "is a duplicate"
                raise ValueError(f"{where}: annotation id {ann_id} {problem}")
            ann_ids.add(ann_id)
        if rec.masks is not None and len(rec.masks) != n:
            raise ValueError(f"{where}: masks must be None or one RLE per object, got {len(rec.masks)} for {n}")


def box_out(row: np.ndarray, what: str, rec: ImageRecord, where: str, *, inside: bool) -> list[float | int]:
    """An ``xyxy`` row as ``[x, y, w, h]`` rounded to 2 decimals, checked as the readers check it."""
    x1, y1, x2, y2 = (round(float(v), DECIMALS) for v in row)
    w, h = round(x2 - x1, DECIMALS), round(y2 - y1, DECIMALS)
    shown = [float(v) for v in row]
    if not all(map(math.isfinite, (x1, y1, w, h))):
        raise ValueError(f"{where}: {what} {shown} is not finite")
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: {what} {shown} has non-positive size (after rounding to {DECIMALS} decimals)")
    if inside and (x2 <= 0 or y2 <= 0 or x1 >= rec.width or y1 >= rec.height):
        raise ValueError(f"{where}: {what} {shown} lies entirely outside the {rec.width}x{rec.height} image")
    return [rounded(v) for v in (x1, y1, w, h)]


def rounded(value: float) -> float | int:
    """``value`` rounded to 2 decimals, as an int where whole (so ``10`` not ``10.0``, and never ``-0.0``)."""
    value = round(float(value), DECIMALS)
    return int(value) if value.is_integer() else value
