"""Read and write detection datasets as COCO json and CrowdHuman odgt, to and from :class:`Dataset`.

Readers check everything they read. A file that cannot be read raises :class:`DatasetError` with one line
``"<file>: <place>: <problem>"``, where the place is ``top level``, ``line L column C``, ``image <id>``,
``annotation <id>``, ``category <id>`` or ``images[i]`` (an item whose id is missing or invalid) for COCO,
and ``line <n>`` (plus ``gtboxes[j]`` for one box) for odgt. A file that is missing or whose layout is
unknown raises a message with no place: ``"<file>: <problem>"``.

Limits, so that no file can make a reader (or pycocotools behind it) allocate without bound or crash: an image
side is at most :data:`MAX_IMAGE_SIDE` pixels, and every box coordinate and polygon vertex lies within
:data:`MAX_OUTSIDE` image sizes of the image (``-MAX_OUTSIDE * width <= x <= (MAX_OUTSIDE + 1) * width``, and
likewise for ``y``), which leaves room for amodal boxes and keeps every value exact enough in float32. A
compressed RLE is decoded by odam (not by pycocotools) and checked before pycocotools sees it. JSON nested
deeper than Python can parse is an error of the file, not a ``RecursionError``.

Boxes. In memory, ``ImageRecord.boxes`` is the full (amodal) box. A COCO ``bbox`` is clipped to the image, as
COCO's convention and every COCO tool assume: :func:`write_coco` writes the clipped box as ``bbox`` and, where
the full box extends past the image, the full box as ``amodal_bbox`` (``[x, y, w, h]``, odam's own key, which
other tools ignore). :func:`read_coco` takes ``amodal_bbox`` as the full box where present (its ``bbox`` must
then be it clipped to the image, within :data:`CLIP_TOLERANCE` pixels), else ``bbox``. odgt keeps
CrowdHuman's amodal ``fbox``.

Writers check the in-memory dataset first (``ValueError`` for one that the readers would refuse), serialise it
in full, then replace the target file atomically, so a failure leaves an existing file as it was. Output is
byte-stable: coordinates are rounded to 2 decimals and written as integers where they are whole.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from odam._atomic import atomic_write
from odam._image import open_image, upright_size
from odam.data.dataset import RLE, Dataset, DatasetError, ImageRecord

PathLike = str | os.PathLike

#: The extensions tried, in order, for an odgt line with an ``ID`` but no ``file_name``.
ODGT_EXTENSIONS = (".jpg", ".png", ".jpeg")

#: The largest image width or height the readers accept (an RLE mask of 2**30 pixels still fits pycocotools'
#: 32-bit counts).
MAX_IMAGE_SIDE = 32768
#: How many image sizes beyond the border a box coordinate or polygon vertex may lie (amodal boxes extend past
#: the border; a huge polygon makes pycocotools allocate memory in proportion to its perimeter, or crash).
MAX_OUTSIDE = 8
#: How far (pixels) a COCO ``bbox`` may differ from its ``amodal_bbox`` clipped to the image (the writers round
#: ``[x, y, w, h]`` to 2 decimals).
CLIP_TOLERANCE = 0.02

_DECIMALS = 2
_NAN_BOX = (math.nan,) * 4
_INFO_DEPTH = 64  # how deeply the free-form COCO ``info`` may nest (the writers serialise it recursively)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def read_coco(path: PathLike, image_dir: PathLike | None = None) -> Dataset:
    """Read a COCO detection json (through ``pycocotools``) into a :class:`Dataset`.

    Category ids may be arbitrary (COCO's 1..90 with gaps): they become labels 1..K in ascending id order, and
    ``categories`` lists the names in that order. Images keep the order of the ``images`` array and objects
    the order of ``annotations``. The full box ``[x, y, w, h]`` is ``amodal_bbox`` where present (``bbox`` must
    then be it clipped to the image), else ``bbox``; the optional ``vbox`` (visible) and ``hbox`` (head) boxes
    become NaN rows where absent. ``ignore`` is ``iscrowd or ignore``. If any
    annotation has a ``segmentation`` (polygons, uncompressed or compressed RLE), every image gets ``masks``:
    compressed RLEs with ``str`` counts, an empty mask where an annotation has none; otherwise ``masks`` is
    ``None``. A full box may extend past the image border but must overlap the image. Sizes, coordinates and
    masks are checked against the limits of the module docstring before pycocotools sees them.

    Args:
        path: the ``.json`` annotation file.
        image_dir: the folder ``file_name`` is relative to; default ``path.parent / "images"`` if that folder
            exists, else ``path.parent``. Every image file must exist.

    Returns:
        The dataset, with ``source=Path(path)`` and ``info`` = the file's ``info`` object (or ``{}``).

    Raises:
        DatasetError: for a missing or unreadable file, invalid JSON (with its line and column), a missing
            key, a wrong type, a duplicate id, an unknown image or category id, a box with non-positive size,
            wholly outside its image or too far from it, a ``bbox`` that is not its ``amodal_bbox`` clipped, an
            invalid polygon or RLE, JSON nested too deeply, or a missing image file.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> Image.new("RGB", (64, 48)).save(root / "a.png")
        >>> _ = (root / "ann.json").write_text(json.dumps({
        ...     "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        ...     "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}],
        ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 90, "bbox": [10, 5, 20, 30]}]}))
        >>> ds = read_coco(root / "ann.json")
        >>> ds.categories, ds.images[0].boxes.tolist(), ds.images[0].labels.tolist()
        (('car', 'toothbrush'), [[10.0, 5.0, 30.0, 35.0]], [2])
        >>> tmp.cleanup()
    """
    name = os.fspath(path)
    path = Path(path)
    root = _image_dir(path, image_dir)
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(name, f"line {err.lineno} column {err.colno}", f"invalid JSON: {err.msg}") from err
    except RecursionError as err:
        raise _fail(name, "top level", "JSON nested too deeply to parse") from err
    _check_coco(data, name)

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()

    cat_ids = sorted(coco.cats)
    label_of = {cat_id: label for label, cat_id in enumerate(cat_ids, 1)}
    categories = tuple(coco.cats[cat_id]["name"] for cat_id in cat_ids)
    with_masks = any(_has_segmentation(ann) for ann in coco.anns.values())

    records = []
    for image_id in (image["id"] for image in data["images"]):
        image = coco.imgs[image_id]
        width, height = int(image["width"]), int(image["height"])
        file = root / image["file_name"]
        if not file.is_file():
            raise _fail(name, f"image {image_id}", f"image file {file} not found")
        anns = coco.imgToAnns.get(image_id, [])
        boxes, vboxes, hboxes, ignore, masks = [], [], [], [], []
        for ann in anns:
            place = f"annotation {ann['id']}"
            boxes.append(_full_box(ann, width, height, name, place))
            vboxes.append(_box(ann, "vbox", width, height, name, place, inside=True) if "vbox" in ann else _NAN_BOX)
            hboxes.append(_box(ann, "hbox", width, height, name, place, inside=False) if "hbox" in ann else _NAN_BOX)
            ignore.append(_flag(ann, "iscrowd", name, place) | _flag(ann, "ignore", name, place))
            if with_masks:
                masks.append(_segmentation(ann, height, width, name, place))
        records.append(ImageRecord(
            id=image_id, file=file, width=width, height=height, boxes=_boxes(boxes),
            labels=np.array([label_of[ann["category_id"]] for ann in anns], np.int64).reshape(-1),
            ignore=np.array(ignore, bool).reshape(-1), vboxes=_boxes(vboxes), hboxes=_boxes(hboxes),
            masks=masks if with_masks else None, ann_ids=np.array([ann["id"] for ann in anns], np.int64).reshape(-1),
        ))
    return Dataset(images=records, categories=categories, source=path, info=data.get("info", {}))


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
    root = _image_dir(path, image_dir)
    text = _read_text(path, name)
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
            raise _fail(name, place, f"invalid JSON at column {err.colno}: {err.msg}") from err
        except RecursionError as err:
            raise _fail(name, place, "JSON nested too deeply to parse") from err
        if not isinstance(obj, dict):
            raise _fail(name, place, f"expected a JSON object, got {_kind(obj)}")
        for key in ("ID", "gtboxes"):
            if key not in obj:
                raise _fail(name, place, f"missing key {key!r}")
        key_id = obj["ID"]
        if not isinstance(key_id, str) or not key_id:
            raise _fail(name, place, f"ID must be a non-empty string, got {_show(key_id)}")
        if key_id in first_line:
            raise _fail(name, place, f"duplicate ID {_show(key_id)} (also line {first_line[key_id]})")
        first_line[key_id] = number
        if not isinstance(obj["gtboxes"], list):
            raise _fail(name, place, f"gtboxes must be an array, got {_kind(obj['gtboxes'])}")
        file = _odgt_file(obj, root, name, place)
        width, height = _odgt_size(obj, file, name, place)

        boxes, vboxes, hboxes, labels, ignore = [], [], [], [], []
        for j, gt in enumerate(obj["gtboxes"]):
            where = f"{place}: gtboxes[{j}]"
            if not isinstance(gt, dict):
                raise _fail(name, where, f"expected a JSON object, got {_kind(gt)}")
            for key in ("tag", "fbox"):
                if key not in gt:
                    raise _fail(name, where, f"missing key {key!r}")
            tag = gt["tag"]
            if not isinstance(tag, str):
                raise _fail(name, where, f"tag must be a string, got {_kind(tag)}")
            if tag in label_of:
                label, ignored = label_of[tag], False
            elif tag == "mask":
                label, ignored = 1, True
            else:
                raise _fail(name, where, f"unknown tag {_show(tag)} (categories: {', '.join(categories)}, or mask)")
            extra = gt.get("extra", {})
            if not isinstance(extra, dict):
                raise _fail(name, where, f"extra must be an object, got {_kind(extra)}")
            boxes.append(_box(gt, "fbox", width, height, name, where, inside=True))
            vboxes.append(_box(gt, "vbox", width, height, name, where, inside=True) if "vbox" in gt else _NAN_BOX)
            hboxes.append(_box(gt, "hbox", width, height, name, where, inside=False) if "hbox" in gt else _NAN_BOX)
            labels.append(label)
            ignore.append(ignored or _flag(extra, "ignore", name, where, prefix="extra."))
        n = len(boxes)
        records.append(ImageRecord(
            id=number, file=file, width=width, height=height, boxes=_boxes(boxes),
            labels=np.array(labels, np.int64).reshape(-1), ignore=np.array(ignore, bool).reshape(-1),
            vboxes=_boxes(vboxes), hboxes=_boxes(hboxes), masks=None,
            ann_ids=np.arange(ann_id + 1, ann_id + n + 1, dtype=np.int64),
        ))
        ann_id += n
    return Dataset(images=records, categories=categories, source=path)


def read_dataset(path: PathLike) -> Dataset:
    """Read a dataset from a folder or an annotation file, choosing the reader by name.

    A folder must hold ``annotations.json`` (COCO, preferred) or ``annotations.odgt``; a file must end in
    ``.json`` or ``.odgt``. Images are found as :func:`read_coco` / :func:`read_odgt` do by default. An odgt
    file is read as the single category ``"person"``; call :func:`read_odgt` with ``categories=`` for others.

    Args:
        path: a folder, or a ``.json`` or ``.odgt`` file.

    Returns:
        The dataset.

    Raises:
        DatasetError: for a folder with neither annotation file, a missing path, an unknown file extension,
            or any error of the reader.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> (root / "images").mkdir()
        >>> Image.new("RGB", (64, 48)).save(root / "images" / "a.png")
        >>> line = {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3, 4]}]}
        >>> _ = (root / "annotations.odgt").write_text(json.dumps(line) + "\\n")
        >>> ds = read_dataset(root)
        >>> ds.categories, ds.images[0].file.relative_to(root).as_posix()
        (('person',), 'images/a.png')
        >>> tmp.cleanup()
    """
    name = os.fspath(path)
    folder = Path(path)
    if folder.is_dir():
        for file_name, reader in (("annotations.json", read_coco), ("annotations.odgt", read_odgt)):
            if (folder / file_name).is_file():
                return reader(folder / file_name)
        raise _fail(name, None, "no annotations.json or annotations.odgt in this folder")
    suffix = folder.suffix.lower()
    if suffix == ".json":
        return read_coco(path)
    if suffix == ".odgt":
        return read_odgt(path)
    if not folder.exists():
        raise _fail(name, None, "not found")
    raise _fail(name, None, "unknown annotation format: expected a folder, a .json or an .odgt file")


def _check_coco(data: Any, name: str) -> None:
    """Check the structure of a parsed COCO file: the parts pycocotools indexes and the ids that link them."""
    if not isinstance(data, dict):
        raise _fail(name, "top level", f"expected a JSON object, got {_kind(data)}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _fail(name, "top level", f"missing key {key!r}")
        if not isinstance(data[key], list):
            raise _fail(name, "top level", f"{key!r} must be an array, got {_kind(data[key])}")
    if not isinstance(data.get("info", {}), dict):
        raise _fail(name, "top level", f"'info' must be an object, got {_kind(data['info'])}")
    if _depth(data.get("info", {}), _INFO_DEPTH) > _INFO_DEPTH:
        raise _fail(name, "top level", f"'info' is nested deeper than {_INFO_DEPTH} levels")

    cat_ids = _check_items(data["categories"], "category", "categories", ("name",), name, positive=False)
    first_name: dict[str, int] = {}
    for cat in data["categories"]:
        place = f"category {cat['id']}"
        if not isinstance(cat["name"], str) or not cat["name"]:
            raise _fail(name, place, f"name must be a non-empty string, got {_show(cat['name'])}")
        if cat["name"] in first_name:
            raise _fail(name, place, f"duplicate name {_show(cat['name'])} (also category {first_name[cat['name']]})")
        first_name[cat["name"]] = cat["id"]

    image_ids = _check_items(data["images"], "image", "images", ("file_name", "width", "height"), name,
                             positive=False)
    for image in data["images"]:
        place = f"image {image['id']}"
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise _fail(name, place, f"file_name must be a non-empty string, got {_show(image['file_name'])}")
        for key in ("width", "height"):
            if not _is_size(image[key]):
                raise _fail(name, place, f"{key} must be an integer in 1..{MAX_IMAGE_SIDE}, got {_show(image[key])}")

    _check_items(data["annotations"], "annotation", "annotations", ("image_id", "category_id", "bbox"), name,
                 positive=True)  # pycocotools' COCOeval reads annotation id 0 as "unmatched"
    for ann in data["annotations"]:
        place = f"annotation {ann['id']}"
        if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
            raise _fail(name, place, f"unknown image_id {_show(ann['image_id'])}")
        if not _is_int(ann["category_id"]) or ann["category_id"] not in cat_ids:
            raise _fail(name, place, f"unknown category_id {_show(ann['category_id'])}")


def _check_items(items: list, singular: str, plural: str, required: tuple[str, ...], name: str, *,
                 positive: bool) -> dict[int, int]:
    """Check that each item is an object with a distinct integer ``id`` and the ``required`` keys.

    Returns:
        ``{id: index in items}``.
    """
    index: dict[int, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(name, f"{plural}[{i}]", f"expected a JSON object, got {_kind(item)}")
        if "id" not in item:
            raise _fail(name, f"{plural}[{i}]", "missing key 'id'")
        item_id = item["id"]
        if not _is_int(item_id) or (positive and item_id < 1):
            kind = "a positive integer" if positive else "an integer"
            raise _fail(name, f"{plural}[{i}]", f"id must be {kind}, got {_show(item_id)}")
        place = f"{singular} {item_id}"
        if item_id in index:
            raise _fail(name, place, f"duplicate id ({plural}[{index[item_id]}] and {plural}[{i}])")
        index[item_id] = i
        for key in required:
            if key not in item:
                raise _fail(name, place, f"missing key {key!r}")
    return index


def _has_segmentation(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return seg is not None and seg != [] and seg != {}


def _segmentation(ann: dict, height: int, width: int, name: str, place: str) -> RLE:
    """The annotation's segmentation as a compressed RLE with ``str`` counts (an empty mask if it has none)."""
    if not _has_segmentation(ann):
        return _empty_rle(height, width)
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        for key in ("size", "counts"):
            if key not in seg:
                raise _fail(name, place, f"segmentation RLE is missing key {key!r}")
        if seg["size"] != [height, width]:
            raise _fail(name, place, f"segmentation size {_show(seg['size'])} is not the image's "
                                     f"[height, width] [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, str):
            problem, digits = _rle_problem(counts, height * width)
            if problem:
                raise _fail(name, place, f"segmentation counts are not a compressed RLE of a {height}x{width} "
                                         f"mask: {problem}")
            if digits <= 6:  # checked, and pycocotools' decoder (C int shifts up to 25 bits) reads it as odam did
                return {"size": [height, width], "counts": counts}
            counts = [int(c) for c in _decode_rle(counts)]  # pycocotools re-encodes what odam decoded
        elif isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise _fail(name, place, f"uncompressed segmentation counts must be non-negative integers "
                                         f"summing to {height}*{width} = {height * width}")
        else:
            raise _fail(name, place, f"segmentation counts must be a string or an array, got {_kind(counts)}")
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(map(_finite, poly))):
                raise _fail(name, place, f"segmentation polygon {k} must be an even number (at least 6) of "
                                         f"finite coordinates, got {_show(poly)}")
            if not (all(_near(v, width) for v in poly[0::2]) and all(_near(v, height) for v in poly[1::2])):
                raise _fail(name, place, f"segmentation polygon {k} reaches more than {MAX_OUTSIDE} image sizes "
                                         f"beyond the {width}x{height} image")
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in poly] for poly in seg], height, width))
    else:
        raise _fail(name, place, f"segmentation must be an array of polygons or an RLE object, got {_kind(seg)}")
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _decode_rle(counts: str) -> np.ndarray:
    """The run lengths of a compressed RLE string, decoded as pycocotools' ``rleFrString`` does, in numpy.

    Each run is a little-endian group of 5-bit digits (character ``48 + digit``, bit 0x20 = more digits follow,
    bit 0x10 of the last = negative); from the fourth run on, each is stored as the difference to the run two
    before. The caller checks the characters and group lengths first (:func:`_rle_problem`).

    Returns:
        ``int64 [R]``: the runs (possibly negative or huge for a corrupt string).
    """
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    last = (c & 0x20) == 0  # the last digit of each run
    index = np.arange(len(c))
    starts = np.concatenate([[0], index[last][:-1] + 1]) if len(c) else np.zeros(0, np.int64)
    digit = index - np.repeat(starts, np.diff(np.concatenate([starts, [len(c)]])))
    values = np.add.reduceat((c & 0x1F) << (5 * digit), starts) if len(c) else np.zeros(0, np.int64)
    ends = index[last]
    negative = (c[ends] & 0x10) != 0
    values = values - np.where(negative, np.int64(1) << (5 * (digit[ends] + 1)), 0)
    runs = values.copy()  # runs[m] = values[m] + runs[m - 2] for m > 2
    runs[2::2] = np.cumsum(values[2::2])
    runs[1::2] = np.cumsum(values[1::2])
    return runs


def _rle_problem(counts: str, pixels: int) -> tuple[str | None, int]:
    """Why a compressed RLE string cannot describe a mask of ``pixels`` pixels (``None`` if it can), and the
    most digits one run of it has."""
    if not counts.isascii():
        return "characters outside '0'..'o'", 0
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if ((c < 0) | (c >= 64)).any():
        return "characters outside '0'..'o'", 0
    if len(c) and c[-1] & 0x20:
        return "the string ends inside a run", 0
    last = np.flatnonzero((c & 0x20) == 0)
    digits = int(np.diff(last, prepend=-1).max()) if len(last) else 0
    if digits > 7:
        return "a run of more than 7 digits", digits  # 35 bits; a run of a 32768x32768 mask needs 32
    runs = _decode_rle(counts)
    if (runs < 0).any():
        return "a negative run", digits
    total = int(runs.sum())
    if total != pixels:
        return f"the runs cover {total} pixels, not {pixels}", digits
    return None, digits


def _empty_rle(height: int, width: int) -> RLE:
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _odgt_file(obj: dict, root: Path, name: str, place: str) -> Path:
    """The image file of an odgt line: ``file_name`` if given, else ``ID`` plus the first existing extension."""
    if "file_name" in obj:
        if not isinstance(obj["file_name"], str) or not obj["file_name"]:
            raise _fail(name, place, f"file_name must be a non-empty string, got {_show(obj['file_name'])}")
        file = root / obj["file_name"]
        if not file.is_file():
            raise _fail(name, place, f"image file {file} not found")
        return file
    for ext in ODGT_EXTENSIONS:
        file = root / (obj["ID"] + ext)
        if file.is_file():
            return file
    raise _fail(name, place, f"no image file for ID {_show(obj['ID'])} in {root} (tried {', '.join(ODGT_EXTENSIONS)})")


def _odgt_size(obj: dict, file: Path, name: str, place: str) -> tuple[int, int]:
    """``(width, height)`` from the line if it has them, else from the image header (no decoding)."""
    given = [key for key in ("width", "height") if key in obj]
    if len(given) == 1:
        other = "height" if given[0] == "width" else "width"
        raise _fail(name, place, f"has {given[0]} but no {other}")
    if given:
        for key in given:
            if not _is_size(obj[key]):
                raise _fail(name, place, f"{key} must be an integer in 1..{MAX_IMAGE_SIDE}, got {_show(obj[key])}")
        return int(obj["width"]), int(obj["height"])
    try:
        with open_image(file) as image:
            width, height = upright_size(image)  # load_image turns photos upright by their EXIF orientation
    except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise _fail(name, place, f"cannot read the size of image {file}: {err}") from err
    if max(width, height) > MAX_IMAGE_SIDE:
        raise _fail(name, place, f"image {file} is {width}x{height}, larger than {MAX_IMAGE_SIDE} pixels a side")
    return width, height


def _box(obj: dict, key: str, width: int, height: int, name: str, place: str, *,
         inside: bool) -> tuple[float, float, float, float]:
    """``obj[key]`` as ``[x, y, w, h]`` checked and converted to ``xyxy``.

    Args:
        inside: whether the box must overlap the image (full and visible boxes; a head box may lie outside).
    """
    value = obj[key]
    if not (isinstance(value, list) and len(value) == 4 and all(map(_finite, value))):
        raise _fail(name, place, f"{key} must be 4 finite numbers [x, y, w, h], got {_show(value)}")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise _fail(name, place, f"box {key} {_show(value)} has non-positive size")
    if not (_near(x, width) and _near(x + w, width) and _near(y, height) and _near(y + h, height)):
        raise _fail(name, place, f"box {key} {_show(value)} reaches more than {MAX_OUTSIDE} image sizes beyond "
                                 f"the {width}x{height} image")
    if inside and (x + w <= 0 or y + h <= 0 or x >= width or y >= height):
        raise _fail(name, place, f"box {key} {_show(value)} lies entirely outside the {width}x{height} image")
    x1, y1, x2, y2 = array.array("f", (x, y, x + w, y + h)).tolist()  # as float32 (bounded above, so no overflow)
    if x2 <= x1 or y2 <= y1:
        raise _fail(name, place, f"box {key} {_show(value)} has non-positive size in float32")
    return x1, y1, x2, y2


def _near(value: float, size: int) -> bool:
    """Whether a coordinate lies within ``MAX_OUTSIDE`` image sizes of an image side of ``size`` pixels."""
    return -MAX_OUTSIDE * size <= value <= (MAX_OUTSIDE + 1) * size


def _full_box(ann: dict, width: int, height: int, name: str, place: str) -> tuple[float, float, float, float]:
    """The full box of a COCO annotation: ``amodal_bbox`` where present (``bbox`` must be it clipped), else ``bbox``."""
    bbox = _box(ann, "bbox", width, height, name, place, inside=True)
    if "amodal_bbox" not in ann:
        return bbox
    full = _box(ann, "amodal_bbox", width, height, name, place, inside=True)
    clipped = (max(full[0], 0.0), max(full[1], 0.0), min(full[2], width), min(full[3], height))
    if max(abs(a - b) for a, b in zip(clipped, bbox, strict=True)) > CLIP_TOLERANCE:
        raise _fail(name, place, f"bbox {_show(ann['bbox'])} is not amodal_bbox {_show(ann['amodal_bbox'])} "
                                 f"clipped to the {width}x{height} image")
    return full


def _boxes(rows: list[tuple[float, float, float, float]]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def _flag(obj: dict, key: str, name: str, place: str, prefix: str = "") -> bool:
    value = obj.get(key, 0)
    if isinstance(value, bool) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise _fail(name, place, f"{prefix}{key} must be 0 or 1, got {_show(value)}")


def _image_dir(path: Path, image_dir: PathLike | None) -> Path:
    if image_dir is not None:
        return Path(image_dir)
    images = path.parent / "images"
    return images if images.is_dir() else path.parent


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise _fail(name, None, "annotation file not found") from err
    except UnicodeDecodeError as err:
        raise _fail(name, None, f"not UTF-8 text: {err.reason} at byte {err.start}") from err
    except OSError as err:
        raise _fail(name, None, f"cannot read annotation file: {err.strerror or err}") from err


def _check_categories(categories: Sequence[str]) -> tuple[str, ...]:
    if isinstance(categories, str) or not all(isinstance(c, str) and c for c in categories):
        raise ValueError(f"categories must be a sequence of non-empty names, got {categories!r}")
    categories = tuple(categories)
    if not categories or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct and at least one, got {categories!r}")
    return categories


def _fail(name: str, place: str | None, problem: str) -> DatasetError:
    text = f"{name}: {place}: {problem}" if place else f"{name}: {problem}"
    return DatasetError(" ".join(text.splitlines()))


def _show(value: Any, limit: int = 80) -> str:
    """``value`` as it looks in JSON, shortened to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # nested too deeply to show
        text = f"<deeply nested {_kind(value)}>"
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON type name of a parsed value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for types, kind in (((int, float), "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    """An integer in ``1..MAX_IMAGE_SIDE``, or a float with such a value (some tools write ``640.0``)."""
    whole = _is_int(value) or (isinstance(value, float) and value.is_integer())
    return whole and 0 < value <= MAX_IMAGE_SIDE


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0), counted without recursion up to ``limit + 1``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            level += 1
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def to_coco_dict(dataset: Dataset) -> dict[str, Any]:
    """The COCO dict :func:`write_coco` writes: for a ``pycocotools`` ground truth (``coco.dataset = ...``).

    ``images`` are ``{id, file_name (file.name), width, height}``; ``categories`` are ``{id: 1..K, name}``;
    ``annotations`` are ``{id, image_id, category_id, bbox, [amodal_bbox], [vbox], [hbox], [segmentation],
    area, iscrowd}`` with ``[x, y, w, h]`` boxes rounded to 2 decimals. ``bbox`` is the full box clipped to the
    image (COCO's convention, :attr:`ImageRecord.clipped_boxes`); ``amodal_bbox`` is the full box itself, written
    only where it extends past the image (elsewhere it equals ``bbox``). ``vbox``/``hbox`` are left out where
    NaN, ``segmentation`` (RLE with ``str`` counts) is there only where ``masks`` is not ``None``, ``area`` is
    the mask area where there is a mask, else the area of ``bbox``, and ``iscrowd`` = ``ignore``. ``info`` is a
    shallow copy of ``dataset.info``.

    Args:
        dataset: the dataset.

    Returns:
        ``{"info", "images", "annotations", "categories"}``.

    Raises:
        ValueError: for a dataset the readers would refuse: arrays of inconsistent shape, a label outside
            ``1..len(categories)``, duplicate or non-positive annotation ids, duplicate image ids, a box with
            non-positive size (after rounding, also once clipped to the image) or wholly outside its image, a
            partly NaN row, a mask whose size is not the image's.

    Example:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from odam.data import Dataset, ImageRecord
        >>> nan = np.full((1, 4), np.nan, np.float32)
        >>> rec = ImageRecord(id=1, file=Path("images/a.png"), width=64, height=48,
        ...     boxes=np.array([[10, 5, 30.5, 35], [-4, 20, 16, 60]], np.float32), labels=np.array([1, 1]),
        ...     ignore=np.array([False, False]), vboxes=np.full((2, 4), np.nan, np.float32),
        ...     hboxes=np.full((2, 4), np.nan, np.float32), masks=None, ann_ids=np.array([7, 8]))
        >>> coco = to_coco_dict(Dataset([rec], ("person",)))
        >>> coco["images"], coco["annotations"][0]
        ([{'id': 1, 'file_name': 'a.png', 'width': 64, 'height': 48}], {'id': 7, 'image_id': 1, \
'category_id': 1, 'bbox': [10, 5, 20.5, 30], 'area': 615, 'iscrowd': 0})
        >>> coco["annotations"][1]["bbox"], coco["annotations"][1]["amodal_bbox"]  # cut off by the border
        ([0, 20, 16, 28], [-4, 20, 20, 40])
    """
    _check_dataset(dataset)
    images, annotations = [], []
    for rec in dataset.images:
        images.append({"id": int(rec.id), "file_name": Path(rec.file).name, "width": int(rec.width),
                       "height": int(rec.height)})
        clipped = rec.clipped_boxes
        for k in range(len(rec)):
            where = f"image {rec.id}: annotation {int(rec.ann_ids[k])}"
            full = _box_out(rec.boxes[k], "box", rec, where, inside=True)
            bbox = _box_out(clipped[k], "box clipped to the image", rec, where, inside=True)
            ann: dict[str, Any] = {"id": int(rec.ann_ids[k]), "image_id": int(rec.id),
                                   "category_id": int(rec.labels[k]), "bbox": bbox}
            if full != bbox:
                ann["amodal_bbox"] = full
            for key, rows, inside in (("vbox", rec.vboxes, True), ("hbox", rec.hboxes, False)):
                if not np.isnan(rows[k]).all():
                    ann[key] = _box_out(rows[k], key, rec, where, inside=inside)
            if rec.masks is not None:
                ann["segmentation"] = rle = _rle_out(rec.masks[k], rec, where)
                ann["area"] = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
            else:
                ann["area"] = _number(bbox[2] * bbox[3])
            ann["iscrowd"] = int(bool(rec.ignore[k]))
            annotations.append(ann)
    categories = [{"id": label, "name": cat} for label, cat in enumerate(dataset.categories, 1)]
    return {"info": dict(dataset.info), "images": images, "annotations": annotations, "categories": categories}


def write_coco(dataset: Dataset, path: PathLike) -> None:
    """Write ``dataset`` as a compact COCO json (:func:`to_coco_dict`), atomically and byte-stably.

    ``file_name`` is ``file.name``, so :func:`read_coco` finds the images again when they lie in the
    folder it defaults to (``images/`` next to the file, else the file's own folder) or in ``image_dir``.

    Args:
        dataset: the dataset.
        path: the ``.json`` file to write (replaced if it exists; its folder must exist).

    Raises:
        ValueError: for a dataset the readers would refuse (see :func:`to_coco_dict`).
        TypeError: if ``dataset.info`` is not JSON-serialisable. On any error an existing file is unchanged.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from odam.data import Dataset, ImageRecord, read_coco
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> (root / "a.png").touch()  # read_coco checks that each image file exists
        >>> nan = np.full((1, 4), np.nan, np.float32)
        >>> rec = ImageRecord(id=1, file=root / "a.png", width=64, height=48,
        ...     boxes=np.array([[10, 5, 30, 35]], np.float32), labels=np.array([1]), ignore=np.array([True]),
        ...     vboxes=nan, hboxes=nan, masks=None, ann_ids=np.array([1]))
        >>> write_coco(Dataset([rec], ("person",)), root / "annotations.json")
        >>> back = read_coco(root / "annotations.json").images[0]
        >>> back.boxes.tolist(), back.ignore.tolist()
        ([[10.0, 5.0, 30.0, 35.0]], [True])
        >>> tmp.cleanup()
    """
    text = json.dumps(to_coco_dict(dataset), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    atomic_write(Path(path), text + "\n")


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
    _check_dataset(dataset)
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
                                  "fbox": _box_out(rec.boxes[k], "box", rec, where, inside=True)}
            for key, rows, inside in (("vbox", rec.vboxes, True), ("hbox", rec.hboxes, False)):
                if not np.isnan(rows[k]).all():
                    gt[key] = _box_out(rows[k], key, rec, where, inside=inside)
            gt["extra"] = {"ignore": int(bool(rec.ignore[k])), "box_id": k}
            gtboxes.append(gt)
        line = {"ID": file.stem, "file_name": file.name, "width": int(rec.width), "height": int(rec.height),
                "gtboxes": gtboxes}
        lines.append(json.dumps(line, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
    atomic_write(Path(path), "".join(lines))


def _check_dataset(dataset: Dataset) -> None:
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


def _box_out(row: np.ndarray, what: str, rec: ImageRecord, where: str, *, inside: bool) -> list[float | int]:
    """An ``xyxy`` row as ``[x, y, w, h]`` rounded to 2 decimals, checked as the readers check it."""
    x1, y1, x2, y2 = (round(float(v), _DECIMALS) for v in row)
    w, h = round(x2 - x1, _DECIMALS), round(y2 - y1, _DECIMALS)
    shown = [float(v) for v in row]
    if not all(map(math.isfinite, (x1, y1, w, h))):
        raise ValueError(f"{where}: {what} {shown} is not finite")
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: {what} {shown} has non-positive size (after rounding to {_DECIMALS} decimals)")
    if inside and (x2 <= 0 or y2 <= 0 or x1 >= rec.width or y1 >= rec.height):
        raise ValueError(f"{where}: {what} {shown} lies entirely outside the {rec.width}x{rec.height} image")
    return [_number(v) for v in (x1, y1, w, h)]


def _rle_out(rle: Any, rec: ImageRecord, where: str) -> RLE:
    """An in-memory RLE as written: ``{"size": [h, w], "counts": str}`` (``bytes`` counts are accepted)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: mask must be an RLE dict with 'size' and 'counts', got {type(rle).__name__}")
    size = [int(v) for v in rle["size"]]
    if size != [rec.height, rec.width]:
        raise ValueError(f"{where}: mask size {size} is not the image's [height, width] [{rec.height}, {rec.width}]")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise ValueError(f"{where}: mask counts must be a compressed RLE string, got {type(counts).__name__}")
    return {"size": size, "counts": counts}


def _number(value: float) -> float | int:
    """``value`` rounded to 2 decimals, as an int where whole (so ``10`` not ``10.0``, and never ``-0.0``)."""
    value = round(float(value), _DECIMALS)
    return int(value) if value.is_integer() else value


