"""SynthCrowd: determinism, ground-truth consistency, crowd statistics, and the round trip through both readers."""

import warnings

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from odam.cli import main
from odam.data import read_coco, read_odgt
from odam.data.stats import _pairwise_iou, crowd_statistics
from odam.data.synthcrowd import generate, render_scene


def _decode(rle):
    with warnings.catch_warnings():  # pycocotools 2.0.x with numpy 2 warns inside decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    generate(tmp_path / "a", 4, seed=5, size=96, progress=False)
    generate(tmp_path / "b", 4, seed=5, size=96, workers=2, progress=False)
    generate(tmp_path / "c", 4, seed=6, size=96, progress=False)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert sorted(a) == ["annotations.json", "annotations.odgt"] + [f"images/00000{i}.png" for i in range(4)]
    assert a == b
    assert a["images/000000.png"] != c["images/000000.png"]


@pytest.mark.parametrize("style", ["crowd", "mixed"])
def test_ground_truth_is_consistent_with_the_rendered_masks(style):
    for index in range(3):
        image, objects = render_scene(seed=11, index=index, size=160, style=style)
        owner = np.zeros(image.shape[:2], int)
        for o in objects:
            rows, cols = np.nonzero(o["mask"])
            x0, y0, x1, y1 = o["vbox"]
            # the visible box is exactly the mask's extent, inside the image and inside the full box
            assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
            fx0, fy0, fx1, fy1 = o["box"]
            assert fx0 <= x0 and fy0 <= y0 and x1 <= fx1 and y1 <= fy1
            if not np.isnan(o["hbox"][0]):  # the head sits at the top of the full box
                hx0, hy0, hx1, hy1 = o["hbox"]
                assert fx0 <= hx0 < hx1 <= fx1 and fy0 <= hy0 < hy1 <= fy0 + 0.25 * (fy1 - fy0)
            assert o["ignore"] == (o["visible"] < 0.1)
            owner += o["mask"]
        assert owner.max() <= 1  # each pixel belongs to at most one object


def test_crowd_style_is_dense_and_overlapping():
    people, pairs = [], []
    for index in range(30):
        _, objects = render_scene(seed=123, index=index, size=320, style="crowd")
        boxes = np.array([o["box"] for o in objects], float)
        people.append(len(objects))
        pairs.append(int(np.triu(_pairwise_iou(boxes) > 0.5, 1).sum()))
    assert np.mean(people) >= 10
    assert np.mean(pairs) >= 2


def test_mixed_style_has_several_instances_of_several_classes():
    per_image = []
    for index in range(10):
        _, objects = render_scene(seed=4, index=index, size=320, style="mixed")
        per_image.append(np.bincount([o["label"] for o in objects], minlength=4)[1:])
    counts = np.array(per_image)
    assert (counts.sum(0) > 0).all()  # person, dog and car all occur
    assert (counts.max(1) >= 2).all()  # every image repeats some class


def test_written_files_read_back_through_both_readers(tmp_path):
    data = generate(tmp_path, 3, seed=2, size=128, progress=False)
    coco = read_coco(tmp_path / "annotations.json")
    odgt = read_odgt(tmp_path / "annotations.odgt")
    assert coco.categories == odgt.categories == ("person",)
    for mem, c, o in zip(data.images, coco.images, odgt.images, strict=True):
        assert c.file == o.file == mem.file
        for read in (c, o):
            # the writers round to 1/100 pixel; SynthCrowd boxes are whole pixels except head boxes
            np.testing.assert_allclose(read.boxes, mem.boxes, atol=0.005)
            np.testing.assert_allclose(read.vboxes, mem.vboxes, atol=0.005)
            np.testing.assert_allclose(read.hboxes, mem.hboxes, atol=0.005)
            np.testing.assert_array_equal(read.labels, mem.labels)
            np.testing.assert_array_equal(read.ignore, mem.ignore)
        assert [r["counts"] for r in c.masks] == [r["counts"] for r in mem.masks]
        assert o.masks is None
        # the stored visible mask decodes to pixels whose extent is the visible box
        for rle, vbox in zip(c.masks, c.vboxes, strict=True):
            rows, cols = np.nonzero(_decode(rle))
            assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == list(vbox)


def test_statistics_match_a_direct_count(tmp_path):
    data = generate(tmp_path, 4, seed=9, size=160, progress=False)
    stats = crowd_statistics(data)
    n_objects = sum(len(r) for r in data.images)
    assert stats.objects_per_image == round(n_objects / 4, 2)
    slow_pairs = 0
    for r in data.images:  # slow reference: every pair, one at a time
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                a, b = r.boxes[i].astype(float), r.boxes[j].astype(float)
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                inter = iw * ih
                union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
                slow_pairs += inter / union > 0.5
    assert stats.overlap_pairs_per_image == round(slow_pairs / 4, 2)
    assert sum(stats.occlusion) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(("args", "message"), [
    (["--num-images", "0", "--seed", "1"], "num_images must be an integer >= 1, got 0"),
    (["--num-images", "1", "--seed", "1", "--size", "32"], "size must be an integer >= 64, got 32"),
    (["--num-images", "1", "--seed", "-3"], "seed must be an integer >= 0, got -3"),
])
def test_cli_rejects_bad_settings_in_one_line(tmp_path, capsys, args, message):
    assert main(["data", "synthcrowd", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_cli_writes_dataset_and_statistics(tmp_path, capsys):
    assert main(["data", "synthcrowd", "--out", str(tmp_path / "d"), "--num-images", "2", "--seed", "3",
                 "--size", "96", "--workers", "1"]) == 0
    doc = tmp_path / "STATS.md"
    doc.write_text("# Stats\n<!-- synthcrowd_stats:start -->\nold\n<!-- synthcrowd_stats:end -->\ntail\n")
    assert main(["data", "stats", str(tmp_path / "d"), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and text.startswith("# Stats\n") and text.endswith("tail\n")
    assert "| 2 |" in text and "pairs IoU>0.5" in text
