"""odam.nms.decide and Suppressed.decisions: the record of every suppression, against each method's own choices
and a slow greedy reference that names, for each suppressed candidate, the kept one that removed it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import odam
from odam.heatmaps import correlation
from odam.nms import RULES, Suppressed, Suppression, batched_odam_nms, decide, feature_nms, nms, odam_nms, soft_nms
from odam.structures import Detections


def _crowd(seed: int, n: int, classes: int = 1, ties: bool = False) -> tuple[Detections, torch.Tensor, torch.Tensor]:
    """Candidates clustered on a few overlapping objects, with map vectors and embeddings like their object's."""
    g = torch.Generator().manual_seed(seed)
    objects = 6
    centres = torch.rand(objects, 2, generator=g) * 60
    which = torch.randint(objects, (n,), generator=g)
    xy = centres[which] + torch.randn(n, 2, generator=g) * 4
    wh = 20 + torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + wh], 1).round()  # integer corners: many exact IoU values
    vectors = torch.rand(objects, 48, generator=g)[which] + torch.rand(n, 48, generator=g) * 2 * torch.rand(n, 1,
                                                                                                             generator=g)
    embeddings = torch.nn.functional.normalize(torch.randn(objects, 8, generator=g)[which]
                                               + 0.6 * torch.randn(n, 8, generator=g), dim=1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).round() / 4
    labels = torch.randint(classes, (n,), generator=g)
    return Detections(boxes, scores, labels), vectors, embeddings


def _fires(method: Suppression, iou: float, evidence: float) -> list[str]:
    """The rules of ``method`` that hold for a pair with this IoU and correlation (or embedding distance)."""
    rules = RULES[method.method]
    if method.method == "nms":
        return [rules[0]] if iou > method.iou_threshold else []
    if method.method == "odam-nms":
        return [r for r, ok in zip(rules, (iou >= method.iou_threshold and evidence > method.low,
                                           iou < method.iou_threshold and evidence > method.high), strict=True) if ok]
    return [r for r, ok in zip(rules, (iou > method.high,
                                       method.low <= iou <= method.high and evidence <= method.distance), strict=True)
            if ok]


def _slow_greedy(cands: Detections, method: Suppression, vectors: torch.Tensor, embeddings: torch.Tensor
                 ) -> dict[int, int]:
    """For each candidate in one pass of the greedy method, class by class: the kept candidate that removed it
    (-1 when kept). Candidates are visited by descending score, ties by index; each is compared with the kept
    ones in the order they were kept."""
    iou = box_iou(cands.boxes, cands.boxes).tolist()
    corr = correlation(vectors, method.centred).tolist()
    dist = torch.cdist(embeddings, embeddings).tolist()
    evidence = corr if method.method == "odam-nms" else dist
    order = sorted(range(len(cands)), key=lambda i: (-float(cands.scores[i]), i))
    fate: dict[int, int] = {}
    kept: dict[int, list[int]] = {}
    for i in order:
        label = int(cands.labels[i])
        by = next((k for k in kept.get(label, []) if _fires(method, iou[i][k], evidence[i][k])), -1)
        fate[i] = by
        if by < 0:
            kept.setdefault(label, []).append(i)
    return fate


METHODS = [Suppression("nms"), Suppression("nms", iou_threshold=0.3), Suppression("odam-nms"),
           Suppression("odam-nms", iou_threshold=0.4, low=0.0, high=0.6), Suppression("odam-nms", centred=False),
           Suppression("feature-nms"), Suppression("feature-nms", low=0.2, high=0.7, distance=0.8)]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.method}-{m.iou_threshold}-{m.low}-{m.high}")
@pytest.mark.parametrize("seed", range(6))
def test_the_record_names_the_kept_candidate_that_fired_a_rule(method: Suppression, seed: int) -> None:
    n = [1, 2, 40, 120, 250, 90][seed]
    cands, vectors, embeddings = _crowd(seed, n, classes=1 + seed % 3, ties=bool(seed % 2))
    d = decide(cands, method, vectors=vectors, embeddings=embeddings)
    # the kept set is the method's own, class by class
    own = []
    for label in cands.labels.unique():
        idx = torch.where(cands.labels == label)[0]
        b, s = cands.boxes[idx], cands.scores[idx]
        keep = (nms(b, s, method.iou_threshold) if method.method == "nms" else
                odam_nms(b, s, vectors[idx], method.iou_threshold, method.low, method.high, centred=method.centred)
                if method.method == "odam-nms" else
                feature_nms(b, s, embeddings[idx], method.low, method.high, method.distance))
        own += idx[keep].tolist()
    assert sorted(d.keep.tolist()) == sorted(own)
    if method.method == "odam-nms":
        batched = batched_odam_nms(cands.boxes, cands.scores, vectors, cands.labels, method.iou_threshold,
                                   method.low, method.high, centred=method.centred)
        assert sorted(batched.tolist()) == sorted(own)
    assert torch.equal(d.scores, cands.scores)  # greedy methods keep the scores
    assert torch.all(d.scores[d.keep][:-1] >= d.scores[d.keep][1:])
    # each suppressed candidate: the kept candidate of the slow greedy pass, and a rule that really fires
    fate = _slow_greedy(cands, method, vectors, embeddings)
    iou = box_iou(cands.boxes, cands.boxes)
    corr = correlation(vectors, method.centred)
    dist = torch.cdist(embeddings, embeddings)
    kept = set(d.keep.tolist())
    for i in range(n):
        if i in kept:
            assert d.rules[i] == "kept" and int(d.suppressor[i]) == -1 and fate[i] == -1
            continue
        k = int(d.suppressor[i])
        assert k == fate[i] and k in kept
        assert int(cands.labels[k]) == int(cands.labels[i])
        assert (float(cands.scores[k]), -k) > (float(cands.scores[i]), -i)  # visited before i
        assert math.isclose(float(d.iou[i]), float(iou[i, k]), abs_tol=1e-6)
        evidence = float(corr[i, k] if method.method == "odam-nms" else dist[i, k])
        if method.method == "nms":
            assert math.isnan(float(d.evidence[i]))
        else:
            assert math.isclose(float(d.evidence[i]), evidence, abs_tol=1e-5)
        assert d.rules[i] in _fires(method, float(iou[i, k]), evidence)


@pytest.mark.parametrize("soft_method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_record_keeps_the_decayed_scores_and_who_dropped_each(soft_method: str, seed: int) -> None:
    cands, _, _ = _crowd(seed, [3, 40, 90, 150][seed], classes=1 + seed % 2)
    method = Suppression("soft-nms", soft_method=soft_method, soft_threshold=0.2, iou_threshold=0.3)
    d = decide(cands, method)
    own_keep, own_scores = [], []
    for label in cands.labels.unique():
        idx = torch.where(cands.labels == label)[0]
        keep, decayed = soft_nms(cands.boxes[idx], cands.scores[idx], method.sigma, method.soft_threshold,
                                 soft_method, method.iou_threshold)
        own_keep += idx[keep].tolist()
        own_scores += decayed.tolist()
    expected = dict(zip(own_keep, own_scores, strict=True))
    assert sorted(d.keep.tolist()) == sorted(expected)
    torch.testing.assert_close(d.scores[d.keep], torch.tensor([expected[i] for i in d.keep.tolist()]))
    kept = set(d.keep.tolist())
    iou = box_iou(cands.boxes, cands.boxes)
    for i in range(len(cands)):
        factor = float(d.evidence[i])
        assert 0 < factor <= 1
        if i in kept:
            assert d.rules[i] == "kept"
            assert math.isclose(factor, expected[i] / float(cands.scores[i]), rel_tol=1e-5)
        elif float(cands.scores[i]) < method.soft_threshold:
            assert d.rules[i] == "score<T_score" and int(d.suppressor[i]) == -1
        else:
            k = int(d.suppressor[i])
            assert d.rules[i] == "decayed score<T_score" and k in kept
            assert int(cands.labels[k]) == int(cands.labels[i]) and iou[i, k] > 0
            assert math.isclose(float(d.iou[i]), float(iou[i, k]), abs_tol=1e-6)
            # the decay by the box that dropped it took its score from above the threshold to below it
            weight = (math.exp(-float(iou[i, k]) ** 2 / method.sigma) if soft_method == "gaussian"
                      else (1 - float(iou[i, k]) if iou[i, k] > method.iou_threshold else 1.0))
            final = float(d.scores[i])
            assert math.isclose(final, factor * float(cands.scores[i]), rel_tol=1e-5)
            assert final < method.soft_threshold <= final / weight * (1 + 1e-5)


def test_the_cap_marks_what_max_detections_cuts() -> None:
    cands, vectors, _ = _crowd(7, 200, classes=2)
    whole = decide(cands, "odam", vectors=vectors)
    capped = decide(cands, "odam", vectors=vectors, max_detections=5)
    assert torch.equal(capped.keep, whole.keep[:5])
    assert sorted(i for i, r in enumerate(capped.rules) if r == "capped") == sorted(whole.keep[5:].tolist())
    assert "capped=" in repr(capped) and len(repr(capped).splitlines()) == 1


@pytest.mark.parametrize("method", ["nms", "soft-nms", "feature-nms", "odam-nms"])
def test_no_candidates_no_decisions(method: str) -> None:
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    d = decide(empty, method)
    assert len(d) == 0 and d.keep.tolist() == [] and d.rules == ()
    detector = odam.load_detector("synthcrowd-fcos", nms=method)
    detector.model.score_thresh = 1.1  # nothing scores above it
    image = torch.rand(3, 64, 96)
    assert len(detector.detect(image)) == 0 and len(detector.decisions(image)) == 0


def test_odam_nms_on_the_default_layer_by_name_runs_the_model_once() -> None:
    detector = odam.load_detector("synthcrowd-fcos", nms=Suppression("odam-nms", max_candidates=20))
    calls = []
    handle = detector.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    image = torch.rand(3, 64, 96)
    try:
        by_name = detector.trace(image, layer="fpn").detections
        assert len(calls) == 1
        other = detector.trace(image, layer="backbone.body.c4").detections  # decides on the default maps
        assert len(calls) == 3
    finally:
        handle.remove()
    assert torch.equal(by_name.boxes, detector.detect(image).boxes) and torch.equal(other.boxes, by_name.boxes)


def test_bad_inputs_say_what_is_missing() -> None:
    cands, vectors, _ = _crowd(0, 5)
    with pytest.raises(ValueError, match=r"odam-nms needs vectors of shape \[5, D\], got None"):
        decide(cands, "odam")
    with pytest.raises(ValueError, match=r"feature-nms needs embeddings of shape \[5, E\], got \(4, 48\)"):
        decide(cands, "feature", embeddings=vectors[:4])
    with pytest.raises(ValueError, match="unknown NMS method 'box'"):
        decide(cands, "box")


@pytest.mark.parametrize("name", ["synthcrowd-fcos", "synthcrowd-fasterrcnn"])
def test_a_detectors_decisions_are_what_it_detects(name: str) -> None:
    from odam.cli import DEMO_SCENE

    image = odam.load_image(DEMO_SCENE)
    detector = odam.load_detector(name, nms=Suppression("odam-nms", max_candidates=120))
    d = detector.decisions(image)
    got = detector.detect(image)
    assert torch.equal(d.detections().boxes, got.boxes) and torch.equal(d.detections().scores, got.scores)
    assert len(d) == len(d.candidates) <= 120 and d.kept.sum() == len(got)
    # the vectors behind the decisions are ODAM's own (frozen GroupNorm, as the suppression is set)
    trace = detector.trace(image, candidates=True, max_candidates=120)
    vectors = odam.ODAM(detector, frozen_norm=True).vectors(trace, trace.detections)
    again = decide(trace.detections, detector.nms, vectors=vectors, max_detections=detector.max_detections)
    assert torch.equal(again.keep, d.keep) and again.rules == d.rules
    suppressed = [i for i, r in enumerate(d.rules) if r in RULES["odam-nms"]]
    assert suppressed and all(d.kept[int(d.suppressor[i])] for i in suppressed)


def test_suppressed_leaves_the_adapter_alone_and_knows_nothing_new() -> None:
    detector = odam.load_detector("synthcrowd-fcos")
    wrapped = Suppressed(detector, "soft", sigma=0.3)
    assert wrapped.nms == Suppression("soft-nms", sigma=0.3) and wrapped.detector is detector
    assert wrapped.max_detections == detector.max_detections == detector.model.detections_per_img
    assert not hasattr(detector, "nms")
    assert np.isclose(wrapped.score_threshold, detector.score_threshold)
