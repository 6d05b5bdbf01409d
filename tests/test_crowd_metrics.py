"""odam.metrics.crowd on hand-computed cases."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest

from odam.metrics.crowd import (
    DetectionSet,
    GroundTruth,
    average_precision,
    crowd_flags,
    crowd_metrics,
    evaluate,
    jaccard_index,
    log_average_miss_rate,
    match_image,
    read_detections,
    read_ground_truth,
    write_detections,
)


def _gt(boxes, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return GroundTruth(boxes, np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool))


def _dt(boxes, scores) -> DetectionSet:
    return DetectionSet(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float))


def test_matching_takes_best_unmatched_and_drops_on_ignore_regions() -> None:
    gt = _gt([[0, 0, 10, 10], [6, 0, 16, 10], [50, 0, 60, 10]], ignore=[False, False, True])
    dets = _dt([[5, 0, 15, 10],     # IoU 5/15 with gt0, 9/11 with gt1 -> gt1
                [0, 0, 10, 10],     # gt0
                [6, 0, 16, 10],     # gt1 taken, IoU 4/16 with gt0: false positive
                [52, 0, 58, 10],    # inside the ignore region: dropped
                [55, 0, 65, 10]],   # IoA 0.5 exactly is not > 0.5: false positive
               [0.9, 0.8, 0.7, 0.6, 0.5])
    status, matched = match_image(gt, dets)
    assert status.tolist() == [1, 1, 0, -1, 0]
    assert matched.tolist() == [1, 0, -1]


def test_matching_ties() -> None:
    # Equal scores: detections are visited in the order given. Equal IoU: the first ground truth wins.
    gt = _gt([[0, 0, 10, 10], [0, 0, 10, 10]])
    dets = _dt([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5, 0.5])
    status, matched = match_image(gt, dets)
    assert status.tolist() == [1, 1, 0] and matched.tolist() == [0, 1]
    # IoU exactly 0.5 is not a match
    status, _ = match_image(_gt([[0, 0, 2, 2]]), _dt([[0, 0, 2, 1]], [1.0]))
    assert status.tolist() == [0]


def test_ap_and_mr_by_hand_over_two_images() -> None:
    gt = {"a": _gt([[0, 0, 10, 10], [20, 0, 30, 10]]), "b": _gt([[0, 0, 10, 10], [40, 40, 50, 50]], [False, True])}
    dets = {"a": _dt([[0, 0, 10, 10], [100, 100, 110, 110]], [0.9, 0.6]),
            "b": _dt([[0, 0, 10, 10], [41, 41, 49, 49], [60, 60, 70, 70]], [0.8, 0.99, 0.3])}
    r = crowd_metrics(gt, dets)
    # sorted (the ignored 0.99 is dropped): 0.9 TP, 0.8 TP, 0.6 FP, 0.3 FP with 3 ground-truth boxes
    # recall 1/3, 2/3, 2/3, 2/3; precision 1, 1, 2/3, 1/2
    assert r.ap == pytest.approx((2 / 3 - 1 / 3) * (1 + 1) / 2)
    assert r.recall == pytest.approx(2 / 3)
    # FPPI over 2 images: 0, 0, 0.5, 1.0; miss 2/3, 1/3, 1/3, 1/3. References <= 0.5 take index 2, 0.56 and 1.0
    # index 3: all miss rates are 1/3.
    assert r.mr == pytest.approx(1 / 3)
    assert (r.images, r.detections) == (2, 5)


def test_mr_geometric_mean() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0])  # 10 gt, 1 image: FPPI 0, 1, 1, 2, 3, 4
    # refs 0.01 .. 0.56 -> first point with FPPI >= ref is index 1 (miss 0.9); ref 1.0 -> index 1 as well
    assert log_average_miss_rate(labels, 10, 1) == pytest.approx(0.9)
    labels = np.array([1, 1, 0, 0])  # 2 images: FPPI 0, 0, 0.5, 1 ; miss 0.5, 0, 0, 0 -> a zero -> MR 0
    assert log_average_miss_rate(labels, 2, 2) == 0.0
    # 5 refs (0.01 .. 0.1) reach FPPI 0.1 at index 1 (miss 0.8), 4 refs at index 2 (miss 0.6)
    labels = np.array([1, 0, 1, 0, 0])
    assert log_average_miss_rate(labels, 5, 10) == pytest.approx(math.exp((5 * math.log(0.8) + 4 * math.log(0.6)) / 9))
    assert log_average_miss_rate(np.array([], int), 5, 1) == 1.0


def test_ap_edge_cases() -> None:
    assert average_precision(np.array([], int), 3) == 0.0
    assert average_precision(np.array([1]), 1) == 0.0  # a single point has no area
    # points (0, 0), (0.5, 0.5), (1, 2/3)
    assert average_precision(np.array([0, 1, 1]), 2) == pytest.approx(0.5 * 0.5 / 2 + 0.5 * (0.5 + 2 / 3) / 2)


def _brute_force_k(dt_boxes, gt_boxes) -> int:
    from odam.metrics.crowd import iou_matrix

    iou = iou_matrix(dt_boxes, gt_boxes)
    best = (0.0, 0)
    d, g = iou.shape
    for perm in itertools.permutations(range(max(d, g)), d if d <= g else g):
        pairs = list(zip(range(d), perm, strict=False)) if d <= g else list(zip(perm, range(g), strict=False))
        good = [(i, j) for i, j in pairs if i < d and j < g and iou[i, j] > 0.5]
        best = max(best, (sum(iou[i, j] for i, j in good), len(good)))
    return best[1]


def test_ji_uses_the_maximum_weight_matching() -> None:
    gt = _gt([[0, 0, 10, 10], [3, 0, 13, 10]])
    # IoU(det0, gt0) = 0.67, IoU(det0, gt1) = 0.82, IoU(det1, gt0) = 0.82, IoU(det1, gt1) = 0.43: both match.
    dets = _dt([[2, 0, 12, 10], [-1, 0, 9, 10]], [0.9, 0.8])
    assert jaccard_index(gt, dets, 0.0) == (2, 2, 2)
    rng = np.random.default_rng(0)
    for _ in range(30):
        g = rng.integers(0, 4)
        d = rng.integers(0, 4)
        gb = np.concatenate([xy := rng.uniform(0, 20, (g, 2)), xy + rng.uniform(8, 12, (g, 2))], 1)
        db = np.concatenate([xy := rng.uniform(0, 20, (d, 2)), xy + rng.uniform(8, 12, (d, 2))], 1)
        k, m, n = jaccard_index(_gt(gb), _dt(db, np.ones(d)), 0.0)
        assert (m, n) == (g, d)
        assert k == _brute_force_k(db.reshape(-1, 4), gb.reshape(-1, 4))


def test_ji_with_ignore_regions_and_thresholds() -> None:
    gt = _gt([[0, 0, 10, 10], [30, 0, 40, 10], [29, 0, 50, 10]], ignore=[False, False, True])
    dets = _dt([[0, 0, 10, 10], [100, 0, 110, 10], [42, 0, 50, 10]], [0.95, 0.45, 0.15])
    # t = 0: k = 1 (det0); det2 is unmatched and inside the ignore region -> n = 2; gt1 unmatched and inside the
    # ignore region -> m = 1
    assert jaccard_index(gt, dets, 0.0) == (1, 1, 2)
    assert jaccard_index(gt, dets, 0.5) == (1, 1, 1)
    assert jaccard_index(gt, dets, 0.95) == (0, 1, 0)  # scores must be > t
    r = crowd_metrics({"x": gt, "y": _gt([])}, {"x": dets})  # image y has neither: not counted
    assert r.ji == pytest.approx(1.0) and r.ji_threshold == 0.5


def test_crowd_and_sparse_recall() -> None:
    # gt0/gt1 overlap with IoU exactly 0.5 (crowd); gt2 alone (sparse); gt3 ignored overlaps gt2 (does not count)
    gt = _gt([[0, 0, 2, 2], [0, 0, 2, 1], [10, 10, 20, 20], [10, 10, 20, 20]], ignore=[False, False, False, True])
    assert crowd_flags(gt).tolist() == [True, True, False, False]
    dets = _dt([[0, 0, 2, 2], [10, 10, 20, 20], [0, 0, 2, 1]], [0.9, 0.8, 0.05])
    r = crowd_metrics({"a": gt}, {"a": dets})
    assert (r.gt_total, r.gt_crowd, r.gt_sparse) == (3, 2, 1)
    assert r.recall == 1.0  # every detection
    assert r.ji_threshold == 0.0 and r.ji == 1.0  # the 0.05 detection is needed: best at t = 0
    assert (r.recall_crowd, r.recall_sparse, r.recall_total) == (1.0, 1.0, 1.0)
    r = crowd_metrics({"a": gt}, {"a": _dt([[0, 0, 2, 2], [10, 10, 20, 20], [0, 0, 2, 1], [50, 50, 60, 60],
                                            [70, 70, 80, 80]], [0.9, 0.8, 0.05, 0.06, 0.07])})
    # at t = 0 JI = 3/5; at t = 0.1 JI = 2/3: best. Then only the 0.9 and 0.8 detections count for recall.
    assert r.ji_threshold == 0.1 and r.ji == pytest.approx(2 / 3)
    assert (r.matched_crowd, r.matched_sparse) == (1, 1) and r.recall_crowd == 0.5


def test_empty_images() -> None:
    r = crowd_metrics({"a": _gt([])}, {})
    assert (r.ap, r.recall, r.mr, r.ji) == (0.0, 0.0, 1.0, 0.0)
    assert math.isnan(r.recall_crowd)
    r = crowd_metrics({"a": _gt([[0, 0, 10, 10]])}, {"a": _dt([], [])})
    assert (r.ap, r.recall, r.mr, r.ji) == (0.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="no ground truth"):
        crowd_metrics({"a": _gt([])}, {"b": _dt([], [])})


def test_files_round_trip_and_errors(tmp_path) -> None:
    odgt = tmp_path / "gt.odgt"
    lines = [{"ID": "a", "width": 100, "height": 50, "gtboxes": [
                {"tag": "person", "fbox": [-5, 0, 20, 60], "extra": {"ignore": 0}},
                {"tag": "person", "fbox": [40, 0, 10, 20], "extra": {"ignore": 1}},
                {"tag": "mask", "fbox": [70, 0, 10, 10]}]},
             {"ID": "b", "gtboxes": []}]
    odgt.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    gt = read_ground_truth(odgt)
    assert gt["a"].boxes.tolist() == [[0, 0, 15, 50], [40, 0, 50, 20], [70, 0, 80, 10]]
    assert gt["a"].ignore.tolist() == [False, True, True]
    det_file = tmp_path / "dets.jsonl"
    write_detections(det_file, [("a", np.array([[0.0, 0, 15, 50]]), np.array([0.7])), ("b", np.zeros((0, 4)), [])])
    dets = read_detections(det_file)
    assert dets["a"].boxes.tolist() == [[0, 0, 15, 50]] and dets["b"].boxes.shape == (0, 4)
    r = evaluate(odgt, det_file)
    assert r.recall == 1.0 and r.gt_total == 1
    bad = tmp_path / "bad.odgt"
    bad.write_text('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2]}]}\n')
    with pytest.raises(ValueError, match=r"bad.odgt: line 1: gtboxes\[0\]: each gtbox needs 'fbox'"):
        read_ground_truth(bad)
    bad.write_text('{"ID": "a"\n')
    with pytest.raises(ValueError, match="line 1: invalid JSON"):
        read_ground_truth(bad)
    bad.write_text('{"ID": "a", "dtboxes": [{"box": [0, 0, 1, 1]}]}\n')
    with pytest.raises(ValueError, match="needs 'box'"):
        read_detections(bad)


DETECTION_ERRORS = [  # (one JSON line, problem): the reader's own ValueError naming the file and line (issue 15)
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, 1, 1], "score": NaN}]}', r"dtboxes\[0\]: score must be a finite"),
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, 1, 1], "score": Infinity}]}', "score must be a finite number"),
    ('{"ID": "a", "dtboxes": [{"box": [0, NaN, 1, 1], "score": 1}]}', "does not fit float32 .or is not finite"),
    ('{"ID": "a", "dtboxes": [{"box": [1e300, 0, 1, 1], "score": 1}]}', r"box \[1e\+300, 0, 1, 1\] does not fit"),
    ('{"ID": "a", "dtboxes": [{"box": [3e38, 0, 3e38, 1], "score": 1}]}', "does not fit float32"),  # x + w
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, 1' + "0" * 400 + ', 1], "score": 1}]}', "does not fit float32"),
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, -1, 1], "score": 1}]}', "has negative size"),
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, true, 1], "score": 1}]}', "must be 4 numbers"),
    ('{"ID": "a", "dtboxes": [{"box": [null, 0, 1, 1], "score": 0}]}', "must be 4 numbers"),  # fuzz: TypeError
    ('{"ID": "a", "dtboxes": [{"box": [0, 0, 1, 1], "score": true}]}', "needs 'box'"),
    ('{"ID": "a", "dtboxes": []}\n' + "[" * 100_000, "line 2: JSON nested too deeply"),
]


GROUND_TRUTH_ERRORS = [  # (one JSON line, problem)
    ('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [0, NaN, 1, 1]}]}', r"gtboxes\[0\]: fbox .* not finite"),
    ('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [0, 1e300, 1, 1]}]}', "does not fit float32"),
    ('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [0, 0, 1, -1]}]}', "has negative size"),
    ('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [0, 0, 1, true]}]}', "must be 4 numbers"),
    ('{"ID": "a", "width": NaN, "height": 5, "gtboxes": []}', "width and height must both be positive numbers"),
    ('{"ID": "a", "width": true, "height": 5, "gtboxes": []}', "width and height must both be positive numbers"),
    ('{"ID": "a", "width": 5, "gtboxes": []}', "width and height must both be positive numbers"),
    ('{"ID": "a", "gtboxes": [{"tag": [], "fbox": [0, 0, 1, 1], "extra": {"ignore": {}}}]}\n{"ID": ' + "[" * 100_000,
     "line 2: JSON nested too deeply"),
]


READER_ERRORS = ([(read_detections, "dets.jsonl", text, problem) for text, problem in DETECTION_ERRORS]
                 + [(read_ground_truth, "gt.odgt", text, problem) for text, problem in GROUND_TRUTH_ERRORS])


@pytest.mark.parametrize(("reader", "name", "text", "problem"), READER_ERRORS,
                         ids=[f"{n.split('.')[0]}-{p[:30]}" for _, n, _, p in READER_ERRORS])
def test_reader_errors(tmp_path, reader, name: str, text: str, problem: str) -> None:  # noqa: ANN001
    """Each bad line of a CrowdDet detections or ground-truth file is the reader's one-line error naming it."""
    path = tmp_path / name
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as info:
        reader(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: line ")
    assert re.search(problem, message), message
