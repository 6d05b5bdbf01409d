"""The batched RPN post-processing against torchvision's ``model.rpn`` run image by image, and D-RISE's candidates
through it against the candidates through torchvision's RPN, on random-init models and the bundled Faster R-CNN."""

from __future__ import annotations

import pytest
import torch
from tests._matching import match_by_box
from tests.conftest import TWO_STAGE, build
from torchvision.models.detection.image_list import ImageList

import odam
from odam.cli import DEMO_SCENE
from odam.detectors.base import Candidates
from odam.detectors.batched_rpn import batched_proposals


def _per_image(model: torch.nn.Module, images: ImageList, feats: dict) -> list[torch.Tensor]:
    """The reference: ``model.rpn`` on one image at a time, on the batch's own features."""
    out = []
    for i in range(len(images.image_sizes)):
        one = ImageList(images.tensors[i:i + 1], [images.image_sizes[i]])
        boxes, _ = model.rpn(one, {k: f[i:i + 1] for k, f in feats.items()})
        out.append(boxes[0])
    return out


def _scores_per_image(model: torch.nn.Module, images: ImageList, feats: dict) -> list[torch.Tensor]:
    """The objectness of each reference proposal (``model.rpn`` returns none): ``RegionProposalNetwork.forward``'s
    steps on one image at a time, ending with its ``filter_proposals``."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    rpn, scores = model.rpn, []
    for i in range(len(images.image_sizes)):
        one = ImageList(images.tensors[i:i + 1], [images.image_sizes[i]])
        levels = [f[i:i + 1] for f in feats.values()]
        objectness, deltas = rpn.head(levels)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas, rpn.anchor_generator(one, levels)).view(1, -1, 4)
        scores.append(rpn.filter_proposals(proposals, objectness, one.image_sizes, per_level)[1][0])
    return scores


def _assert_same_proposals(got: tuple[torch.Tensor, torch.Tensor, torch.Tensor], boxes: list[torch.Tensor],
                           scores: list[torch.Tensor]) -> None:
    """Each image's proposals equal the reference's, paired by box; by descending score; padding after them.

    The reference runs the RPN's head on one image at a time, which rounds its outputs ~1e-7 apart from the
    batch's; exp() in the box decoding makes that up to ~1e-3 px on random weights. Where the last kept score is
    (nearly) tied, which of the tied boxes made the cut may differ: rows scoring above the last kept score must
    pair (both ways); the counts must be equal."""
    b_boxes, b_scores, valid = got
    assert b_boxes.shape[:2] == b_scores.shape == valid.shape and len(valid) == len(boxes)
    assert valid.shape[1] == max(max(len(r) for r in boxes), 1)
    for i, (ref_boxes, ref_scores) in enumerate(zip(boxes, scores, strict=True)):
        n = int(valid[i].sum())
        assert n == len(ref_boxes) and bool(valid[i, :n].all()) and not bool(valid[i, n:].any())
        assert not bool(b_boxes[i, n:].any()) and not bool(b_scores[i, n:].any())
        mine, theirs = b_boxes[i, :n], b_scores[i, :n]
        assert bool((theirs[1:] <= theirs[:-1]).all()), "not by descending score"
        torch.testing.assert_close(theirs, ref_scores, rtol=0, atol=1e-5)  # the same sorted scores
        if n == 0:
            continue
        cut = float(ref_scores[-1])
        above_ref, above_mine = ref_scores > cut + 1e-5, theirs > cut + 1e-5
        match_by_box(ref_boxes[above_ref], mine, atol=1e-2, scores_a=ref_scores[above_ref], scores_b=theirs,
                     score_atol=1e-5, subset=True)
        match_by_box(mine[above_mine], ref_boxes, atol=1e-2, scores_a=theirs[above_mine], scores_b=ref_scores,
                     score_atol=1e-5, subset=True)


def _assert_same_candidates(a: Candidates, b: Candidates) -> None:
    """Same valid rows per image, paired by every label's box, with the same probabilities and scores."""
    assert a.boxes.shape == b.boxes.shape and torch.equal(a.valid, b.valid)
    assert a.objectness is None and b.objectness is None
    for i in range(len(a.valid)):
        v = a.valid[i]
        perm = match_by_box(a.boxes[i, v], b.boxes[i, v], atol=1e-3, scores_a=a.probs[i, v], scores_b=b.probs[i, v],
                            score_atol=1e-5)
        torch.testing.assert_close(a.scores[i, v], b.scores[i, v][perm], atol=1e-5, rtol=0)
        assert not bool(a.boxes[i, ~v].any()) and not bool(b.boxes[i, ~v].any())


def _mixed_batch(model: torch.nn.Module) -> ImageList:
    """Three images of different sizes (so different clip sizes) in one padded batch, one of them mostly black."""
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 120, generator=g), torch.rand(3, 64, 100, generator=g),
              torch.rand(3, 80, 60, generator=g)]
    images[2][:, 20:] = 0
    return model.transform(images)[0]


@pytest.mark.parametrize("name", TWO_STAGE)
def test_matches_torchvision_rpn_image_by_image(name: str) -> None:
    model = build(name)
    images = _mixed_batch(model)
    assert len(set(images.image_sizes)) == 3
    with torch.no_grad():
        feats = model.backbone(images.tensors)
        _assert_same_proposals(batched_proposals(model.rpn, images, feats), _per_image(model, images, feats),
                               _scores_per_image(model, images, feats))


def test_thresholds_caps_and_nothing_left() -> None:
    """A score threshold that drops about half, a pre-NMS top-k smaller than a level, a small post-NMS cap, an extra
    ``max_proposals`` cap, and a threshold that leaves no proposal at all."""
    model = build("fasterrcnn_resnet50_fpn")
    images = _mixed_batch(model)
    rpn = model.rpn
    with torch.no_grad():
        feats = model.backbone(images.tensors)
        rpn.score_thresh = float(_scores_per_image(model, images, feats)[0].median())
        rpn._pre_nms_top_n = {"training": 2000, "testing": 200}
        rpn._post_nms_top_n = {"training": 2000, "testing": 70}
        ref_boxes, ref_scores = _per_image(model, images, feats), _scores_per_image(model, images, feats)
        assert min(len(r) for r in ref_boxes) > 0 and max(len(r) for r in ref_boxes) == 70
        _assert_same_proposals(batched_proposals(rpn, images, feats), ref_boxes, ref_scores)
        capped = batched_proposals(rpn, images, feats, max_proposals=9)
        _assert_same_proposals(capped, [b[:9] for b in ref_boxes], [s[:9] for s in ref_scores])
        rpn.score_thresh = 1.5
        boxes, scores, valid = batched_proposals(rpn, images, feats)
        assert boxes.shape == (3, 1, 4) and not bool(valid.any()) and not bool(boxes.any())


def _masked_scenes(n: int) -> torch.Tensor:
    image = odam.load_image(DEMO_SCENE)
    drise = odam.DRISE(odam.wrap_detector(build("fcos_resnet50_fpn")), num_masks=n, progress=False)
    masks = drise.masks(*drise.draws(n, torch.Generator().manual_seed(4)), tuple(image.shape[-2:]))
    return torch.cat([image[None], image * masks[:, None]])


@pytest.fixture(scope="module")
def bundled() -> odam.DetectorAdapter:
    return odam.load_detector("synthcrowd-fasterrcnn")


def test_bundled_model_on_masked_scenes(bundled: odam.DetectorAdapter) -> None:
    x = _masked_scenes(5)
    model = bundled.model
    with torch.no_grad():
        images = model.transform(list(x))[0]
        feats = model.backbone(images.tensors)
        _assert_same_proposals(batched_proposals(model.rpn, images, feats), _per_image(model, images, feats),
                               _scores_per_image(model, images, feats))
    assert bundled.batched_rpn
    batched = bundled.candidates(x, 1000)
    bundled.batched_rpn = False
    try:
        old, old_40 = bundled.candidates(x, 1000), bundled.candidates(x, 40)
    finally:
        bundled.batched_rpn = True
    _assert_same_candidates(batched, old)
    _assert_same_candidates(bundled.candidates(x, 40), old_40)
    assert int(batched.valid.sum(1).min()) > 100  # a real test: many proposals per masked image


@pytest.mark.parametrize("name", TWO_STAGE)
def test_candidates_match_torchvision_rpn(name: str) -> None:
    adapter = odam.wrap_detector(build(name))
    x = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(6))
    x[1, :, :, 40:] = 0
    new = adapter.candidates(x, 50)
    adapter.batched_rpn = False
    _assert_same_candidates(new, adapter.candidates(x, 50))
    assert new.boxes.shape[:2] == (3, 50)


def test_candidates_when_no_proposal_is_left() -> None:
    model = build("fasterrcnn_resnet50_fpn")
    model.rpn.score_thresh = 1.5
    adapter = odam.wrap_detector(model)
    for batched in (True, False):
        adapter.batched_rpn = batched
        c = adapter.candidates(torch.rand(2, 3, 64, 80), 50)
        assert c.boxes.shape == (2, 1, 3, 4) and not bool(c.valid.any())


def test_model_is_borrowed_also_when_it_raises() -> None:
    model = build("fasterrcnn_resnet50_fpn").train()
    model.backbone.body.conv1.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    adapter = odam.wrap_detector(model)
    keep = model.roi_heads.register_forward_hook(lambda *a: None)
    adapter.candidates(torch.rand(2, 3, 64, 80), 20)
    assert model.training and model.rpn.training and [p.requires_grad for p in model.parameters()] == flags
    assert list(model.roi_heads._forward_hooks) == [keep.id]

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    handle = model.rpn.head.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        adapter.candidates(torch.rand(2, 3, 64, 80), 20)
    assert model.training and model.rpn.training and [p.requires_grad for p in model.parameters()] == flags
    assert list(model.rpn.head._forward_pre_hooks) == [handle.id]
    assert list(model.roi_heads._forward_hooks) == [keep.id]
    assert [p.requires_grad for p in model.parameters()] == flags
