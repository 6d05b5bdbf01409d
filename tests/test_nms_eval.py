"""``odam evaluate nms``: detections equal the adapter's, metrics recomputed, resumable, the sweep and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import odam
from odam.cli import main
from odam.data import read_dataset
from odam.data.synthcrowd import generate
from odam.evaluation.nms import NmsConfig, detections, run
from odam.metrics.crowd import DetectionSet, GroundTruth, crowd_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("crowd") / "data"
    generate(root, 3, seed=4, size=160, progress=False)
    return root


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds", "timed")}


def test_runner_matches_the_adapter_and_resumes(data, tmp_path) -> None:
    config = NmsConfig(data=str(data), model="synthcrowd-fcos", methods=("nms", "soft-nms", "odam-nms"),
                       max_images=2, max_candidates=80, sweep=True)
    out = tmp_path / "run"
    first = run(config, out, progress=False)
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    records = read_dataset(data).images[:2]
    # each method's detections are what load_detector(..., nms=...) returns on the image, and the metrics are
    # those of the adapter's detections against the dataset's own (clipped) boxes
    gt = {str(r.id): GroundTruth(np.clip(r.boxes, 0, 160).astype(float), r.ignore.copy()) for r in records}
    for method in config.methods:
        found = detections(rows, method)
        detector = odam.load_detector("synthcrowd-fcos", nms=config.suppression(method))
        adapter = {}
        for record in records:
            got = detector.detect(odam.load_image(record.file))
            np.testing.assert_allclose(found[str(record.id)].boxes, got.boxes.double().numpy(), atol=6e-3)
            np.testing.assert_allclose(found[str(record.id)].scores, got.scores.double().numpy(), atol=1e-6)
            adapter[str(record.id)] = DetectionSet(got.boxes.double().numpy(), got.scores.double().numpy())
        expected = crowd_metrics(gt, adapter)
        for key in ("ap", "ji", "mr", "recall", "recall_crowd"):
            assert first["methods"][method][key] == pytest.approx(getattr(expected, key), abs=1e-9), (method, key)
    assert len(first["sweep"]) == 36
    assert len((out / "sweep.csv").read_text().splitlines()) == 37 and (out / "sweep.png").stat().st_size > 0
    # a kill in the middle of the second image's line: the rerun redoes that image only
    lines = (out / "images.jsonl").read_text().splitlines()
    (out / "images.jsonl").write_text(lines[0] + "\n" + lines[1][:50])
    again = run(config, out, progress=False)
    again_rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [_strip(r) for r in again_rows] == [_strip(r) for r in rows]
    for method in config.methods:
        assert {k: v for k, v in again["methods"][method].items() if k != "seconds"} == \
               {k: v for k, v in first["methods"][method].items() if k != "seconds"}
    with pytest.raises(ValueError, match="holds a run with max_candidates=80, not 90"):
        run(NmsConfig(data=str(data), model="synthcrowd-fcos", methods=config.methods, max_images=2,
                      max_candidates=90, sweep=True), out, progress=False)
    with pytest.raises(ValueError, match="holds a run with sweep=True, not False"):
        run(NmsConfig(data=str(data), model="synthcrowd-fcos", methods=("nms", "soft", "odam"), max_images=2,
                      max_candidates=80), out, progress=False)


def test_feature_nms_uses_the_feature_model(data, tmp_path) -> None:
    torch.manual_seed(0)
    model = odam.create_model("odam:fcos", num_classes=2, min_size=160, max_size=160, embedding_dim=8)
    ckpt = odam.save_checkpoint(model, tmp_path / "fe", spec="odam:fcos",
                                kwargs={"num_classes": 2, "min_size": 160, "max_size": 160, "embedding_dim": 8},
                                categories=["__background__", "person"])
    config = NmsConfig(data=str(data), model="synthcrowd-fcos", feature_model=str(ckpt), methods=("feature-nms",),
                       max_images=1, max_candidates=30)
    summary = run(config, tmp_path / "out", progress=False)
    row = json.loads((tmp_path / "out" / "images.jsonl").read_text().splitlines()[0])
    detector = odam.load_detector(str(ckpt), nms=config.suppression("feature-nms"))
    got = detector.detect(odam.load_image(read_dataset(data).images[0].file))
    np.testing.assert_allclose(detections([row], "feature-nms")["1"].boxes, got.boxes.double().numpy(), atol=6e-3)
    assert summary["methods"]["feature-nms"]["images"] == 1
    with pytest.raises(ValueError, match="feature-nms needs a model with an embedding head"):
        run(NmsConfig(data=str(data), model="synthcrowd-fcos", methods=("feature-nms",), max_images=1),
            tmp_path / "none", progress=False)


def test_cli(data, tmp_path, capsys: pytest.CaptureFixture) -> None:
    md = tmp_path / "RESULTS.md"
    code = main(["evaluate", "nms", "--data", str(data), "--model", "synthcrowd-fasterrcnn", "--methods",
                 "nms,odam-nms", "--max-images", "1", "--max-candidates", "50", "--out", str(tmp_path / "cli"),
                 "--write", str(md), "--key", "tiny", "--device", "cpu"])
    assert code == 0
    text = md.read_text()
    assert "<!-- tiny-table5:start -->" in text and "| synthcrowd-fasterrcnn | Odam-NMS |" in text
    assert "<!-- tiny-table7:start -->" in text and "| synthcrowd-fasterrcnn | ground truth |" in text
    capsys.readouterr()
    code = main(["evaluate", "nms", "--data", str(data), "--model", "synthcrowd-fcos", "--methods", "nms,box",
                 "--out", str(tmp_path / "bad")])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown NMS method 'box'" in err
