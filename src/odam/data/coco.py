"""Read and write COCO detection json, to and from :class:`~odam.data.Dataset`.

Errors and limits are those of :mod:`odam.data.checks`. A compressed RLE is decoded by odam (not by pycocotools)
and checked before pycocotools sees it.

Boxes. In memory, ``ImageRecord.boxes`` is the full (amodal) box. A COCO ``bbox`` is clipped to the image, as
COCO's convention and every COCO tool assume: :func:`write_coco` writes the clipped box as ``bbox`` and, where
the full box extends past the image, the full box as ``amodal_bbox`` (``[x, y, w, h]``, odam's own key, which
other tools ignore). :func:`read_coco` takes ``amodal_bbox`` as the full box where present (its ``bbox`` must
then be it clipped to the image, within :data:`CLIP_TOLERANCE` pixels), else ``bbox``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from odam._atomic import atomic_write
from odam.data.checks import (
    MAX_IMAGE_SIDE,
    MAX_OUTSIDE,
    NAN_BOX,
    PathLike,
    box_array,
    box_out,
    check_dataset,
    default_image_dir,
    fail,
    is_finite,
    is_int,
    is_size,
    json_kind,
    near,
    read_box,
    read_flag,
    read_text,
    rounded,
    show,
)
from odam.data.dataset import RLE, Dataset, ImageRecord, clip_to_image

#: How far (pixels) a COCO ``bbox`` may differ from its ``amodal_bbox`` clipped to the image (the writers round
#: ``[x, y, w, h]`` to 2 decimals).
CLIP_TOLERANCE = 0.02

_INFO_DEPTH = 64  # how deeply the free-form COCO ``info`` may nest (the writers serialise it recursively)


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
    masks are checked against the limits of :mod:`odam.data.checks` before pycocotools sees them.

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
    root = default_image_dir(path, image_dir)
    text = read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise fail(name, f"line {err.lineno} column {err.colno}", f"invalid JSON: {err.msg}") from err
    except RecursionError as err:
        raise fail(name, "top level", "JSON nested too deeply to parse") from err
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
            raise fail(name, f"image {image_id}", f"image file {file} not found")
        anns = coco.imgToAnns.get(image_id, [])
        boxes, vboxes, hboxes, ignore, masks = [], [], [], [], []
        for ann in anns:
            place = f"annotation {ann['id']}"
            boxes.append(_full_box(ann, width, height, name, place))
            vboxes.append(read_box(ann, "vbox", width, height, name, place, inside=True) if "vbox" in ann else NAN_BOX)
            hboxes.append(read_box(ann, "hbox", width, height, name, place, inside=False) if "hbox" in ann else NAN_BOX)
            ignore.append(read_flag(ann, "iscrowd", name, place) | read_flag(ann, "ignore", name, place))
            if with_masks:
                masks.append(_segmentation(ann, height, width, name, place))
        records.append(ImageRecord(
            id=image_id, file=file, width=width, height=height, boxes=box_array(boxes),
            labels=np.array([label_of[ann["category_id"]] for ann in anns], np.int64).reshape(-1),
            ignore=np.array(ignore, bool).reshape(-1), vboxes=box_array(vboxes), hboxes=box_array(hboxes),
            masks=masks if with_masks else None, ann_ids=np.array([ann["id"] for ann in anns], np.int64).reshape(-1),
        ))
    return Dataset(images=records, categories=categories, source=path, info=data.get("info", {}))


def _check_coco(data: Any, name: str) -> None:
    """Check the structure of a parsed COCO file: the parts pycocotools indexes and the ids that link them."""
    if not isinstance(data, dict):
        raise fail(name, "top level", f"expected a JSON object, got {json_kind(data)}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise fail(name, "top level", f"missing key {key!r}")
        if not isinstance(data[key], list):
            raise fail(name, "top level", f"{key!r} must be an array, got {json_kind(data[key])}")
    if not isinstance(data.get("info", {}), dict):
        raise fail(name, "top level", f"'info' must be an object, got {json_kind(data['info'])}")
    if _depth(data.get("info", {}), _INFO_DEPTH) > _INFO_DEPTH:
        raise fail(name, "top level", f"'info' is nested deeper than {_INFO_DEPTH} levels")

    cat_ids = _check_items(data["categories"], "category", "categories", ("name",), name, positive=False)
    first_name: dict[str, int] = {}
    for cat in data["categories"]:
        place = f"category {cat['id']}"
        if not isinstance(cat["name"], str) or not cat["name"]:
            raise fail(name, place, f"name must be a non-empty string, got {show(cat['name'])}")
        if cat["name"] in first_name:
            raise fail(name, place, f"duplicate name {show(cat['name'])} (also category {first_name[cat['name']]})")
        first_name[cat["name"]] = cat["id"]

    image_ids = _check_items(data["images"], "image", "images", ("file_name", "width", "height"), name,
                             positive=False)
    for image in data["images"]:
        place = f"image {image['id']}"
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise fail(name, place, f"file_name must be a non-empty string, got {show(image['file_name'])}")
        for key in ("width", "height"):
            if not is_size(image[key]):
                raise fail(name, place, f"{key} must be an integer in 1..{MAX_IMAGE_SIDE}, got {show(image[key])}")

    _check_items(data["annotations"], "annotation", "annotations", ("image_id", "category_id", "bbox"), name,
                 positive=True)  # pycocotools' COCOeval reads annotation id 0 as "unmatched"
    for ann in data["annotations"]:
        place = f"annotation {ann['id']}"
        if not is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
            raise fail(name, place, f"unknown image_id {show(ann['image_id'])}")
        if not is_int(ann["category_id"]) or ann["category_id"] not in cat_ids:
            raise fail(name, place, f"unknown category_id {show(ann['category_id'])}")


def _check_items(items: list, singular: str, plural: str, required: tuple[str, ...], name: str, *,
                 positive: bool) -> dict[int, int]:
    """Check that each item is an object with a distinct integer ``id`` and the ``required`` keys.

    Returns:
        ``{id: index in items}``.
    """
    index: dict[int, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise fail(name, f"{plural}[{i}]", f"expected a JSON object, got {json_kind(item)}")
        if "id" not in item:
            raise fail(name, f"{plural}[{i}]", "missing key 'id'")
        item_id = item["id"]
        if not is_int(item_id) or (positive and item_id < 1):
            kind = "a positive integer" if positive else "an integer"
            raise fail(name, f"{plural}[{i}]", f"id must be {kind}, got {show(item_id)}")
        place = f"{singular} {item_id}"
        if item_id in index:
            raise fail(name, place, f"duplicate id ({plural}[{index[item_id]}] and {plural}[{i}])")
        index[item_id] = i
        for key in required:
            if key not in item:
                raise fail(name, place, f"missing key {key!r}")
    return index


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


def _full_box(ann: dict, width: int, height: int, name: str, place: str) -> tuple[float, float, float, float]:
    """The full box of a COCO annotation: ``amodal_bbox`` where present (``bbox`` must be it clipped), else ``bbox``."""
    bbox = read_box(ann, "bbox", width, height, name, place, inside=True)
    if "amodal_bbox" not in ann:
        return bbox
    full = read_box(ann, "amodal_bbox", width, height, name, place, inside=True)
    clipped = clip_to_image(np.array([full], np.float32), width, height)[0].tolist()
    if max(abs(a - b) for a, b in zip(clipped, bbox, strict=True)) > CLIP_TOLERANCE:
        raise fail(name, place, f"bbox {show(ann['bbox'])} is not amodal_bbox {show(ann['amodal_bbox'])} "
                                 f"clipped to the {width}x{height} image")
    return full


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
                raise fail(name, place, f"segmentation RLE is missing key {key!r}")
        if seg["size"] != [height, width]:
            raise fail(name, place, f"segmentation size {show(seg['size'])} is not the image's "
                                     f"[height, width] [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, str):
            problem, digits = _rle_problem(counts, height * width)
            if problem:
                raise fail(name, place, f"segmentation counts are not a compressed RLE of a {height}x{width} "
                                         f"mask: {problem}")
            if digits <= 6:  # checked, and pycocotools' decoder (C int shifts up to 25 bits) reads it as odam did
                return {"size": [height, width], "counts": counts}
            counts = [int(c) for c in _decode_rle(counts)]  # pycocotools re-encodes what odam decoded
        elif isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise fail(name, place, f"uncompressed segmentation counts must be non-negative integers "
                                         f"summing to {height}*{width} = {height * width}")
        else:
            raise fail(name, place, f"segmentation counts must be a string or an array, got {json_kind(counts)}")
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(map(is_finite, poly))):
                raise fail(name, place, f"segmentation polygon {k} must be an even number (at least 6) of "
                                         f"finite coordinates, got {show(poly)}")
            if not (all(near(v, width) for v in poly[0::2]) and all(near(v, height) for v in poly[1::2])):
                raise fail(name, place, f"segmentation polygon {k} reaches more than {MAX_OUTSIDE} image sizes "
                                         f"beyond the {width}x{height} image")
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in poly] for poly in seg], height, width))
    else:
        raise fail(name, place, f"segmentation must be an array of polygons or an RLE object, got {json_kind(seg)}")
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
    check_dataset(dataset)
    images, annotations = [], []
    for rec in dataset.images:
        images.append({"id": int(rec.id), "file_name": Path(rec.file).name, "width": int(rec.width),
                       "height": int(rec.height)})
        clipped = rec.clipped_boxes
        for k in range(len(rec)):
            where = f"image {rec.id}: annotation {int(rec.ann_ids[k])}"
            full = box_out(rec.boxes[k], "box", rec, where, inside=True)
            bbox = box_out(clipped[k], "box clipped to the image", rec, where, inside=True)
            ann: dict[str, Any] = {"id": int(rec.ann_ids[k]), "image_id": int(rec.id),
                                   "category_id": int(rec.labels[k]), "bbox": bbox}
            if full != bbox:
                ann["amodal_bbox"] = full
            for key, rows, inside in (("vbox", rec.vboxes, True), ("hbox", rec.hboxes, False)):
                if not np.isnan(rows[k]).all():
                    ann[key] = box_out(rows[k], key, rec, where, inside=inside)
            if rec.masks is not None:
                ann["segmentation"] = rle = _rle_out(rec.masks[k], rec, where)
                ann["area"] = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
            else:
                ann["area"] = rounded(bbox[2] * bbox[3])
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
