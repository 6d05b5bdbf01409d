"""COCO json and CrowdHuman odgt readers and writers: round trips, conversions and one test per error path."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from odam._image import load_image
from odam.data import (
    Dataset,
    DatasetError,
    ImageRecord,
    read_coco,
    read_dataset,
    read_odgt,
    to_coco_dict,
    write_coco,
    write_odgt,
)
from odam.data.checks import MAX_OUTSIDE

NAN = math.nan
SIZES = {"a.png": (32, 24), "b.png": (40, 30), "c.png": (20, 16)}  # file: (width, height)


def write_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for file, size in SIZES.items():
        Image.new("RGB", size, (90, 120, 150)).save(folder / file)
    return folder


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def rect_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def record(image_id: int, file: Path, boxes: list, labels: list, *, ignore: list | None = None,
           vboxes: list | None = None, hboxes: list | None = None, masks: list | None = None,
           ann_ids: list | None = None) -> ImageRecord:
    n = len(boxes)
    width, height = SIZES[file.name]
    return ImageRecord(
        id=image_id, file=file, width=width, height=height,
        boxes=np.array(boxes, np.float32).reshape(-1, 4), labels=np.array(labels, np.int64),
        ignore=np.array(ignore or [False] * n, bool),
        vboxes=np.array(vboxes or [[NAN] * 4] * n, np.float32).reshape(-1, 4),
        hboxes=np.array(hboxes or [[NAN] * 4] * n, np.float32).reshape(-1, 4),
        masks=masks, ann_ids=np.array(ann_ids or list(range(1, n + 1)), np.int64),
    )


def coco_dataset(images: Path) -> Dataset:
    """Three categories, masks, an ignored object, amodal and fractional boxes, NaN rows and an empty image."""
    a = record(
        4, images / "a.png",
        boxes=[[2, 3, 12, 20], [-5, 1, 10.25, 30], [20.5, 4, 31.75, 10]],  # the second extends past the border
        labels=[1, 3, 2], ignore=[False, False, True],
        vboxes=[[2, 3, 12, 12], [NAN] * 4, [21, 4, 31, 10]],
        hboxes=[[4, 3, 8, 6], [0, -2, 4, 2], [NAN] * 4],  # a head box may lie partly outside
        masks=[rle(rect_mask(24, 32, 3, 12, 2, 12)), rle(rect_mask(24, 32, 1, 24, 0, 10)),
               rle(np.zeros((24, 32)))],
        ann_ids=[10, 3, 77],
    )
    b = record(9, images / "b.png", boxes=[], labels=[], masks=[])
    c = record(2, images / "c.png", boxes=[[1, 1, 19, 15]], labels=[2], masks=[rle(rect_mask(16, 20, 1, 15, 1, 19))],
               ann_ids=[5])
    return Dataset([a, b, c], ("person", "car", "dog"), info={"description": "test", "version": 2})


def odgt_dataset(images: Path) -> Dataset:
    """What read_odgt returns for its own output: ids 1..N, running annotation ids, no masks."""
    a = record(1, images / "a.png", boxes=[[2, 3, 12, 20], [-5, 1, 10.25, 30]], labels=[1, 2], ignore=[False, True],
               vboxes=[[2, 3, 12, 12], [NAN] * 4], hboxes=[[4, 3, 8, 6], [NAN] * 4], ann_ids=[1, 2])
    b = record(2, images / "b.png", boxes=[], labels=[], ann_ids=[])
    c = record(3, images / "c.png", boxes=[[1, 1, 19, 15]], labels=[1], ann_ids=[3])
    return Dataset([a, b, c], ("person", "head"))


def assert_same(got: Dataset, want: Dataset) -> None:
    assert got.categories == want.categories
    assert [r.id for r in got.images] == [r.id for r in want.images]
    for g, w in zip(got.images, want.images, strict=True):
        assert (g.file, g.width, g.height) == (w.file, w.width, w.height)
        for key in ("boxes", "vboxes", "hboxes"):
            assert getattr(g, key).dtype == np.float32 and getattr(g, key).shape == getattr(w, key).shape
            np.testing.assert_array_equal(getattr(g, key), getattr(w, key), err_msg=key)  # NaN == NaN here
        for key, dtype in (("labels", np.int64), ("ignore", np.bool_), ("ann_ids", np.int64)):
            assert getattr(g, key).dtype == dtype
            np.testing.assert_array_equal(getattr(g, key), getattr(w, key), err_msg=key)
        if w.masks is None:
            assert g.masks is None
        else:
            assert len(g.masks) == len(w.masks)
            for gm, wm in zip(g.masks, w.masks, strict=True):
                assert isinstance(gm["counts"], str) and gm["size"] == wm["size"]
                np.testing.assert_array_equal(decode(gm), decode(wm))


def decode(r: dict) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools 2.0.11's decode under numpy 2; odam itself never decodes
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        return mask_utils.decode({"size": r["size"], "counts": r["counts"].encode("ascii")})


# ---------------------------------------------------------------------------------------------------------------
# Round trips and conversions
# ---------------------------------------------------------------------------------------------------------------


def test_coco_round_trip(tmp_path: Path) -> None:
    want = coco_dataset(write_images(tmp_path / "images"))
    write_coco(want, tmp_path / "annotations.json")
    got = read_coco(tmp_path / "annotations.json")
    assert_same(got, want)
    assert got.info == want.info and got.source == tmp_path / "annotations.json"


@pytest.mark.parametrize(("orientation", "size"), [(1, (30, 20)), (3, (30, 20)), (6, (20, 30)), (8, (20, 30))])
def test_odgt_size_is_the_upright_size(tmp_path: Path, orientation: int, size: tuple[int, int]) -> None:
    """A phone photo stored 30x20 with EXIF orientation 6 or 8 is 20x30 upright, as load_image returns it, so its
    odgt size (read from the header when the line has none) and the training loader agree."""
    from odam.train.samples import load_image_tensor

    (tmp_path / "Images").mkdir()
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "Images" / "p.png", exif=exif.tobytes())
    (tmp_path / "a.odgt").write_text(json.dumps({"ID": "p", "gtboxes": [{"tag": "person", "fbox": [1, 1, 5, 5]}]}))
    [rec] = read_odgt(tmp_path / "a.odgt", image_dir=tmp_path / "Images").images
    assert (rec.width, rec.height) == size
    assert tuple(load_image_tensor(rec).shape) == (3, size[1], size[0])


def test_odgt_round_trip(tmp_path: Path) -> None:
    want = odgt_dataset(write_images(tmp_path / "images"))
    write_odgt(want, tmp_path / "annotations.odgt")
    got = read_odgt(tmp_path / "annotations.odgt", categories=("person", "head"))
    assert_same(got, want)


@pytest.mark.parametrize(("write", "read", "make"), [
    (write_coco, read_coco, coco_dataset),
    (write_odgt, lambda p: read_odgt(p, categories=("person", "head")), odgt_dataset),
])
def test_write_is_byte_stable(tmp_path: Path, write: Callable, read: Callable, make: Callable) -> None:
    dataset = make(write_images(tmp_path / "images"))
    write(dataset, tmp_path / "one")
    write(dataset, tmp_path / "two")
    write(read(tmp_path / "one"), tmp_path / "three")  # rewriting what was read changes nothing
    one = (tmp_path / "one").read_bytes()
    assert one == (tmp_path / "two").read_bytes() == (tmp_path / "three").read_bytes()
    assert b"NaN" not in one and b".0," not in one  # NaN rows left out; whole numbers as integers


def test_coco_output_format(tmp_path: Path) -> None:
    coco = to_coco_dict(coco_dataset(write_images(tmp_path)))
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert coco["images"][0] == {"id": 4, "file_name": "a.png", "width": 32, "height": 24}
    first, second, third = coco["annotations"][:3]
    assert first["bbox"] == [2, 3, 10, 17] and first["area"] == 90  # the mask's 9x10 pixels, not the box's
    assert "vbox" not in second and second["hbox"] == [0, -2, 4, 4]
    assert second["bbox"] == [0, 1, 10.25, 23]  # clipped to the 32x24 image, as COCO's convention is
    assert second["amodal_bbox"] == [-5, 1, 15.25, 29]  # the full box, where it extends past the image
    assert "amodal_bbox" not in first and "amodal_bbox" not in third
    assert third["iscrowd"] == 1 and third["area"] == 0 and "hbox" not in third
    no_masks = Dataset([record(1, tmp_path / "a.png", [[2, 3, 12.5, 20]], [1])], ("person",))
    assert to_coco_dict(no_masks)["annotations"][0]["area"] == 178.5  # full box 10.5 x 17


def test_to_coco_dict_is_a_pycocotools_ground_truth(tmp_path: Path) -> None:
    dataset = coco_dataset(write_images(tmp_path))
    gt = COCO()
    gt.dataset = to_coco_dict(dataset)
    dets = [{"image_id": r.id, "category_id": int(label), "bbox": [float(x1), float(y1), float(x2 - x1),
                                                                     float(y2 - y1)], "score": 0.9}
            for r in dataset.images for (x1, y1, x2, y2), label in zip(r.clipped_boxes, r.labels, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # every ground truth found exactly: AP 1


def test_coco_category_ids_map_to_labels_in_id_order(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5]}
                            for i, c in enumerate([7, 90, 3, 7])]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    dataset = read_coco(tmp_path / "a.json")
    assert dataset.categories == ("car", "train", "toothbrush")
    assert dataset.images[0].labels.tolist() == [2, 3, 1, 2]
    assert dataset.images[0].masks is None


def test_coco_segmentations_become_compressed_rles(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    rectangle = [2, 3, 12, 3, 12, 9, 2, 9]  # pycocotools fills columns 2..11 and rows 3..8: 10 x 6 pixels
    uncompressed = {"size": [24, 32], "counts": [24 * 5, 24 * 2, 24 * 25]}  # column-major: columns 5 and 6
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 6], "segmentation": [rectangle]},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 0, 2, 24], "segmentation": uncompressed,
                 "iscrowd": 1},
                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},  # no segmentation
            ]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    polygon, crowd, missing = read_coco(tmp_path / "a.json").images[0].masks
    assert all(isinstance(m["counts"], str) and m["size"] == [24, 32] for m in (polygon, crowd, missing))
    np.testing.assert_array_equal(decode(polygon), rect_mask(24, 32, 3, 9, 2, 12))
    assert decode(polygon).sum() == 60
    np.testing.assert_array_equal(decode(crowd), rect_mask(24, 32, 0, 24, 5, 7))
    assert decode(missing).sum() == 0


def test_crowdhuman_line(tmp_path: Path) -> None:
    write_images(tmp_path / "Images")
    (tmp_path / "Images" / "c.png").rename(tmp_path / "Images" / "273271,c9db000d5146c15.png")
    line = {"ID": "273271,c9db000d5146c15", "gtboxes": [
        {"tag": "person", "hbox": [5, 1, 4, 4], "head_attr": {"ignore": 0, "occ": 0, "unsure": 0},
         "fbox": [-3, 1, 12, 30], "vbox": [0, 1, 9, 15], "extra": {"box_id": 0, "occ": 0}},
        {"tag": "mask", "hbox": [12, 2, 2, 2], "head_attr": {}, "fbox": [12, 2, 6, 6], "vbox": [12, 2, 6, 6],
         "extra": {"ignore": 1}},
        {"tag": "person", "fbox": [4, 4, 6, 6], "vbox": [4, 4, 6, 6], "extra": {"box_id": 2, "ignore": 1}},
    ]}
    (tmp_path / "annotation_val.odgt").write_text("\n" + json.dumps(line) + "\n\n")
    dataset = read_odgt(tmp_path / "annotation_val.odgt", image_dir=tmp_path / "Images")
    [rec] = dataset.images
    assert dataset.categories == ("person",) and dataset.source == tmp_path / "annotation_val.odgt"
    assert rec.file == tmp_path / "Images" / "273271,c9db000d5146c15.png"
    assert (rec.id, rec.width, rec.height) == (2, 20, 16)  # the line number; the size from the PNG header
    assert rec.boxes.tolist() == [[-3, 1, 9, 31], [12, 2, 18, 8], [4, 4, 10, 10]]
    assert rec.vboxes.tolist() == [[0, 1, 9, 16], [12, 2, 18, 8], [4, 4, 10, 10]]
    assert rec.hboxes[:2].tolist() == [[5, 1, 9, 5], [12, 2, 14, 4]] and np.isnan(rec.hboxes[2]).all()
    assert rec.labels.tolist() == [1, 1, 1] and rec.ignore.tolist() == [False, True, True]
    assert rec.ann_ids.tolist() == [1, 2, 3] and rec.masks is None


def test_read_dataset_chooses_the_reader(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    single = Dataset([record(1, tmp_path / "images" / "a.png", [[1, 1, 5, 5]], [1])], ("person",))
    write_odgt(single, tmp_path / "annotations.odgt")
    assert read_dataset(tmp_path).source == tmp_path / "annotations.odgt"
    assert read_dataset(tmp_path / "annotations.odgt").categories == ("person",)
    write_coco(coco_dataset(tmp_path / "images"), tmp_path / "annotations.json")
    got = read_dataset(tmp_path)  # annotations.json is preferred
    assert got.source == tmp_path / "annotations.json"
    assert_same(got, coco_dataset(tmp_path / "images"))


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    dataset = coco_dataset(write_images(tmp_path / "images"))
    path = tmp_path / "annotations.json"
    write_coco(dataset, path)
    before = path.read_bytes()
    dataset.info["bad"] = object()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_coco(dataset, path)
    dataset.info.pop("bad")
    dataset.images[0].labels[0] = 4  # not a category
    with pytest.raises(ValueError, match=r"image 4: labels must be integers in 1\.\.3"):
        write_odgt(dataset, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "images"]  # no temporary file left


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: setattr(r, "boxes", r.boxes[:, :3]), "image 4: boxes must have shape [3, 4], got [3, 3]"),
    (lambda r: setattr(r, "ann_ids", np.array([10, 10, 3])), "image 4: annotation id 10 is a duplicate"),
    (lambda r: r.vboxes.__setitem__((1, 0), 5.0), "image 4: each row of vboxes must be all NaN (absent) or all"),
    (lambda r: r.boxes.__setitem__(0, [3, 3, 3.001, 9]), "image 4: annotation 10: box [3.0, 3.0, 3.000999927520752"),
    (lambda r: r.boxes.__setitem__(0, [40, 3, 50, 9]), "lies entirely outside the 32x24 image"),
    (lambda r: r.masks.__setitem__(0, rle(np.zeros((5, 5)))), "mask size [5, 5] is not the image's"),
])
def test_writers_refuse_what_readers_would(tmp_path: Path, change: Callable, message: str) -> None:
    dataset = coco_dataset(write_images(tmp_path))
    change(dataset.images[0])
    for write in (write_coco, write_odgt) if "mask" not in message else (write_coco,):  # odgt has no masks
        with pytest.raises(ValueError) as info:
            write(dataset, tmp_path / "out")
        assert message in str(info.value) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Errors: one line naming the file, the place and the problem
# ---------------------------------------------------------------------------------------------------------------


def coco_base() -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "person"}, {"id": 5, "name": "car"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
                            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [2, 2, 10, 10]}]}


def ann(data: dict, **changes: object) -> dict:
    """Change or (with value ...) remove keys of the second annotation."""
    for key, value in changes.items():
        if value is ...:
            del data["annotations"][1][key]
        else:
            data["annotations"][1][key] = value
    return data


COCO_ERRORS = [  # (text or change of coco_base(), place, problem)
    ('{"images": [],\n "annotations": [}', "line 2 column 18", "invalid JSON"),
    ("[1, 2]", "top level", "expected a JSON object, got array"),
    (lambda d: d.pop("images") and d, "top level", "missing key 'images'"),
    (lambda d: d.pop("annotations") and d, "top level", "missing key 'annotations'"),
    (lambda d: d.pop("categories") and d, "top level", "missing key 'categories'"),
    (lambda d: d.update(images={}) or d, "top level", "'images' must be an array, got object"),
    (lambda d: d.update(info=[]) or d, "top level", "'info' must be an object"),
    (lambda d: ann(d, id=...), "annotations[1]", "missing key 'id'"),
    (lambda d: ann(d, id=0), "annotations[1]", "id must be a positive integer, got 0"),
    (lambda d: ann(d, image_id=...), "annotation 2", "missing key 'image_id'"),
    (lambda d: ann(d, category_id=...), "annotation 2", "missing key 'category_id'"),
    (lambda d: ann(d, bbox=...), "annotation 2", "missing key 'bbox'"),
    (lambda d: ann(d, id=1), "annotation 1", "duplicate id (annotations[0] and annotations[1])"),
    (lambda d: ann(d, image_id=7), "annotation 2", "unknown image_id 7"),
    (lambda d: ann(d, image_id=True), "annotation 2", "unknown image_id true"),
    (lambda d: ann(d, category_id=2), "annotation 2", "unknown category_id 2"),
    (lambda d: ann(d, bbox=[1, 2, 3]), "annotation 2", "bbox must be 4 finite numbers [x, y, w, h], got [1, 2, 3]"),
    (lambda d: ann(d, bbox=[1, 2, "3", 4]), "annotation 2", "bbox must be 4 finite numbers"),
    (lambda d: ann(d, bbox=[1, 2, NAN, 4]), "annotation 2", "bbox must be 4 finite numbers"),
    (lambda d: ann(d, bbox=[10, 5, 0, 20]), "annotation 2", "box bbox [10, 5, 0, 20] has non-positive size"),
    (lambda d: ann(d, bbox=[10, 5, 4, -2]), "annotation 2", "has non-positive size"),
    (lambda d: ann(d, bbox=[40, 5, 4, 4]), "annotation 2", "box bbox [40, 5, 4, 4] lies entirely outside the 40x30"),
    (lambda d: ann(d, bbox=[-9, 5, 9, 4]), "annotation 2", "lies entirely outside"),
    (lambda d: ann(d, vbox=[1, 1, 0, 1]), "annotation 2", "box vbox [1, 1, 0, 1] has non-positive size"),
    (lambda d: ann(d, hbox="head"), "annotation 2", 'hbox must be 4 finite numbers [x, y, w, h], got "head"'),
    (lambda d: ann(d, iscrowd=2), "annotation 2", "iscrowd must be 0 or 1, got 2"),
    (lambda d: ann(d, segmentation={"size": [24, 32], "counts": "0"}), "annotation 2",
     "segmentation size [24, 32] is not the image's [height, width] [30, 40]"),
    (lambda d: ann(d, segmentation={"size": [30, 40], "counts": [5, 6]}), "annotation 2",
     "uncompressed segmentation counts must be non-negative integers summing to 30*40"),
    (lambda d: ann(d, segmentation=[[1, 2, 3, 4]]), "annotation 2", "segmentation polygon 0 must be an even number"),
    (lambda d: ann(d, segmentation="x"), "annotation 2", "segmentation must be an array of polygons or an RLE"),
    (lambda d: d["images"].append({"id": 2, "file_name": "c.png", "width": 1, "height": 1}) or d, "image 2",
     "duplicate id (images[1] and images[2])"),
    (lambda d: d["images"][1].pop("width") and d, "image 2", "missing key 'width'"),
    (lambda d: d["images"][1].update(height=0) or d, "image 2", "height must be an integer in 1..32768, got 0"),
    (lambda d: d["images"][1].update(file_name="zz.png") or d, "image 2", "zz.png not found"),
    (lambda d: d["images"].append(3) or d, "images[2]", "expected a JSON object, got number"),
    (lambda d: d["categories"].append({"id": 5, "name": "dog"}) or d, "category 5",
     "duplicate id (categories[1] and categories[2])"),
    (lambda d: d["categories"].append({"id": 6, "name": "car"}) or d, "category 6",
     'duplicate name "car" (also category 5)'),
]


@pytest.mark.parametrize(("source", "place", "problem"), COCO_ERRORS, ids=[e[2][:40] for e in COCO_ERRORS])
def test_coco_errors(tmp_path: Path, source: str | Callable, place: str, problem: str) -> None:
    write_images(tmp_path / "images")
    path = tmp_path / "annotations.json"
    path.write_text(source if isinstance(source, str) else json.dumps(source(coco_base()), indent=1))
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    assert_message(info.value, f"{path}: {place}: ", problem)


def odgt_base() -> list[dict]:
    return [{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [2, 2, 10, 10]}]},
            {"ID": "b", "width": 40, "height": 30, "gtboxes": [{"tag": "person", "fbox": [2, 2, 10, 10]},
                                                               {"tag": "person", "fbox": [4, 4, 10, 10]}]}]


def box(lines: list[dict], **changes: object) -> list[dict]:
    """Change or (with value ...) remove keys of the second box of line 2."""
    for key, value in changes.items():
        if value is ...:
            del lines[1]["gtboxes"][1][key]
        else:
            lines[1]["gtboxes"][1][key] = value
    return lines


ODGT_ERRORS = [  # (text or change of odgt_base(), place, problem)
    ('{"ID": "a", "gtboxes": []}\n{"ID": "b", "gtboxes": [}', "line 2", "invalid JSON at column 25"),
    ('{"ID": "a", "gtboxes": []}\n\n["b"]', "line 3", "expected a JSON object, got array"),
    (lambda ls: ls[1].pop("ID") and ls, "line 2", "missing key 'ID'"),
    (lambda ls: ls[1].pop("gtboxes") and ls, "line 2", "missing key 'gtboxes'"),
    (lambda ls: ls[1].update(ID=7) or ls, "line 2", "ID must be a non-empty string, got 7"),
    (lambda ls: ls[1].update(ID="a") or ls, "line 2", 'duplicate ID "a" (also line 1)'),
    (lambda ls: ls[1].update(gtboxes={}) or ls, "line 2", "gtboxes must be an array, got object"),
    (lambda ls: ls[1].pop("height") and ls, "line 2", "has width but no height"),
    (lambda ls: ls[1].update(width=-3) or ls, "line 2", "width must be an integer in 1..32768, got -3"),
    (lambda ls: box(ls, fbox=...), "line 2: gtboxes[1]", "missing key 'fbox'"),
    (lambda ls: box(ls, tag=...), "line 2: gtboxes[1]", "missing key 'tag'"),
    (lambda ls: box(ls, tag="car"), "line 2: gtboxes[1]", 'unknown tag "car" (categories: person, or mask)'),
    (lambda ls: box(ls, fbox=[10, 5, 0, 20]), "line 2: gtboxes[1]", "box fbox [10, 5, 0, 20] has non-positive size"),
    (lambda ls: box(ls, fbox=[1, 2, 3, None]), "line 2: gtboxes[1]", "fbox must be 4 finite numbers"),
    (lambda ls: box(ls, fbox=[1, 40, 3, 3]), "line 2: gtboxes[1]", "lies entirely outside the 40x30 image"),
    (lambda ls: box(ls, vbox=[1, 1, 1]), "line 2: gtboxes[1]", "vbox must be 4 finite numbers"),
    (lambda ls: box(ls, hbox=[1, 1, 2, 0]), "line 2: gtboxes[1]", "box hbox [1, 1, 2, 0] has non-positive size"),
    (lambda ls: box(ls, extra={"ignore": 2}), "line 2: gtboxes[1]", "extra.ignore must be 0 or 1, got 2"),
    (lambda ls: box(ls, extra=[]), "line 2: gtboxes[1]", "extra must be an object, got array"),
    (lambda ls: ls[1]["gtboxes"].append("box") or ls, "line 2: gtboxes[2]", "expected a JSON object, got string"),
    (lambda ls: ls[1].update(ID="zz") or ls, "line 2", 'no image file for ID "zz" in '),
    (lambda ls: ls[1].update(file_name="zz.jpg") or ls, "line 2", "zz.jpg not found"),
    (lambda ls: ls[0].update(ID="broken") or ls, "line 1", "cannot read the size of image "),
]


@pytest.mark.parametrize(("source", "place", "problem"), ODGT_ERRORS, ids=[e[2][:40] for e in ODGT_ERRORS])
def test_odgt_errors(tmp_path: Path, source: str | Callable, place: str, problem: str) -> None:
    images = write_images(tmp_path / "images")
    (images / "broken.jpg").write_bytes(b"not an image")
    path = tmp_path / "annotations.odgt"
    path.write_text(source if isinstance(source, str) else "".join(json.dumps(ln) + "\n" for ln in source(odgt_base())))
    with pytest.raises(DatasetError) as info:
        read_odgt(path)
    assert_message(info.value, f"{path}: {place}: ", problem)


@pytest.mark.parametrize(("name", "read", "problem"), [
    ("gone.json", read_coco, "annotation file not found"),
    ("gone.odgt", read_odgt, "annotation file not found"),
    ("gone.odgt", read_dataset, "annotation file not found"),
    ("gone", read_dataset, "not found"),
    ("labels.txt", read_dataset, "unknown annotation format: expected a folder, a .json or an .odgt file"),
    ("empty", read_dataset, "no annotations.json or annotations.odgt in this folder"),
    ("latin1.json", read_coco, "not UTF-8 text"),
])
def test_file_errors(tmp_path: Path, name: str, read: Callable, problem: str) -> None:
    (tmp_path / "labels.txt").write_text("person 1 2 3 4\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "latin1.json").write_bytes('{"info": {"author": "Jos\xe9"}}'.encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        read(tmp_path / name)
    assert_message(info.value, f"{tmp_path / name}: ", problem)


def test_errors_chain_the_cause(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError) as info:
        read_coco(tmp_path / "bad.json")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    assert isinstance(info.value, ValueError)


def test_odgt_categories_argument_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sequence of non-empty names"):
        read_odgt(tmp_path / "a.odgt", categories="person")
    with pytest.raises(ValueError, match="distinct"):
        read_odgt(tmp_path / "a.odgt", categories=("person", "person"))


def assert_message(error: DatasetError, prefix: str, problem: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(prefix), message
    assert problem in message[len(prefix):], message


# ---------------------------------------------------------------------------------------------------------------
# COCO boxes: bbox clipped to the image, the full box as amodal_bbox (issue 15)
# ---------------------------------------------------------------------------------------------------------------


def test_written_bbox_lies_inside_the_image(tmp_path: Path) -> None:
    dataset = coco_dataset(write_images(tmp_path / "images"))
    write_coco(dataset, tmp_path / "annotations.json")
    data = json.loads((tmp_path / "annotations.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    cut = 0
    for a in data["annotations"]:
        w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h, a
        if "amodal_bbox" in a:
            cut += 1
            ax, ay, aw, ah = a["amodal_bbox"]
            clipped = [max(ax, 0), max(ay, 0), min(ax + aw, w), min(ay + ah, h)]
            assert clipped == pytest.approx([x, y, x + bw, y + bh])
    assert cut == 1  # the one box of coco_dataset that extends past its image


def test_coco_with_bbox_only_or_both_reads_the_full_box(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    data = coco_base()
    data["annotations"][0].update(bbox=[0, 2, 6, 22], amodal_bbox=[-4, 2, 10, 30])  # 32x24 image
    data["annotations"][1].update(bbox=[-3, 2, 10, 10])  # another tool's unclipped bbox, no amodal_bbox
    (tmp_path / "a.json").write_text(json.dumps(data))
    a, b = read_coco(tmp_path / "a.json").images
    assert a.boxes.tolist() == [[-4, 2, 6, 32]] and a.clipped_boxes.tolist() == [[0, 2, 6, 24]]
    assert b.boxes.tolist() == [[-3, 2, 7, 12]] and b.clipped_boxes.tolist() == [[0, 2, 7, 12]]


def test_record_loads_its_image_and_gives_its_clipped_boxes_as_a_tensor(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    data = coco_base()
    data["annotations"][0].update(bbox=[0, 2, 6, 22], amodal_bbox=[-4, 2, 10, 30])  # 32x24 image
    (tmp_path / "a.json").write_text(json.dumps(data))
    a = read_coco(tmp_path / "a.json").images[0]
    image = a.load_image()
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert torch.equal(image, load_image(a.file))
    assert (image[:, 0, 0] * 255).round().tolist() == [90, 120, 150]  # the colour write_images paints
    with pytest.raises(ValueError, match=r"is 32x24 \(0.0 MP\), more than the 0.0001 MP limit"):
        a.load_image(max_pixels=100)
    assert a.load_image(max_pixels=12 * 9, downscale=True).shape == (3, 9, 12)
    boxes = a.clipped_boxes_tensor()
    assert boxes.dtype == torch.float32 and boxes.tolist() == a.clipped_boxes.tolist() == [[0, 2, 6, 24]]
    boxes.zero_()  # a new tensor each call, sharing nothing with the record
    assert a.boxes.tolist() == [[-4, 2, 6, 32]] and a.clipped_boxes_tensor().tolist() == [[0, 2, 6, 24]]
    assert a.clipped_boxes_tensor("meta").device.type == "meta"


def test_coco_bbox_must_be_the_amodal_box_clipped(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    data = ann(coco_base(), bbox=[0, 2, 6, 20], amodal_bbox=[-4, 2, 10, 30])  # 40x30 image: bbox h should be 28
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    assert_message(info.value, f"{path}: annotation 2: ",
                   "bbox [0, 2, 6, 20] is not amodal_bbox [-4, 2, 10, 30] clipped to the 40x30 image")


def test_pycocotools_on_the_written_file_equals_odams_evaluator(tmp_path: Path) -> None:
    """COCOeval on annotations.json itself, as any COCO user would run it, against odam's coco_metrics."""
    from odam.data.synthcrowd import generate
    from odam.train.evaluate import coco_metrics

    dataset = generate(tmp_path, num_images=4, seed=424242, size=128, style="crowd", progress=False)
    rng = np.random.default_rng(0)
    results = []
    for rec in dataset.images:  # a detector's output: inside the image, jittered, some misses and false alarms
        for x1, y1, x2, y2 in rec.clipped_boxes[rng.random(len(rec)) < 0.8].tolist():
            dx, dy = rng.normal(0, 0.08 * (x2 - x1)), rng.normal(0, 0.08 * (y2 - y1))
            results.append({"image_id": rec.id, "category_id": 1, "score": float(rng.random()),
                            "bbox": [x1 + dx, y1 + dy, x2 - x1, y2 - y1]})
        for _ in range(3):
            x, y = rng.uniform(0, 96, 2)
            results.append({"image_id": rec.id, "category_id": 1, "score": float(rng.random()) / 2,
                            "bbox": [x, y, 20.0, 30.0]})
    cut = sum(int(((r.boxes < 0) | (r.boxes > [r.width, r.height] * 2)).any(1).sum()) for r in dataset.images)
    assert cut > 0  # some full boxes extend past the image: the case where the two could differ
    ours = coco_metrics(read_coco(tmp_path / "annotations.json"), results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "annotations.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.1 < ours["AP50"] < 1.0
    assert (ours["mAP"], ours["AP50"]) == (round(evaluator.stats[0], 4), round(evaluator.stats[1], 4))


# ---------------------------------------------------------------------------------------------------------------
# Defects of the adversarial audit (issue 15): each read gives the reader's own one-line error
# ---------------------------------------------------------------------------------------------------------------


def test_huge_polygon_is_refused_before_pycocotools_sees_it(tmp_path: Path) -> None:
    """pycocotools segfaulted (exit 139) on this polygon; at 3e8 it allocated 18.8 GB. A subprocess, so that a
    crash fails this test instead of ending the test run."""
    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (1, 1)).save(folder / "images" / "a.png")
    (folder / "annotations.json").write_text(
        '{"images":[{"id":1,"file_name":"a.png","width":1,"height":1}],"categories":[{"id":1,"name":"person"}],'
        '"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,1,1],"segmentation":[[0,0,1e9,0,1e9,1e9]]}]}')
    code = ("import sys\nfrom odam.data import DatasetError, read_dataset\ntry:\n    read_dataset(sys.argv[1])\n"
            "except DatasetError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() == (f"{folder / 'annotations.json'}: annotation 1: segmentation polygon 0 reaches "
                                   f"more than {MAX_OUTSIDE} image sizes beyond the 1x1 image")


def test_polygon_within_the_tolerance_is_read(tmp_path: Path) -> None:
    write_images(tmp_path / "images")  # a.png is 32x24: vertices may reach -8*32 .. 9*32 and -8*24 .. 9*24
    data = ann(coco_base(), segmentation=[[-320, -240, 360, -240, 360, 270, -320, 270]])  # b.png is 40x30
    (tmp_path / "a.json").write_text(json.dumps(data))
    mask = read_coco(tmp_path / "a.json").images[1].masks[0]
    assert decode(mask).all()  # the polygon covers the whole image
    data = ann(coco_base(), segmentation=[[-321, 0, 10, 0, 10, 10]])
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="polygon 0 reaches more than 8 image sizes beyond the 40x30 image"):
        read_coco(tmp_path / "a.json")


def compressed(counts: list[int], height: int, width: int) -> str:
    """pycocotools' own compressed string for run lengths that may be wrong (it encodes anything)."""
    return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)["counts"].decode()


BAD_RLES = [  # (counts of a 30x40 mask, problem)
    (compressed([600, 700], 30, 40), "the runs cover 1300 pixels, not 1200"),  # runs past the mask
    (compressed([600, 500], 30, 40), "the runs cover 1100 pixels, not 1200"),
    ("garbage!", "characters outside '0'..'o'"),
    ("caf\u00e9", "characters outside '0'..'o'"),
    ("0P", "the string ends inside a run"),
    ("0" + "P" * 7 + "1", "a run of more than 7 digits"),
    ("1@", "a negative run"),  # runs 1, then -16 ("@" is 0x10: a last digit with the sign bit)
    ("", "the runs cover 0 pixels, not 1200"),
]


@pytest.mark.parametrize(("counts", "problem"), BAD_RLES, ids=[p for _, p in BAD_RLES])
def test_bad_compressed_rle_is_refused(tmp_path: Path, counts: str, problem: str) -> None:
    write_images(tmp_path / "images")
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ann(coco_base(), segmentation={"size": [30, 40], "counts": counts})))
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    assert_message(info.value, f"{path}: annotation 2: ",
                   f"segmentation counts are not a compressed RLE of a 30x40 mask: {problem}")


def test_compressed_rle_is_decoded_as_pycocotools_does(tmp_path: Path) -> None:
    """odam decodes compressed strings itself; every mask pycocotools encodes reads back the same."""
    write_images(tmp_path / "images")
    rng = np.random.default_rng(0)
    masks = [rng.random((30, 40)) < p for p in (0.0, 0.02, 0.5, 0.98, 1.0)]
    masks.append(rect_mask(30, 40, 0, 30, 0, 40) - rect_mask(30, 40, 1, 29, 1, 39))
    for mask in masks:
        path = tmp_path / "a.json"
        path.write_text(json.dumps(ann(coco_base(), segmentation=rle(mask))))
        np.testing.assert_array_equal(decode(read_coco(path).images[1].masks[0]), mask)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


AUDIT_COCO = [  # (change of coco_base(), place, problem)
    (lambda d: ann(d, bbox=[1e300, 5, 1, 1]), "annotation 2", "reaches more than 8 image sizes beyond the 40x30"),
    (lambda d: ann(d, bbox=[-1e300, 5, 2e300, 1]), "annotation 2", "box bbox [-1e+300, 5, 2e+300, 1] reaches more"),
    (lambda d: ann(d, bbox=[2, 2, 4, 1e-30]), "annotation 2", "has non-positive size in float32"),
    (lambda d: ann(d, hbox=[2, 2, 4, 1e39]), "annotation 2", "box hbox [2, 2, 4, 1e+39] reaches more"),
    (lambda d: d["images"][1].update(width=32769) or d, "image 2", "width must be an integer in 1..32768, got 32769"),
    (lambda d: d["images"][1].update(height=1e300) or d, "image 2", "height must be an integer in 1..32768"),
    (lambda d: d.update(info={"a": nested(70)}) or d, "top level", "'info' is nested deeper than 64 levels"),
]


@pytest.mark.parametrize(("change", "place", "problem"), AUDIT_COCO, ids=[e[2][:40] for e in AUDIT_COCO])
def test_audit_coco_errors(tmp_path: Path, change: Callable, place: str, problem: str) -> None:
    write_images(tmp_path / "images")
    path = tmp_path / "a.json"
    path.write_text(json.dumps(change(coco_base())))
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    assert_message(info.value, f"{path}: {place}: ", problem)


def test_deeply_nested_json_is_an_error_of_the_file(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "a.json").write_text(deep)
    with pytest.raises(DatasetError) as info:
        read_coco(tmp_path / "a.json")
    assert_message(info.value, f"{tmp_path / 'a.json'}: top level: ", "JSON nested too deeply to parse")
    assert isinstance(info.value.__cause__, RecursionError)
    (tmp_path / "a.odgt").write_text(json.dumps(odgt_base()[0]) + "\n" + '{"ID": ' + deep + "}\n")
    with pytest.raises(DatasetError) as info:
        read_odgt(tmp_path / "a.odgt")
    assert_message(info.value, f"{tmp_path / 'a.odgt'}: line 2: ", "JSON nested too deeply to parse")


@pytest.mark.parametrize("tag", [[], {}, ["person"], {"person": 1}, None, 1])
def test_odgt_tag_of_another_type(tmp_path: Path, tag: object) -> None:
    write_images(tmp_path / "images")
    path = tmp_path / "a.odgt"
    path.write_text("".join(json.dumps(line) + "\n" for line in box(odgt_base(), tag=tag)))
    with pytest.raises(DatasetError) as info:
        read_odgt(path)
    kind = {list: "array", dict: "object", type(None): "null", int: "number"}[type(tag)]
    assert_message(info.value, f"{path}: line 2: gtboxes[1]: ", f"tag must be a string, got {kind}")


def test_odgt_huge_box_and_image(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    path = tmp_path / "a.odgt"
    path.write_text("".join(json.dumps(line) + "\n" for line in box(odgt_base(), fbox=[-1e300, 1, 2e300, 2])))
    with pytest.raises(DatasetError, match=r"line 2: gtboxes\[1\]: box fbox .* reaches more than 8 image sizes"):
        read_odgt(path)
    Image.new("L", (32769, 1)).save(tmp_path / "images" / "wide.png")
    path.write_text(json.dumps({"ID": "wide", "gtboxes": []}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1: image .*wide.png is 32769x1, larger than 32768 pixels a side"):
        read_odgt(path)
