"""``odam evaluate explanations``: object selection, journal, import and summary (resume after SIGKILL: test_resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from odam.cli import main
from odam.data import ImageRecord
from odam.data.synthcrowd import generate
from odam.evaluation.explanations import METHODS, match_objects
from odam.evaluation.journal import ObjectJournal, append_row, claim, object_records
from odam.evaluation.report import markdown, summarize
from odam.explainers import EXPLAINERS, create_explainer
from odam.structures import Detections

FAST = ["--model", "synthcrowd-fcos", "--steps", "20", "--eval-every", "10", "--drise-masks", "8",
        "--drise-batch", "4", "--drise-objects", "2", "--sanity-objects", "1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 320x320 SynthCrowd crowd scenes, held out from the bundled models' training (seed 2)."""
    root = tmp_path_factory.mktemp("scenes")
    generate(root, 24, seed=2, size=320, progress=False)
    return root


def _record(boxes: list, labels: list, ignore: list | None = None) -> ImageRecord:
    n = len(boxes)
    nan = np.full((n, 4), np.nan, np.float32)
    return ImageRecord(1, Path("a.png"), 100, 100, np.array(boxes, np.float32).reshape(n, 4),
                       np.array(labels, np.int64), np.array(ignore or [False] * n), nan, nan, None,
                       np.arange(1, n + 1))


def test_match_takes_the_best_same_class_detection_above_the_threshold() -> None:
    record = _record([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 10, 10]], [1, 1, 2, 1],
                     ignore=[False, False, False, True])
    dets = Detections(torch.tensor([[0.0, 0, 10, 10.5], [0, 0, 10, 10], [50, 50, 60, 62], [20, 20, 30, 30]]),
                      torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 1, 2]))
    # Object 0: IoU 1.0 with det 1 (and 0.952 with det 0). Object 1: 100/120 = 0.83 with det 2, not > 0.9.
    # Object 2 is class 2, mapped to detector label 2: det 3. Object 3 is ignored.
    pairs = match_objects(record, dets, {1: 1, 2: 2}, 0.9)
    assert [(j, k) for j, k, _ in pairs] == [(0, 1), (2, 3)]
    assert pairs[0][2] == pytest.approx(1.0)
    # A detection explains one object only: a second object on the same spot takes the next best.
    twice = _record([[0, 0, 10, 10], [0, 0, 10, 10.2]], [1, 1])
    assert [(j, k) for j, k, _ in match_objects(twice, dets, {1: 1}, 0.9)] == [(0, 1), (1, 0)]
    # Labels the detector does not know are never matched.
    assert match_objects(record, dets, {1: 1}, 0.9) == [(0, 1, pytest.approx(1.0))]


def test_journal_drops_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "objects.jsonl"
    row = {"order": 0, "image_id": 1, "ann_id": 2, "method": "odam", "file": "a.png"}
    path.write_text(json.dumps(row) + "\n" + '{"order": 1, "image_id": 1, "ann', encoding="utf-8")
    journal = ObjectJournal(path)
    assert (1, 2, "odam") in journal and len(journal.keys) == 1
    journal.extend([row | {"ann_id": 3, "order": 1}])
    assert [r["ann_id"] for r in object_records(path, METHODS)] == [2, 3]
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="objects.jsonl:1: not a record"):
        ObjectJournal(path)


def test_records_are_read_once_per_key_in_object_and_method_order(tmp_path: Path) -> None:
    path = tmp_path / "objects.jsonl"
    rows = [{"order": 1, "image_id": 1, "ann_id": 2, "method": "odam", "v": 0},
            {"order": 0, "image_id": 1, "ann_id": 1, "method": "odam", "v": 1},
            {"order": 0, "image_id": 1, "ann_id": 1, "method": "odam", "v": 2},  # repeated: the first counts
            {"order": 0, "image_id": 1, "ann_id": 1, "method": "gradcam", "v": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n" + '{"order": 2, "ima', encoding="utf-8")
    assert [r["v"] for r in object_records(path, METHODS)] == [3, 1, 0]
    assert path.read_text(encoding="utf-8").endswith('{"order": 2, "ima')  # reading changes nothing
    assert object_records(tmp_path / "missing.jsonl", METHODS) == []


def test_claim_names_every_changed_setting_and_accepts_the_same_data_by_another_path(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out, records = tmp_path / "out", [tmp_path / "out" / "objects.jsonl"]
    claim(out, {"data": "d", "steps": 10, "seed": 0}, records, paths=("data",))
    claim(out, {"data": "d", "steps": 20, "seed": 1}, records, paths=("data",))  # no record yet: replaced
    assert json.loads((out / "config.json").read_text())["steps"] == 20
    append_row(records[0], {"image_id": 1})
    claim(out, {"data": str(tmp_path / "d"), "steps": 20, "seed": 1}, records, paths=("data",))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(data, seed, steps\); use another"):
        claim(out, {"data": "e", "steps": 10, "seed": 0}, records, paths=("data",))
    with pytest.raises(ValueError, match=r"other settings \(data\)"):
        claim(out, {"data": str(tmp_path / "d"), "steps": 20, "seed": 1}, records)  # not compared as paths


def test_explainers_are_created_by_name_with_their_settings() -> None:
    torch.manual_seed(0)
    model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    assert set(EXPLAINERS) == set(METHODS)
    drise = create_explainer("drise", model, num_masks=8, batch_size=4, progress=False)
    assert type(drise) is EXPLAINERS["drise"] and (drise.num_masks, drise.batch_size) == (8, 4)
    assert type(create_explainer("gradcam++", model)).__name__ == "GradCAMPlusPlus"
    with pytest.raises(ValueError, match="unknown explanation method 'lime'; choose from odam, gradcam, gradcam"):
        create_explainer("lime", model)


def test_other_settings_are_refused_and_records_can_be_imported(scenes: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    base = ["--data", str(scenes), "--max-objects", "2", *FAST, "--sanity-objects", "0"]
    here, there = tmp_path / "here", tmp_path / "there"
    assert main(["evaluate", "explanations", *base, "--methods", "odam", "--out", str(here)]) == 0
    assert main(["evaluate", "explanations", *base, "--methods", "odam", "--steps", "10", "--out", str(here)]) == 2
    assert "holds a run with other settings (steps)" in capsys.readouterr().err
    assert main(["evaluate", "explanations", *base, "--methods", "gradcam", "--out", str(there)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "explanations", *base, "--methods", "odam", "--import", str(there),
                 "--out", str(here)]) == 0
    assert "imported 2 records" in capsys.readouterr().err
    assert {r["method"] for r in object_records(here / "objects.jsonl", METHODS)} == {"odam", "gradcam"}
    # A record whose image is another file here is refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((there / "config.json").read_text())
    row = object_records(there / "objects.jsonl", METHODS)[0]
    (other / "objects.jsonl").write_text(json.dumps(row | {"method": "drise", "file": "elsewhere.png"}) + "\n")
    assert main(["evaluate", "explanations", *base, "--methods", "odam", "--import", str(other),
                 "--out", str(here)]) == 2
    assert f"image {row['image_id']} is 'elsewhere.png' there but '{row['file']}' here" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "odam,lime"], "unknown method 'lime'"),
    (["--max-objects", "0"], "max-objects must be positive"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--split", "val"], "no dataset at"),
])
def test_bad_arguments_are_one_line(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                    args: list[str], message: str) -> None:
    assert main(["evaluate", "explanations", "--data", str(scenes), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_summary_by_hand(tmp_path: Path) -> None:
    """Means, percentages and undefined values on two hand-made records per method."""
    (tmp_path / "config.json").write_text(json.dumps({"data": "d", "model": "m"}))
    curve = lambda auc, y: {"auc": auc, "x": [0.0, 1.0], "y": y}  # noqa: E731
    rows = []
    for n, (pg, odi, comp, dele) in enumerate([(True, 0.25, 1.0, 80.0), (False, 0.75, None, 60.0)]):
        for method in ("odam", "gradcam"):
            rows.append({"order": n, "image_id": 1, "ann_id": n + 1, "method": method, "file": "a.png",
                         "seconds": 0.5 * (n + 1), "deletion": curve(dele, [1.0, 0.5 * n]),
                         "insertion": curve(50.0, [0.0, 1.0]), "vea": None, "pg_box": pg, "pg_mask": None,
                         "enpg_box": 0.5, "enpg_mask": None, "compactness": comp, "odi_box": odi, "odi_mask": None})
    rows.append(rows[0] | {"method": "drise", "pg_box": False, "deletion": curve(10.0, [1.0, 0.0])})  # one object
    (tmp_path / "objects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(tmp_path)
    odam_row = summary["rows"]["odam"]
    assert odam_row["pg_box"] == 50.0 and odam_row["odi_box"] == 50.0 and odam_row["enpg_box"] == 50.0
    assert odam_row["deletion_auc"] == 70.0 and odam_row["compactness"] == 1.0 and odam_row["vea_auc"] is None
    assert odam_row["seconds_per_object"] == 0.75 and summary["counts"]["odam"]["compactness"] == 1
    assert summary["curves"]["odam"]["deletion"]["y"] == [1.0, 0.25]
    text = markdown(summary)
    assert "| ODAM | 70.00 | 50.00 | n/a |" in text and "ODAM compactness 1" in text
    assert text.index("| Grad-CAM |") < text.index("| D-RISE |") < text.index("| ODAM |")  # the paper's order
    # D-RISE explained object 1 only: all three are also compared on that object alone.
    assert summary["shared"]["objects"] == 1
    shared = summary["shared"]["rows"]["odam"]
    assert shared["deletion_auc"] == 80.0 and shared["pg_box"] == 100
    assert "on the 1 objects that every method explained" in text and "| D-RISE | 10.00 |" in text
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("method,objects,deletion_auc")


def test_compare_puts_one_methods_rows_of_several_runs_side_by_side(tmp_path, capsys):
    from odam.cli import main as cli

    row = {"objects": 3, "odi_box": 50.0, "odi_mask": 20.0, "pg_box": 100.0, "enpg_box": 70.0, "enpg_mask": None,
           "compactness": 1.0, "deletion_auc": 90.0, "insertion_auc": 60.0, "vea_auc": 0.1}
    for name, odi in (("a", 50.0), ("b", 41.25)):
        (tmp_path / name).mkdir()
        summary = {"model": f"/x/model-{name}", "data": "/d/crowd", "methods": ["odam"],
                   "rows": {"odam": row | {"odi_box": odi}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    md = tmp_path / "R.md"
    assert cli(["evaluate", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--write", str(md)]) == 0
    text = md.read_text()
    assert "| model-a | crowd | 3 | 50.0 | 20.0 | 100.0 | 70.0 | n/a | 1.00 | 90.00 | 60.00 | 0.100 |" in text
    assert "| model-b | crowd | 3 | 41.2 |" in text
    capsys.readouterr()
    assert cli(["evaluate", "compare", str(tmp_path / "a"), "--method", "gradcam"]) == 2
    assert "has no 'gradcam' results (it measured odam)" in capsys.readouterr().err


def test_compare_oracle_is_the_share_of_the_visible_mask_inside_other_boxes(tmp_path):
    import warnings

    import numpy as np
    from pycocotools import mask as mask_utils

    from odam.data import read_dataset
    from odam.data.synthcrowd import generate
    from odam.evaluation.report import oracle_odi

    generate(tmp_path / "data", 2, seed=3, size=128, progress=False)
    records = read_dataset(tmp_path / "data").images
    run = tmp_path / "run"
    run.mkdir()
    rows, expected = [], []
    for order, (record, k) in enumerate([(records[0], 0), (records[0], 2), (records[1], 1)]):
        rows.append({"order": order, "image_id": int(record.id), "ann_id": int(record.ann_ids[k]), "method": "odam"})
        with warnings.catch_warnings():  # pycocotools' decode under numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            own = mask_utils.decode(record.masks[k]).astype(bool)
        ys, xs = np.nonzero(own)
        inside_other = np.zeros_like(own)
        for j, (x1, y1, x2, y2) in enumerate(np.clip(record.boxes, 0, 128)):
            if j != k:
                inside_other[int(np.ceil(y1 - 0.5)):int(np.floor(y2 - 0.5)) + 1,
                             int(np.ceil(x1 - 0.5)):int(np.floor(x2 - 0.5)) + 1] = True
        expected.append(inside_other[ys, xs].mean())
    (run / "objects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = oracle_odi(run, "odam", str(tmp_path / "data"))
    assert got["objects"] == 3 and got["odi_mask"] == 0.0
    assert got["odi_box"] == pytest.approx(100 * np.mean(expected), abs=1e-9)
