"""The heat-map correlation runner (odam.evaluation.correlation): hand-made pairs, numpy's correlation, resume."""

import json

import numpy as np
import pytest
import torch

import odam
from odam.cli import main
from odam.data import read_dataset
from odam.data.synthcrowd import generate
from odam.evaluation.correlation import CorrelationConfig, correlations, pairs, run, summarize
from odam.heatmaps import correlation, heatmap_vectors


def test_correlations_match_numpy_and_mark_constant_maps():
    torch.manual_seed(0)
    maps = torch.rand(5, 12)
    maps[3] = 0.25  # constant: no Pearson correlation
    c = correlations(maps)
    ok = [0, 1, 2, 4]
    expected = np.corrcoef(maps[ok].numpy().astype(np.float64))
    assert np.allclose(c["pearson"][ok][:, ok].numpy(), expected, atol=1e-6)
    assert torch.isnan(c["pearson"][3]).all() and torch.isnan(c["pearson"][:, 3]).all()
    unit = maps.double() / maps.double().norm(dim=1, keepdim=True)
    assert torch.allclose(c["cosine"].double(), (unit @ unit.T).clamp(-1, 1), atol=1e-6)
    # the study's numbers are Odam-NMS's, with the pairs of a constant map left out of the Pearson means
    assert torch.equal(c["pearson"][ok][:, ok], correlation(maps)[ok][:, ok])
    assert torch.equal(c["cosine"], correlation(maps, centred=False))


def test_a_zero_map_has_no_pearson_correlation_and_cosine_zero():
    maps = torch.rand(3, 8, 10)
    maps[1] = 0
    c = correlations(heatmap_vectors(maps, short_edge=4))
    assert torch.isnan(c["pearson"][1]).all() and not torch.isnan(c["pearson"][0, 2])
    assert c["cosine"][1].tolist() == [0.0, 0.0, 0.0]


def test_pairs_follow_assignment_and_overlap_and_skip_ignored_objects():
    gt = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [40, 0, 50, 10], [44, 0, 54, 10]])
    ignore = torch.tensor([False, False, False, True])
    pred = torch.tensor([
        [0.0, 0, 10, 10],   # 0 -> gt 0
        [0.5, 0, 10, 10],   # 1 -> gt 0
        [4.0, 0, 14, 10],   # 2 -> gt 1 (IoU with gt 0 is 0.43 > 0.3: an overlapping neighbour)
        [44.0, 0, 54, 10],  # 3 -> only the ignored gt 3 fits well; IoU 0.43 with gt 2 < 0.5: unassigned
        [40.0, 0, 50, 10],  # 4 -> gt 2, which overlaps nothing but the ignored gt 3
        [20.0, 0, 30, 10],  # 5 -> nothing
    ])
    p = pairs(pred, gt, ignore, assign_iou=0.5, overlap_iou=0.3)
    assert p["same"].tolist() == [[0, 1]]
    assert p["different"].tolist() == [[0, 2], [1, 2]]
    p = pairs(pred, gt, ignore, assign_iou=0.5, overlap_iou=0.5)  # gt 0 and 1 no longer count as overlapping
    assert p["different"].tolist() == []


def test_summary_averages_over_pairs_not_images():
    rows = [{"predictions": 3, "same_pearson_sum": 0.9, "same_pearson_n": 1, "same_cosine_sum": 0.9,
             "same_cosine_n": 1, "different_pearson_sum": 0.0, "different_pearson_n": 0,
             "different_cosine_sum": 0.0, "different_cosine_n": 0},
            {"predictions": 5, "same_pearson_sum": 1.5, "same_pearson_n": 3, "same_cosine_sum": 2.1,
             "same_cosine_n": 3, "different_pearson_sum": 0.4, "different_pearson_n": 2,
             "different_cosine_sum": 0.6, "different_cosine_n": 2}]
    s = summarize(CorrelationConfig(data="d", model="m"), rows)
    assert s["same_pearson"] == pytest.approx(2.4 / 4) and s["different_pearson"] == pytest.approx(0.2)
    assert s["gap_pearson"] == pytest.approx(0.4) and s["gap_cosine"] == pytest.approx(3.0 / 4 - 0.3)
    assert s["same_pairs"] == 4 and s["different_pairs"] == 2 and s["predictions_per_image"] == 4


def test_run_writes_per_image_rows_resumes_and_refuses_other_settings(tmp_path, capsys):
    data = tmp_path / "data"
    generate(data, 3, seed=4, size=160, progress=False)
    out = tmp_path / "out"
    config = CorrelationConfig(data=str(data), model="synthcrowd-fasterrcnn", max_images=2, max_predictions=40)
    first = run(config, out, progress=False)
    assert first["images"] == 2 and first["same_pairs"] > 0
    # the explained predictions are taken before NMS: more of them than the detector returns
    detector = odam.load_detector("synthcrowd-fasterrcnn")
    after_nms = np.mean([len(detector.detect(odam.load_image(r.file))) for r in read_dataset(data).images[:2]])
    assert first["predictions_per_image"] > after_nms
    lines = (out / "images.jsonl").read_text().splitlines()
    (out / "images.jsonl").write_text(lines[0] + "\n" + lines[1][:10])  # a kill in the middle of the 2nd row
    again = run(config, out, progress=False)
    assert again == first
    assert len((out / "images.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="holds a run with max_images=2, not 3"):
        run(CorrelationConfig(data=str(data), model="synthcrowd-fasterrcnn", max_images=3, max_predictions=40), out)
    md = tmp_path / "RESULTS.md"
    code = main(["evaluate", "correlation", "--data", str(data), "--model", "synthcrowd-fasterrcnn",
                 "--max-images", "1", "--out", str(tmp_path / "cli"), "--write", str(md), "--device", "cpu"])
    assert code == 0
    assert "| synthcrowd-fasterrcnn | 1 |" in md.read_text()
    summary = json.loads((tmp_path / "cli" / "synthcrowd-fasterrcnn" / "summary.json").read_text())
    assert summary["images"] == 1
