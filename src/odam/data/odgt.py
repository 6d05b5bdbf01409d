"""Read and write CrowdHuman odgt (one JSON object per line), to and from :class:`~odam.data.Dataset`.

Errors and limits are those of :mod:`odam.data.checks`. odgt keeps CrowdHuman's amodal ``fbox`` as the full box.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from odam._atomic import atomic_write
from odam._image import open_image, upright_size
from odam.data.checks import (
    MAX_IMAGE_SIDE,
    NAN_BOX,
    PathLike,
    box_array,
    box_out,
    check_dataset,
    default_image_dir,
    fail,
    is_size,
    json_kind,
    read_box,
    read_flag,
    read_text,
    show,
)
from odam.data.dataset import Dataset, ImageRecord

#: The extensions tried, in order, for an odgt line with an ``ID`` but no ``file_name``.
ODGT_EXTENSIONS = (".jpg", ".png", ".jpeg")


def read_odgt(path: PathLike, image_dir: PathLike | None = None, categories: Sequence[str] = ("person",)) -> Dataset:
    """Read a CrowdHuman ``.odgt`` file (one JSON object per line) into a :class:`Dataset`.

    Each line is ``{"ID": str, "gtboxes": [{"tag": str, "fbox": [x, y, w, h], "vbox": ..., "hbox": ...,
    "extra": {"ignore": 0 | 1, ...}}, ...]}``, optionally with ``file_name``, ``width`` and ``height``
    (CrowdHuman's own lines have none of these: the image is ``ID`` plus the first existing extension among
    ``.jpg``, ``.png``, ``.jpeg``, and its size is read from the file header). Blank lines are skipped. The
    tag ``"mask"`` (CrowdHuman's ignore region) is kept as an ignored object with label 1, unless
    ``"mask"`` is itself one of ``categories``. ``vbox``/``hbox`` become NaN rows where absent; a full box
    may extend past the image border (CrowdHuman's are amodal) but must overlap the image. ``masks`` is
    ``None``. Image ids are the 1-based line numbers; annotation ids count the boxes of the file from 1.

    Args:
        path: the ``.odgt`` file.
        image_dir: the image folder; default ``path.parent / "images"`` if that folder exists, else
            ``path.parent``.
        categories: the tags, in label order (label ``l`` is ``categories[l - 1]``); any other tag except
            ``"mask"`` is an error.

    Returns:
        The dataset, with ``source=Path(path)``.

    Raises:
        DatasetError: for a missing or unreadable file, a line that is not a JSON object, a missing key, a
            wrong type, a duplicate ``ID``, an unknown tag, a box with non-positive size, wholly outside the
            image or too far from it, JSON nested too deeply, a missing image file, or an image whose header
            cannot be read.
        ValueError: if ``categories`` is not a non-empty sequence of distinct non-empty names.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> Image.new("RGB", (64, 48)).save(root / "273271,c9db000d5146c15.png")
        >>> line = {"ID": "273271,c9db000d5146c15", "gtboxes": [
        ...     {"tag": "person", "fbox": [-4, 5, 20, 50], "vbox": [0, 5, 16, 30], "extra": {"box_id": 0}},
        ...     {"tag": "mask", "fbox": [40, 0, 10, 10], "extra": {"ignore": 1}}]}
        >>> _ = (root / "ann.odgt").write_text(json.dumps(line) + "\\n")
        >>> rec = read_odgt(root / "ann.odgt").images[0]
        >>> (rec.width, rec.height), rec.boxes.tolist(), rec.ignore.tolist(), rec.ann_ids.tolist()
        ((64, 48), [[-4.0, 5.0, 16.0, 55.0], [40.0, 0.0, 50.0, 10.0]], [False, True], [1, 2])
        >>> tmp.cleanup()
    """
    categories = _check_categories(categories)
    name = os.fspath(path)
    path = Path(path)
    root = default_image_dir(path, image_dir)
    text = read_text(path, name)
    label_of = {tag: label for label, tag in enumerate(categories, 1)}
    first_line: dict[str, int] = {}
    records = []
    ann_id = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        place = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(name, place, f"invalid JSON at column {err.colno}: {err.msg}") from err
        except RecursionError as err:
            raise fail(name, place, "JSON nested too deeply to parse") from err
        if not isinstance(obj, dict):
            raise fail(name, place, f"expected a JSON object, got {json_kind(obj)}")
        for key in ("ID", "gtboxes"):
            if key not in obj:
                raise fail(name, place, f"missing key {key!r}")
        key_id = obj["ID"]
        if not isinstance(key_id, str) or not key_id:
            raise fail(name, place, f"ID must be a non-empty string, got {show(key_id)}")
        if key_id in first_line:
            raise fail(name, place, f"duplicate ID {show(key_id)} (also line {first_line[key_id]})")
        first_line[key_id] = number
        if not isinstance(obj["gtboxes"], list):
            raise fail(name, place, f"gtboxes must be an array, got {json_kind(obj['gtboxes'])}")
        file = _odgt_file(obj, root, name, place)
        width, height = _odgt_size(obj, file, name, place)

        boxes, vboxes, hboxes, labels, ignore = [], [], [], [], []
        for j, gt in enumerate(obj["gtboxes"]):
            where = f"{place}: gtboxes[{j}]"
            if not isinstance(gt, dict):
                raise fail(name, where, f"expected a JSON object, got {json_kind(gt)}")
            for key in ("tag", "fbox"):
                if key not in gt:
                    raise fail(name, where, f"missing key {key!r}")
            tag = gt["tag"]
            if not isinstance(tag, str):
                raise fail(name, where, f"tag must be a string, got {json_kind(tag)}")
            if tag in label_of:
                label, ignored = label_of[tag], False
            elif tag == "mask":
                label, ignored = 1, True
            else:
                raise fail(name, where, f"unknown tag {show(tag)} (categories: {', '.join(categories)}, or mask)")
            extra = gt.get("extra", {})
            if not isinstance(extra, dict):
                raise fail(name, where, f"extra must be an object, got {json_kind(extra)}")
            boxes.append(read_box(gt, "fbox", width, height, name, where, inside=True))
            vboxes.append(read_box(gt, "vbox", width, height, name, where, inside=True) if "vbox" in gt else NAN_BOX)
            hboxes.append(read_box(gt, "hbox", width, height, name, where, inside=False) if "hbox" in gt else NAN_BOX)
            labels.append(label)
            ignore.append(ignored or read_flag(extra, "ignore", name, where, prefix="extra."))
        n = len(boxes)
        records.append(ImageRecord(
            id=number, file=file, width=width, height=height, boxes=box_array(boxes),
            labels=np.array(labels, np.int64).reshape(-1), ignore=np.array(ignore, bool).reshape(-1),
            vboxes=box_array(vboxes), hboxes=box_array(hboxes), masks=None,
            ann_ids=np.arange(ann_id + 1, ann_id + n + 1, dtype=np.int64),
        ))
        ann_id += n
    return Dataset(images=records, categories=categories, source=path)


def _check_categories(categories: Sequence[str]) -> tuple[str, ...]:
    if isinstance(categories, str) or not all(isinstance(c, str) and c for c in categories):
        raise ValueError(f"categories must be a sequence of non-empty names, got {categories!r}")
    categories = tuple(categories)
    if not categories or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct and at least one, got {categories!r}")
    return categories


def _odgt_file(obj: dict, root: Path, name: str, place: str) -> Path:
    """The image file of an odgt line: ``file_name`` if given, else ``ID`` plus the first existing extension."""
    if "file_name" in obj:
        if not isinstance(obj["file_name"], str) or not obj["file_name"]:
            raise fail(name, place, f"file_name must be a non-empty string, got {show(obj['file_name'])}")
        file = root / obj["file_name"]
        if not file.is_file():
            raise fail(name, place, f"image file {file} not found")
        return file
    for ext in ODGT_EXTENSIONS:
        file = root / (obj["ID"] + ext)
        if file.is_file():
            return file
    raise fail(name, place, f"no image file for ID {show(obj['ID'])} in {root} (tried {', '.join(ODGT_EXTENSIONS)})")


def _odgt_size(obj: dict, file: Path, name: str, place: str) -> tuple[int, int]:
    """``(width, height)`` from the line if it has them, else from the image header (no decoding)."""
    given = [key for key in ("width", "height") if key in obj]
    if len(given) == 1:
        other = "height" if given[0] == "width" else "width"
        raise fail(name, place, f"has {given[0]} but no {other}")
    if given:
        for key in given:
            if not is_size(obj[key]):
                raise fail(name, place, f"{key} must be an integer in 1..{MAX_IMAGE_SIDE}, got {show(obj[key])}")
        return int(obj["width"]), int(obj["height"])
    try:
        with open_image(file) as image:
            width, height = upright_size(image)  # load_image turns photos upright by their EXIF orientation
    except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise fail(name, place, f"cannot read the size of image {file}: {err}") from err
    if max(width, height) > MAX_IMAGE_SIDE:
        raise fail(name, place, f"image {file} is {width}x{height}, larger than {MAX_IMAGE_SIDE} pixels a side")
    return width, height


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def write_odgt(dataset: Dataset, path: PathLike) -> None:
    """Write ``dataset`` as CrowdHuman odgt, one line per image, atomically and byte-stably.

    Each line is ``{"ID": file stem, "file_name": file.name, "width", "height", "gtboxes": [{"tag": category
    name, "fbox", ["vbox"], ["hbox"], "extra": {"ignore": 0 | 1, "box_id": index in the image}}]}``, boxes
    ``[x, y, w, h]`` rounded to 2 decimals, NaN ``vbox``/``hbox`` left out. odgt has no masks, ids or
    ``info``: :func:`read_odgt` numbers images by line and annotations by a running count.

    Args:
        dataset: the dataset; file stems must be distinct (they are the ``ID``).
        path: the ``.odgt`` file to write (replaced if it exists; its folder must exist).

    Raises:
        ValueError: for a dataset the readers would refuse (see :func:`to_coco_dict`) or two images with
            the same file stem. On any error an existing file is unchanged.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from odam.data import Dataset, ImageRecord
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> nan = np.full((1, 4), np.nan, np.float32)
        >>> rec = ImageRecord(id=1, file=root / "a.png", width=64, height=48,
        ...     boxes=np.array([[10, 5, 30, 35]], np.float32), labels=np.array([1]), ignore=np.array([False]),
        ...     vboxes=np.array([[12, 5, 30, 20]], np.float32), hboxes=nan, masks=None, ann_ids=np.array([1]))
        >>> write_odgt(Dataset([rec], ("person",)), root / "annotations.odgt")
        >>> print((root / "annotations.odgt").read_text(), end="")
        {"ID":"a","file_name":"a.png","width":64,"height":48,"gtboxes":[{"tag":"person","fbox":[10,5,20,30],\
"vbox":[12,5,18,15],"extra":{"ignore":0,"box_id":0}}]}
        >>> tmp.cleanup()
    """
    check_dataset(dataset)
    lines, stems = [], {}
    for rec in dataset.images:
        file = Path(rec.file)
        if file.stem in stems:
            raise ValueError(f"image {rec.id}: file stem {file.stem!r} is also that of image {stems[file.stem]}; "
                             f"odgt IDs must be distinct")
        stems[file.stem] = rec.id
        gtboxes = []
        for k in range(len(rec)):
            where = f"image {rec.id}: annotation {int(rec.ann_ids[k])}"
            gt: dict[str, Any] = {"tag": dataset.categories[int(rec.labels[k]) - 1],
                                  "fbox": box_out(rec.boxes[k], "box", rec, where, inside=True)}
            for key, rows, inside in (("vbox", rec.vboxes, True), ("hbox", rec.hboxes, False)):
                if not np.isnan(rows[k]).all():
                    gt[key] = box_out(rows[k], key, rec, where, inside=inside)
            gt["extra"] = {"ignore": int(bool(rec.ignore[k])), "box_id": k}
            gtboxes.append(gt)
        line = {"ID": file.stem, "file_name": file.name, "width": int(rec.width), "height": int(rec.height),
                "gtboxes": gtboxes}
        lines.append(json.dumps(line, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
    atomic_write(Path(path), "".join(lines))
