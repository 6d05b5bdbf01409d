"""Property-based tests of the readers (issue 15): every input reads correctly or raises the reader's own error.

Each test builds a structurally plausible document (COCO json, CrowdHuman odgt, CrowdDet detection and ground
truth lines, a checkpoint's config.json), applies a few random mutations (wrong types, missing and extra keys,
NaN, infinities, huge numbers, deep nesting, bad polygons and RLEs, bad tags) and reads it. The read must either
succeed, with values that satisfy the reader's contract, or raise the reader's own error type with one line that
names the file and the place. Any other exception (TypeError, RecursionError, a crash inside pycocotools) fails.

The runs are derandomised, so the verdict is the same on every machine (``ODAM_FUZZ_RANDOM=1`` with
``--hypothesis-seed`` draws other examples for a campaign). ``ODAM_FUZZ_SCALE=N`` multiplies the
number of examples (the default keeps this file well under a minute on two cores). What these tests found in the
readers before issue 15's fixes is kept as explicit tests: the checkpoint config at the end of this file, the
dataset readers in tests/test_data_io.py and the CrowdDet readers in tests/test_crowd_metrics.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from odam.data import DatasetError, read_coco, read_odgt, to_coco_dict
from odam.metrics.crowd import read_detections, read_ground_truth
from odam.models import load_checkpoint, save_checkpoint

SCALE = int(os.environ.get("ODAM_FUZZ_SCALE", "1"))
SIZES = {"a.png": (32, 24), "b.png": (40, 30)}


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    derandomize=not os.environ.get("ODAM_FUZZ_RANDOM"),  # as tests/test_fuzz_image.py
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    for name, size in SIZES.items():
        Image.new("RGB", size).save(root / "images" / name)
    (root / "images" / "broken.jpg").write_bytes(b"not an image")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------------------------

DEEP = "__deep__"  # a string that dumps() replaces by nesting deeper than Python's parser allows


def dumps(value: object) -> str:
    return json.dumps(value).replace(f'"{DEEP}"', "[" * 5000 + "]" * 5000)


NUMBERS = st.sampled_from([0, 1, -1, 2, 3, 7, 2**31, 2**63, 10**400, -(10**400), 32768, 32769, 10**9,
                           0.5, -0.0, 1e-30, 1e30, 1e300, -1e300, 3.5e38, math.nan, math.inf, -math.inf])
NASTY = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.integers(), st.floats(),
    st.text(max_size=6), st.sampled_from(["person", "mask", "", "0", "a.png", "garbage!", "1@", "0P", "caf\u00e9"]),
    st.builds(list), st.builds(dict), st.just(DEEP),  # builds: a fresh container each time (mutate edits in place)
    st.lists(st.one_of(st.floats(-1e3, 1e3), st.integers(-100, 100), NUMBERS), max_size=9),
    st.dictionaries(st.sampled_from(["size", "counts", "ignore", "a"]), NUMBERS | st.text(max_size=4), max_size=2),
    st.recursive(st.integers(0, 3), lambda inner: st.lists(inner, min_size=1, max_size=2), max_leaves=30),
)


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (keys and indices), the root included."""
    out, stack = [], [(value, prefix)]
    while stack:
        item, path = stack.pop()
        out.append(path)
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        stack.extend((child, (*path, key)) for key, child in children)
    return sorted(out, key=repr)


def mutate(data: st.DataObject, doc: object, keys: list[str], most: int = 4) -> object:
    """Apply up to ``most`` random mutations to ``doc`` (in place where it can; returns the new root)."""
    for _ in range(data.draw(st.integers(0, most), label="mutations")):
        path = data.draw(st.sampled_from(paths(doc)), label="path")
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        target = parent[path[-1]] if path else doc
        op = data.draw(st.sampled_from(["replace", "delete", "insert", "append", "wrap"]), label="op")
        if op == "replace" or (op == "delete" and not path):
            value = data.draw(NASTY, label="value")
            if not path:
                doc = value
            else:
                parent[path[-1]] = value
        elif op == "delete":
            del parent[path[-1]]
        elif op == "insert" and isinstance(target, dict):
            target[data.draw(st.sampled_from(keys), label="key")] = data.draw(NASTY, label="value")
        elif op == "append" and isinstance(target, list):
            target.append(data.draw(NASTY, label="value"))
        elif op == "wrap" and path:
            parent[path[-1]] = [target]
    return doc


def one_line(error: BaseException, prefix: str, place: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(prefix), message
    assert re.match(place, message[len(prefix):]), message


# ---------------------------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------------------------

COCO_KEYS = ["id", "image_id", "category_id", "bbox", "amodal_bbox", "vbox", "hbox", "segmentation", "iscrowd",
             "ignore", "area", "width", "height", "file_name", "name", "info", "images", "annotations",
             "categories", "size", "counts"]
COCO_PLACE = (r"(top level|line \d+ column \d+|image -?\d+|annotation \d+|category -?\d+"
              r"|(images|annotations|categories)\[\d+\]): \S")


@st.composite
def segmentation(draw: st.DrawFn, width: int, height: int) -> object:
    kind = draw(st.sampled_from(["none", "polygon", "compressed", "uncompressed", "empty"]))
    if kind == "polygon":
        coords = st.floats(-2.0 * max(width, height), 3.0 * max(width, height), allow_nan=False)
        return draw(st.lists(st.lists(coords, min_size=6, max_size=10).map(lambda p: p[: len(p) // 2 * 2]),
                             min_size=1, max_size=2))
    if kind in ("compressed", "uncompressed"):
        bits = draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height))
        mask = np.asfortranarray(np.array(bits, np.uint8).reshape(height, width))
        if kind == "compressed":
            encoded = mask_utils.encode(mask)
            return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
        flat = mask.flatten(order="F")
        change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        return {"size": [height, width], "counts": np.diff(np.concatenate([[0], change])).tolist()}
    return [] if kind == "empty" else None


def box(draw: st.DrawFn, width: int, height: int) -> list[float]:
    x = draw(st.floats(-width, width - 1, allow_nan=False))
    y = draw(st.floats(-height, height - 1, allow_nan=False))
    w = draw(st.floats(1.0, 2.0 * width, allow_nan=False))
    h = draw(st.floats(1.0, 2.0 * height, allow_nan=False))
    return [round(x, 2), round(y, 2), round(max(w, -x + 0.5), 2), round(max(h, -y + 0.5), 2)]


@st.composite
def coco_document(draw: st.DrawFn) -> dict:
    images = [{"id": i + 1, "file_name": name, "width": w, "height": h}
              for i, (name, (w, h)) in enumerate(SIZES.items())]
    for image in images:  # small sizes keep the masks small
        image["width"], image["height"] = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    annotations = []
    for k in range(draw(st.integers(0, 4))):
        image = draw(st.sampled_from(images))
        w, h = image["width"], image["height"]
        ann = {"id": k + 1, "image_id": image["id"], "category_id": draw(st.sampled_from([1, 5])),
               "bbox": box(draw, w, h)}
        x, y, bw, bh = ann["bbox"]
        clipped = [max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)]
        if clipped != [x, y, x + bw, y + bh] and draw(st.booleans()):
            ann["amodal_bbox"] = ann["bbox"]
            ann["bbox"] = [clipped[0], clipped[1], round(clipped[2] - clipped[0], 2),
                           round(clipped[3] - clipped[1], 2)]
        for key in ("vbox", "hbox"):
            if draw(st.booleans()):
                ann[key] = box(draw, w, h)
        seg = draw(segmentation(w, h))
        if seg is not None:
            ann["segmentation"] = seg
        if draw(st.booleans()):
            ann["iscrowd"] = draw(st.sampled_from([0, 1, True]))
        annotations.append(ann)
    categories = [{"id": 1, "name": "person"}, {"id": 5, "name": "car"}]
    return {"info": {"seed": 1}, "images": images, "annotations": annotations, "categories": categories}


@fuzz(300)
@given(st.data())
def test_coco_reader(folder: Path, data: st.DataObject) -> None:
    doc = mutate(data, data.draw(coco_document(), label="document"), COCO_KEYS)
    path = folder / "annotations.json"
    path.write_text(dumps(doc))
    try:
        dataset = read_coco(path)
    except DatasetError as err:
        one_line(err, f"{path}: ", COCO_PLACE)
        event("refused")
        return
    event("read")
    check_dataset(dataset)
    try:
        coco = to_coco_dict(dataset)
    except ValueError as err:  # a box the writers cannot write, e.g. under 0.005 px wide once rounded
        assert "\n" not in str(err) and str(err).startswith("image "), err
        return
    (folder / "again.json").write_text(json.dumps(coco))
    check_dataset(read_coco(folder / "again.json"))  # what the writer writes, the reader reads


def check_dataset(dataset: object) -> None:
    for rec in dataset.images:
        n = len(rec.boxes)
        assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (n, 4)
        assert np.isfinite(rec.boxes).all() and (rec.boxes[:, 2:] > rec.boxes[:, :2]).all()
        clipped = rec.clipped_boxes
        assert (clipped[:, 2:] >= clipped[:, :2]).all()
        for rows in (rec.vboxes, rec.hboxes):
            assert rows.shape == (n, 4) and (np.isnan(rows).all(1) | np.isfinite(rows).all(1)).all()
        assert rec.labels.shape == rec.ignore.shape == rec.ann_ids.shape == (n,)
        if rec.masks is not None:
            assert len(rec.masks) == n
            for m in rec.masks:
                encoded = {"size": m["size"], "counts": m["counts"].encode("ascii")}
                assert m["size"] == [rec.height, rec.width]
                assert 0 <= int(mask_utils.area(encoded)) <= rec.width * rec.height


# ---------------------------------------------------------------------------------------------------------------
# odgt
# ---------------------------------------------------------------------------------------------------------------

ODGT_KEYS = ["ID", "gtboxes", "tag", "fbox", "vbox", "hbox", "extra", "ignore", "width", "height", "file_name",
             "box_id", "head_attr"]


@st.composite
def odgt_lines(draw: st.DrawFn) -> list[dict]:
    lines = []
    for stem, (width, height) in (("a", SIZES["a.png"]), ("b", SIZES["b.png"])):
        line: dict = {"ID": stem, "gtboxes": []}
        if draw(st.booleans()):
            line.update(width=width, height=height)
        for j in range(draw(st.integers(0, 3))):
            gt = {"tag": draw(st.sampled_from(["person", "mask"])), "fbox": box(draw, width, height),
                  "extra": {"box_id": j, "ignore": draw(st.sampled_from([0, 1]))}}
            for key in ("vbox", "hbox"):
                if draw(st.booleans()):
                    gt[key] = box(draw, width, height)
            line["gtboxes"].append(gt)
        lines.append(line)
    return lines


@fuzz(300)
@given(st.data())
def test_odgt_reader(folder: Path, data: st.DataObject) -> None:
    lines = mutate(data, data.draw(odgt_lines(), label="lines"), ODGT_KEYS)
    path = folder / "annotations.odgt"
    text = "\n".join(dumps(line) for line in lines) if isinstance(lines, list) else dumps(lines)
    path.write_text(text + "\n")
    try:
        dataset = read_odgt(path)
    except DatasetError as err:
        one_line(err, f"{path}: ", r"line \d+: \S")
        event("refused")
        return
    event("read")
    check_dataset(dataset)


# ---------------------------------------------------------------------------------------------------------------
# CrowdDet detections and ground truth
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def detection_lines(draw: st.DrawFn) -> list[dict]:
    return [{"ID": stem, "dtboxes": [{"box": box(draw, 40, 30), "score": draw(st.floats(0, 1)), "tag": 1}
                                     for _ in range(draw(st.integers(0, 3)))]} for stem in ("a", "b", "a")]


def _read_lines(reader, path: Path, lines: object) -> dict | None:  # noqa: ANN001
    """Write a CrowdDet JSON-lines document and read it: the result, or ``None`` when the reader refused it with
    its one-line error naming the file and line."""
    path.write_text("\n".join(dumps(line) for line in lines) + "\n" if isinstance(lines, list) else dumps(lines))
    try:
        result = reader(path)
    except ValueError as err:
        one_line(err, f"{path}: ", r"line \d+: \S")
        event("refused")
        return None
    event("read")
    return result


@fuzz(300)
@given(st.data())
def test_detection_reader(folder: Path, data: st.DataObject) -> None:
    lines = mutate(data, data.draw(detection_lines(), label="lines"), ["ID", "dtboxes", "box", "score", "tag"])
    dets = _read_lines(read_detections, folder / "dets.jsonl", lines)
    for d in (dets or {}).values():
        assert d.boxes.shape == (len(d.scores), 4) and np.isfinite(d.boxes).all() and np.isfinite(d.scores).all()
        assert (np.abs(d.boxes) < np.finfo(np.float32).max).all()


@fuzz(150)
@given(st.data())
def test_ground_truth_reader(folder: Path, data: st.DataObject) -> None:
    lines = mutate(data, data.draw(odgt_lines(), label="lines"), ODGT_KEYS)
    gt = _read_lines(read_ground_truth, folder / "gt.odgt", lines)
    for g in (gt or {}).values():
        assert g.boxes.shape == (len(g.ignore), 4) and np.isfinite(g.boxes).all()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint config
# ---------------------------------------------------------------------------------------------------------------

KWARG_KEYS = ["num_classes", "min_size", "max_size", "nms_thresh", "score_thresh", "detections_per_img",
              "fpn_channels", "head_convs", "embedding_dim", "backbone", "topk_candidates", "image_mean",
              "anchor_generator", "bogus"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from odam.architectures import build_detector

    kwargs = {"backbone": "tiny", "num_classes": 2, "fpn_channels": 32, "head_convs": 1, "min_size": 64,
              "max_size": 64, "score_thresh": 0.05, "nms_thresh": 0.6}
    return save_checkpoint(build_detector("fcos", **kwargs), tmp_path_factory.mktemp("ckpt") / "good",
                           spec="odam:fcos", kwargs=kwargs, categories=["__background__", "person"])


@fuzz(60)
@given(st.data())
def test_checkpoint_config_reader(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
                                  data: st.DataObject) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    # mutate the model keywords most of the time: they are what gets built
    if data.draw(st.booleans(), label="whole config"):
        config = mutate(data, config, ["format", "version", "spec", "kwargs", "categories"], most=2)
    elif isinstance(config.get("kwargs"), dict):
        config["kwargs"] = mutate(data, config["kwargs"], KWARG_KEYS)
    target = tmp_path_factory.getbasetemp() / "fuzzed-checkpoint"
    target.mkdir(exist_ok=True)
    shutil.copy(checkpoint / "model.safetensors", target)
    (target / "config.json").write_text(dumps(config))
    try:
        model, loaded = load_checkpoint(target)
    except ValueError as err:
        one_line(err, f"not a valid odam checkpoint {target}: ", r"\S")
        event("refused")
        return
    event("read")
    assert loaded == json.loads((target / "config.json").read_text()) or math.nan in str(loaded)
    assert not model.training


# ---------------------------------------------------------------------------------------------------------------
# Explicit regressions: examples that failed before the fixes (audit of issue 15 and the fuzz campaigns)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"num_classes": 1e9}, "kwargs.num_classes must be an integer in 1..10000, got 1000000000.0"),
    ({"num_classes": 10**9}, "kwargs.num_classes must be an integer in 1..10000"),
    ({"score_thresh": math.nan}, "kwargs.score_thresh must be a number in [0, 1], got nan"),
    ({"nms_thresh": math.inf}, "kwargs.nms_thresh must be a number in [0, 1], got inf"),
    ({"min_size": -320}, "kwargs.min_size must be an integer in 1..8192 or a non-empty list of them, got -320"),
    ({"max_size": "320"}, "kwargs.max_size must be an integer in 1..8192, got '320'"),
    ({"fpn_channels": 10**6}, "kwargs.fpn_channels must be an integer in 1..1024"),
    ({"detections_per_img": True}, "kwargs.detections_per_img must be an integer in 1..1000000, got True"),
    ({"anchor_generator": {}}, "kwargs.anchor_generator must be null, a boolean, a string or a finite number"),
    ({"image_mean": [0.5, math.nan, 0.5]}, "kwargs.image_mean must be 3 numbers in [-1000, 1000]"),
])
def test_checkpoint_config_fields_are_bounded(checkpoint: Path, tmp_path: Path, change: dict, field: str) -> None:
    """A hand-edited config once made load_checkpoint allocate 2.3 TB (num_classes 1e9) or accept NaN."""
    shutil.copytree(checkpoint, tmp_path / "ckpt")
    config = json.loads((checkpoint / "config.json").read_text())
    config["kwargs"].update(change)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "ckpt")
    one_line(info.value, f"not a valid odam checkpoint {tmp_path / 'ckpt'}: ", re.escape(f"config.json: {field}"))


def test_checkpoint_config_nested_too_deeply(checkpoint: Path, tmp_path: Path) -> None:
    shutil.copytree(checkpoint, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "ckpt")
    one_line(info.value, f"not a valid odam checkpoint {tmp_path / 'ckpt'}: ",
             "cannot read config.json: JSON nested too deeply to parse")
