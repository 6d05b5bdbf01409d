"""The training engine: sharding, a 2-process DDP step, and COCO evaluation (resume after SIGKILL: test_resume)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from odam.cli import main
from odam.data.synthcrowd import generate
from odam.train.engine import TrainConfig, learning_rate, shard
from odam.train.evaluate import evaluate_coco


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcrowd")
    generate(root, 10, seed=21, size=128, progress=False)
    return root


def _train_args(data, out, *extra):
    return ["train", "--model", "fcos", "--data", str(data), "--val", str(data), "--out", str(out),
            "--batch-size", "2", "--max-iters", "3", "--min-size", "128", "--max-size", "128",
            "--warmup-iters", "2", "--seed", "4", "--device", "cpu", *extra]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_equal_and_match_a_slow_reference(world):
    n, batch, seed, epoch = 23, 2, 5, 3
    plans = [shard(n, epoch, seed, r, world, batch) for r in range(world)]
    indices = [[i for i, _ in p] for p in plans]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) % batch == 0
    assert len(set().union(*map(set, indices))) == sum(map(len, indices))
    rng = np.random.default_rng([seed, epoch])
    order, flips = list(rng.permutation(n)), rng.random(n)
    steps = n // (world * batch)
    for r in range(world):
        expected = [(int(order[k]), bool(flips[order[k]] < 0.5)) for k in range(r, n, world)][: steps * batch]
        assert plans[r] == expected


def test_learning_rate_warms_up_then_decays_to_zero():
    c = TrainConfig(model="fcos", data="", out="", lr=0.2, warmup_iters=4)
    lrs = [learning_rate(c, s, 20) for s in range(21)]
    assert lrs[0] == pytest.approx(0.2 * 0.001)
    assert lrs[4] == pytest.approx(0.2) and max(lrs) == pytest.approx(0.2)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5], strict=True))
    assert all(a >= b for a, b in zip(lrs[4:-1], lrs[5:], strict=True))
    assert lrs[12] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.0, abs=1e-12)


def test_resume_refuses_a_changed_run(tiny_data, tmp_path, capsys):
    assert main(_train_args(tiny_data, tmp_path, "--epochs", "1", "--max-iters", "1")) == 0
    capsys.readouterr()
    assert main(_train_args(tiny_data, tmp_path, "--epochs", "1", "--lr", "0.5", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained with lr=0.01, now 0.5" in err


@pytest.mark.parametrize("extra", [(), ("--odam-train", "--odam-negatives", "overlapping")])
def test_two_process_ddp_step_keeps_ranks_identical_on_disjoint_shards(tiny_data, tmp_path, extra):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "odam",
            *_train_args(tiny_data, tmp_path, "--epochs", "1", "--max-iters", "2", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["world_size"] == 2
    epoch = state["history"][0]
    assert epoch["images_per_rank"] == [4, 4]  # 2 steps of batch 2 on each rank
    assert epoch["distinct_images"] == 8  # ... on disjoint images
    digests = state["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    if extra:  # Odam-Train's loss was added and logged
        assert epoch["odam"] > 0 and epoch["odam"] == pytest.approx(epoch["con"] + epoch["sep"])


class _Fixed(nn.Module):
    """A 'detector' whose outputs are given per image id, to test the evaluation wrapper."""

    def __init__(self, outputs):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.outputs = outputs

    def forward(self, images):
        return [self.outputs.pop(0) for _ in images]


def test_evaluate_coco_scores_perfect_missing_and_ignored_detections(tiny_data):
    from odam.data import read_dataset

    data = read_dataset(tiny_data)
    data.images = data.images[:2]

    def gt_outputs(extra_on_ignored: bool):
        outs = []
        for r in data.images:
            # real objects first (scores 0.9 .. 0.5), then, optionally, the ignored ones (0.3 .. 0.1)
            order = np.concatenate([np.flatnonzero(~r.ignore), np.flatnonzero(r.ignore) if extra_on_ignored else []])
            boxes = r.clipped_boxes_tensor()[order.astype(int)]
            n_real = int((~r.ignore).sum())
            scores = torch.cat([torch.linspace(0.9, 0.5, n_real), torch.linspace(0.3, 0.1, len(order) - n_real)])
            outs.append({"boxes": boxes, "scores": scores, "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return outs

    perfect = evaluate_coco(_Fixed(gt_outputs(False)), data, progress=False)
    assert perfect["AP50"] == pytest.approx(1.0) and perfect["mAP"] == pytest.approx(1.0)
    # lower-scored detections of ignored objects (COCO crowd regions) neither help nor hurt
    with_ignored = evaluate_coco(_Fixed(gt_outputs(True)), data, progress=False)
    assert with_ignored["AP50"] == pytest.approx(1.0)
    # half the objects found -> recall 0.5, and COCO's 101-point AP is then about 0.5
    half = gt_outputs(False)
    for o in half:
        n = len(o["boxes"]) // 2
        for k in o:
            o[k] = o[k][:n]
    found = sum(len(o["boxes"]) for o in half) / sum(int((~r.ignore).sum()) for r in data.images)
    assert evaluate_coco(_Fixed(half), data, progress=False)["AP50"] == pytest.approx(found, abs=0.02)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in data.images]
    assert evaluate_coco(_Fixed(empty), data, progress=False)["AP50"] == 0.0


def test_oracle_keeps_everything_without_nms_and_loses_overlapping_people_with_it(tiny_data):
    from odam.data import read_dataset
    from odam.data.stats import _pairwise_iou
    from odam.train.evaluate import coco_metrics, oracle_results

    data = read_dataset(tiny_data)
    assert coco_metrics(data, oracle_results(data, 1.0))["AP50"] == pytest.approx(1.0)
    # at NMS 0.3 every pair of clipped boxes overlapping more than that loses one box
    crowded = any((np.triu(_pairwise_iou(r.clipped_boxes), 1) > 0.3).any() for r in data.images)
    assert crowded
    assert coco_metrics(data, oracle_results(data, 0.3))["AP50"] < 0.95


def test_error_breakdown_sorts_a_hand_made_case(tiny_data):
    from odam.data import Dataset, read_dataset
    from odam.train.evaluate import error_breakdown

    record = read_dataset(tiny_data).images[0]
    record.boxes = np.array([[10, 10, 50, 90], [60, 10, 100, 90], [0, 0, 8, 8]], np.float32)
    record.labels, record.ignore = np.array([1, 1, 1]), np.array([False, False, True])
    data = Dataset([record], ("person",))
    boxes = torch.tensor([[10, 10, 50, 90],  # person 0 exactly
                          [12, 12, 52, 92],  # person 0 again: a duplicate
                          [60, 10, 100, 35],  # the top of person 1: IoU 0.31, mislocalised
                          [110, 100, 120, 110],  # nothing there
                          [0, 0, 8, 8]], dtype=torch.float32)  # the ignored object: a duplicate, not a hit
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.55])
    out = {"boxes": boxes, "scores": scores, "labels": torch.ones(5, dtype=torch.int64)}
    counts = error_breakdown(_Fixed([out]), data, [0.5, 0.85])
    assert {k: counts[0.5][k] for k in ("true", "duplicate", "mislocalised", "background", "objects")} == {
        "true": 1, "duplicate": 2, "mislocalised": 1, "background": 1, "objects": 2}
    assert counts[0.5]["precision"] == 0.2 and counts[0.5]["recall"] == 0.5
    assert counts[0.85]["true"] == 1 and counts[0.85]["duplicate"] == 0


def test_error_breakdown_without_thresholds_runs_no_model(tiny_data):
    """``odam evaluate detector`` without ``--errors`` asks for no thresholds: no pass over the images."""
    from odam.data import read_dataset
    from odam.train.evaluate import error_breakdown

    class Refuses(torch.nn.Linear):
        def forward(self, *args):
            raise AssertionError("the model ran")

    assert error_breakdown(Refuses(1, 1), read_dataset(tiny_data), []) == {}


def test_evaluate_detector_command_writes_its_tables(tiny_data, tmp_path, capsys):
    doc = tmp_path / "MODELS.md"
    args = ["evaluate", "detector", "--model", "synthcrowd-fcos", "--data", str(tiny_data), "--nms", "0.5,0.7",
            "--oracle", "--errors", "0.5", "--write", str(doc)]
    assert main(args) == 0
    text = doc.read_text()
    assert "| synthcrowd-fcos | odam:fcos | tiny |" in text
    assert "| model | NMS 0.5 | NMS 0.7 |" in text and "| exact ground-truth boxes, random scores |" in text
    assert "| synthcrowd-fcos | 0.5 |" in text
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    generate(mixed, 1, seed=1, size=96, style="mixed", progress=False)
    assert main(["evaluate", "detector", "--model", "synthcrowd-fcos", "--data", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "predicts categories ['person'], but" in err
