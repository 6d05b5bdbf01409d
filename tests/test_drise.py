"""D-RISE against a slow per-mask reference, its masks, determinism and a hand-set detector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import build, handset_fcos
from torchvision.ops import box_iou

import odam


def _reference(drise: odam.DRISE, image: torch.Tensor, dets: odam.Detections) -> torch.Tensor:
    """D-RISE written out mask by mask, candidate by candidate: ``Tensor[T, H, W]``."""
    adapter = drise.detector
    H, W = image.shape[-2:]
    clean = adapter.candidates(image[None], drise.max_candidates)
    refs = []
    for t in range(len(dets)):
        label = int(dets.labels[t])
        ious = box_iou(dets.boxes[t:t + 1], clean.boxes[0, :, label])[0]
        refs.append(clean.probs[0, int(ious.argmax())])
    grids, shifts = drise.draws(drise.num_masks, torch.Generator().manual_seed(drise.seed))
    all_masks = drise.masks(grids, shifts, (H, W))
    total = torch.zeros(len(dets), H, W)
    for mask in all_masks:
        found = adapter.candidates((image * mask)[None], drise.max_candidates)
        for t in range(len(dets)):
            label = int(dets.labels[t])
            best = 0.0
            for m in range(found.boxes.shape[1]):
                # Two-stage: the best class probability, background excluded.
                two_stage = hasattr(adapter.model, "roi_heads")
                best_class = found.probs[0, m, 1:].max() if two_stage else found.scores[0, m].max()
                if float(best_class) < adapter.score_threshold:
                    continue
                iou = float(box_iou(dets.boxes[t:t + 1], found.boxes[0, m, label][None])[0, 0])
                cos = float(F.cosine_similarity(found.probs[0, m], refs[t], dim=0))
                obj = 1.0 if found.objectness is None else float(found.objectness[0, m])
                best = max(best, iou * cos * obj)
            total[t] += best * mask
    return total / drise.num_masks


def _threshold_in_a_gap(model: torch.nn.Module, image: torch.Tensor, clean: torch.Tensor) -> float:
    """A threshold between the 20% and 80% quantiles of the ``clean`` candidates' best-class scores, in the widest
    gap between the scores of the clean and the 7 masked images' top-40 candidates (seed 5, as the test draws them).

    D-RISE scores the masked images three at a time, the reference one by one: they round ~1e-7 apart, and with
    the plain median a candidate sat 1.9e-6 from the threshold (RetinaNet, scores near 0.02) and the 40th and
    41st candidates 7e-7 apart. With a gap of at least 1e-3 of the threshold around it, and every image's 40th
    candidate below it, both keep the same candidates.
    """
    adapter = odam.wrap_detector(model)
    drise = odam.DRISE(model, num_masks=7, seed=5, progress=False, max_candidates=40)
    masks = drise.masks(*drise.draws(7, torch.Generator().manual_seed(5)), tuple(image.shape[-2:]))
    found = adapter.candidates(image * masks[:, None], 40)
    per_image = [clean] + [found.scores[i].amax(-1)[found.valid[i]] for i in range(len(masks))]
    pooled = torch.cat(per_image).sort().values
    near = pooled[(pooled >= clean.quantile(0.2)) & (pooled <= clean.quantile(0.8))]
    k = int((near[1:] - near[:-1]).argmax())
    threshold, gap = float(near[k:k + 2].mean()), float(near[k + 1] - near[k])
    assert gap > 1e-3 * threshold, f"no gap in the candidates' scores near their median: widest {gap:.2g}"
    assert all(bool((s < threshold).any()) for s in per_image), "an image's 40 candidates all pass the threshold"
    return threshold


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
def test_matches_slow_reference(name: str) -> None:
    model = build(name, detections=3)
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if name.startswith("fcos"):  # random FCOS weights predict empty boxes, whose IoU is always 0
            model.head.regression_head.bbox_reg.bias.fill_(1.0)
        if name.startswith("faster"):  # make background the likeliest class of some proposals
            model.roi_heads.box_predictor.cls_score.bias[0] += 3.0
    # A threshold that about half the candidates miss, so that it is exercised.
    clean = odam.wrap_detector(model).candidates(image[None], 40)
    threshold = _threshold_in_a_gap(model, image, clean.scores.amax(-1)[clean.valid])
    if name.startswith("faster"):  # some proposals are background above the threshold: they must not count
        assert ((clean.probs[..., 0] >= threshold) & (clean.scores.amax(-1) < threshold) & clean.valid).any()
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = threshold
    else:
        model.score_thresh = threshold
    drise = odam.DRISE(model, num_masks=7, batch_size=3, seed=5, progress=False, max_candidates=40)
    got = drise.explain(image)
    want = _reference(drise, image, got.detections)
    assert want.abs().max() > 0
    torch.testing.assert_close(got.maps[:, 0], want, atol=1e-5, rtol=1e-4)


def test_seeded_and_deterministic() -> None:
    model = build("retinanet_resnet50_fpn", detections=2)
    image = torch.rand(3, 64, 80)
    a = odam.DRISE(model, num_masks=7, batch_size=4, seed=1, progress=False).explain(image).maps
    b = odam.DRISE(model, num_masks=7, batch_size=4, seed=1, progress=False).explain(image).maps
    c = odam.DRISE(model, num_masks=7, batch_size=4, seed=2, progress=False).explain(image).maps
    d = odam.DRISE(model, num_masks=7, batch_size=3, seed=1, progress=False).explain(image).maps
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, d)  # the masks do not depend on the batch size


def test_float64_model() -> None:
    model = build("fasterrcnn_resnet50_fpn", detections=2).double()
    maps = odam.DRISE(model, num_masks=3, progress=False).explain(torch.rand(3, 64, 80)).maps
    assert maps.shape == (2, 1, 64, 80) and torch.isfinite(maps).all()


def test_model_is_borrowed_also_when_it_raises() -> None:
    model = build("fcos_resnet50_fpn", detections=2).train()

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    image = torch.rand(3, 64, 80)
    dets = odam.wrap_detector(model).detect(image)
    handle = model.head.register_forward_hook(lambda *a: None)
    model.backbone.body.conv1.weight.requires_grad_(False)
    drise = odam.DRISE(model, num_masks=2, progress=False)
    drise.detector.score_candidates = fail
    with pytest.raises(RuntimeError, match="boom"):
        drise.explain(image, detections=dets)
    assert model.training and not model.backbone.body.conv1.weight.requires_grad
    assert list(model.head._forward_hooks) == [handle.id]


def test_masks_follow_rise() -> None:
    drise = odam.DRISE(build("fcos_resnet50_fpn"), grid_size=4, keep_probability=0.5, progress=False)
    masks = drise.masks(*drise.draws(400, torch.Generator().manual_seed(0)), (30, 50))
    assert masks.shape == (400, 30, 50) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.03
    # Bilinear upsampling of 8x13-pixel cells: neighbouring pixels differ by at most one cell's slope.
    assert float((masks[:, :, 1:] - masks[:, :, :-1]).abs().max()) <= 1 / 13 + 1e-6
    # Random grids and shifts: no two masks are the same.
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 400


def test_handset_detector_looks_at_the_object() -> None:
    """The hand-set FCOS scores each bright cell of a square by itself: D-RISE must point at that cell."""
    image = torch.zeros(3, 128, 128)
    image[:, 40:88, 48:96] = 1.0
    drise = odam.DRISE(handset_fcos(), num_masks=96, batch_size=32, grid_size=8, progress=False)
    exp = drise.explain(image)
    assert len(exp) >= 1
    saliency = exp.maps[0, 0]
    x1, y1, x2, y2 = exp.detections.boxes[0].round().int().tolist()
    assert saliency[y1:y2, x1:x2].mean() > 1.3 * saliency.mean()
    y, x = divmod(int(saliency.argmax()), 128)
    assert x1 - 8 <= x <= x2 + 8 and y1 - 8 <= y <= y2 + 8


def test_rejects_box_targets_and_empty() -> None:
    model = build("fcos_resnet50_fpn")
    drise = odam.DRISE(model, num_masks=2, progress=False)
    with pytest.raises(ValueError, match="targets must be"):
        drise.explain(torch.rand(3, 32, 32), targets=("score", "left"))
    with pytest.raises(ValueError, match="num_masks"):
        odam.DRISE(model, num_masks=0)
    none = odam.Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert drise.explain(torch.rand(3, 32, 40), detections=none).maps.shape == (0, 1, 32, 40)
