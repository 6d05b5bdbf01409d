"""odam.nms.Suppressed (``nms=`` of load_detector and wrap_detector): the four methods replacing a detector's own
NMS, frozen GroupNorm maps and FeatureNMS embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import build

import odam
from odam.detectors.base import borrowed
from odam.nms import Suppressed, Suppression, feature_nms, heatmap_vectors, nms, odam_nms, soft_nms


@pytest.fixture(scope="module")
def crowd_image() -> torch.Tensor:
    from odam.cli import DEMO_SCENE

    return odam.load_image(DEMO_SCENE)


def _candidates(detector: Suppressed, image: torch.Tensor):
    trace = detector.trace(image, candidates=True, max_candidates=detector.nms.max_candidates)
    return trace, trace.detections


@pytest.mark.parametrize("name", ["synthcrowd-fcos", "synthcrowd-fasterrcnn"])
def test_each_method_is_the_op_on_the_candidates(name: str, crowd_image: torch.Tensor) -> None:
    cap = 300
    base = odam.load_detector(name, nms=Suppression("nms", max_candidates=cap))
    trace, cands = _candidates(base, crowd_image)
    assert len(cands) == cap or len(cands) < cap and bool((cands.scores > base.score_threshold).all())
    assert torch.all(cands.scores[:-1] >= cands.scores[1:])  # by descending score
    limit = base.max_detections
    # classical NMS
    got = odam.load_detector(name, nms=Suppression("nms", max_candidates=cap)).detect(crowd_image)
    keep = nms(cands.boxes, cands.scores, 0.5)[:limit]
    torch.testing.assert_close(got.boxes, cands.boxes[keep])
    # Soft-NMS: the decayed scores are the detections' scores
    got = odam.load_detector(name, nms=Suppression("soft-nms", max_candidates=cap)).detect(crowd_image)
    keep, decayed = soft_nms(cands.boxes, cands.scores, 0.5, 0.05, "gaussian", 0.5)
    torch.testing.assert_close(got.boxes, cands.boxes[keep[:limit]])
    torch.testing.assert_close(got.scores, decayed[:limit])
    assert bool((got.scores < cands.scores[keep[:limit]]).any())
    # Odam-NMS: with ODAM's own maps of the candidates
    explanation = odam.ODAM(base, frozen_norm=True).explain(crowd_image, detections=cands)
    vectors = heatmap_vectors(explanation.maps[:, 0], 50)
    got = odam.load_detector(name, nms=Suppression("odam-nms", max_candidates=cap)).detect(crowd_image)
    keep = odam_nms(cands.boxes, cands.scores, vectors, 0.5, 0.2, 0.8)[:limit]
    torch.testing.assert_close(got.boxes, cands.boxes[keep])
    assert got.has_provenance


def test_default_is_the_models_own_nms(crowd_image: torch.Tensor) -> None:
    model = odam.load_detector("synthcrowd-fcos").model
    with torch.no_grad():
        expected = model([crowd_image])[0]
    got = odam.wrap_detector(model).detect(crowd_image)
    torch.testing.assert_close(got.boxes, expected["boxes"])
    assert not isinstance(odam.wrap_detector(model), Suppressed)


def test_odam_nms_keeps_a_borrowed_model_as_it_was(crowd_image: torch.Tensor) -> None:
    model = odam.load_detector("synthcrowd-fcos").model.train()
    model.head.requires_grad_(False)
    handle = model.backbone.register_forward_hook(lambda *a: None)
    detector = odam.wrap_detector(model, nms="odam")
    detector.detect(crowd_image)
    assert model.training and not any(p.requires_grad for p in model.head.parameters())
    assert list(model.backbone._forward_hooks) == [handle.id]
    assert not any("forward" in vars(m) for m in model.modules())  # no frozen-GroupNorm patch left
    handle.remove()


def test_wrap_detector_wraps_an_adapter_to_change_its_nms() -> None:
    detector = odam.load_detector("synthcrowd-fcos")
    other = odam.wrap_detector(detector, nms="soft")
    assert other.nms.method == "soft-nms" and other.detector is detector and other.model is detector.model
    again = odam.wrap_detector(other, nms="nms")  # replaced, not stacked
    assert again.nms.method == "nms" and again.detector is detector
    with pytest.raises(ValueError, match="unknown NMS method 'box'"):
        odam.load_detector("synthcrowd-fcos", nms="box")


def test_feature_nms_needs_an_embedding_head(crowd_image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="embedding head"):
        odam.load_detector("synthcrowd-fcos", nms="feature-nms").detect(crowd_image)


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "fasterrcnn"])
def test_embeddings_are_the_heads_vectors_at_each_detection(arch: str) -> None:
    torch.manual_seed(0)
    model = odam.create_model(f"odam:{arch}", num_classes=2, min_size=96, max_size=96, embedding_dim=8,
                              score_thresh=0.0)
    detector = odam.wrap_detector(model, nms=Suppression("feature-nms", max_candidates=40))
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(2))
    trace, cands = _candidates(detector, image)
    emb = detector.embeddings(trace, cands)
    assert emb.shape == (len(cands), 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(cands)))
    if arch == "fasterrcnn":
        rh = model.roi_heads
        props = trace.state["proposals"][cands.indices]
        with torch.no_grad():
            expected = model.embedding_head(rh.box_head(rh.box_roi_pool(trace.state["features"], [props],
                                                                        trace.state["image_sizes"])))
    else:
        # the training loss's flattening (odam.train.embedding) picks the same vectors at the anchor indices
        head, n_anchors = model.embedding_head, model.head.classification_head.num_anchors
        with torch.no_grad():
            levels = [head(f).permute(0, 2, 3, 1).repeat_interleave(n_anchors, 2).flatten(1, 2)[0]
                      for f in trace.state["features"]]
        expected = torch.stack([levels[lv][i] for lv, i in zip(cands.levels.tolist(), cands.indices.tolist(),
                                                                 strict=True)])
    torch.testing.assert_close(emb, expected)
    got = detector.detect(image)
    keep = []  # class by class, then by score
    for label in cands.labels.unique():
        idx = torch.where(cands.labels == label)[0]
        keep += idx[feature_nms(cands.boxes[idx], cands.scores[idx], emb[idx], 0.1, 0.9, 1.0)].tolist()
    keep = sorted(keep, key=lambda i: -float(cands.scores[i]))[: detector.max_detections]
    torch.testing.assert_close(got.boxes, cands.boxes[keep])


def test_frozen_norm_keeps_scores_and_approximates_fcos_maps(crowd_image: torch.Tensor, device: torch.device) -> None:
    detector = odam.load_detector("synthcrowd-fcos", nms=Suppression("nms", max_candidates=60))
    detector.model.to(device)
    trace, cands = _candidates(detector, crowd_image)
    with borrowed(detector.model), torch.enable_grad():
        detector.model.eval()
        y_exact = trace.graph(cands)[0]
        y_frozen, groups, _ = trace.graph(cands, frozen_norm=True)
    torch.testing.assert_close(y_frozen, y_exact, rtol=1e-4, atol=1e-5)  # the same attributes...
    assert all(g.rowwise for g in groups)  # ...from independent crops
    exact = odam.ODAM(detector).explain(crowd_image, detections=cands).maps[:, 0].flatten(1)
    frozen = odam.ODAM(detector, frozen_norm=True).explain(crowd_image, detections=cands).maps[:, 0].flatten(1)
    cos = F.cosine_similarity(exact, frozen, dim=1)
    assert cos.median() > 0.97 and cos.min() > 0.5
    assert not torch.allclose(exact, frozen)  # the dropped statistics path is not nothing


def test_frozen_norm_changes_nothing_without_groupnorm(image: torch.Tensor, device: torch.device) -> None:
    model = build("retinanet_resnet50_fpn", detections=3).to(device)
    exact = odam.ODAM(model).explain(image).maps
    frozen = odam.ODAM(model, frozen_norm=True).explain(image).maps
    torch.testing.assert_close(frozen, exact)


def test_odam_nms_restores_the_model_after_an_error(crowd_image: torch.Tensor) -> None:
    model = odam.load_detector("synthcrowd-fcos").model.train()
    model.head.requires_grad_(False)
    norm = model.head.regression_head.conv[1]

    def failing(module, args):  # fail while the frozen-GroupNorm patch is installed
        if "forward" in vars(module):
            raise RuntimeError("boom")

    handle = norm.register_forward_pre_hook(failing)
    with pytest.raises(RuntimeError, match="boom"):
        odam.wrap_detector(model, nms="odam").detect(crowd_image)
    assert model.training and not any(p.requires_grad for p in model.head.parameters())
    assert not any("forward" in vars(m) for m in model.modules())
    assert list(norm._forward_pre_hooks) == [handle.id]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 1
    handle.remove()


def test_odam_nms_decides_on_the_default_maps_whatever_layer_is_explained(crowd_image: torch.Tensor) -> None:
    detector = odam.load_detector("synthcrowd-fcos", nms=Suppression("odam-nms", max_candidates=100))
    default = detector.detect(crowd_image)
    other = detector.trace(crowd_image, layer="backbone.body.c4").detections
    torch.testing.assert_close(other.boxes, default.boxes)
    explanation = odam.ODAM(detector, layer="backbone.body.c4").explain(crowd_image, detections=default[:2])
    assert explanation.maps.shape[0] == 2
