"""The batched candidate pass (``DetectorAdapter.candidates``) against per-image runs and ``detect``."""

from __future__ import annotations

import pytest
import torch
from tests._matching import match_by_box
from tests.conftest import ALL_FAMILIES, build

import odam
from odam.detectors.torchvision import _prepare_batch


@pytest.mark.parametrize("size", [(96, 120), (61, 203), (128, 128)])
def test_batched_transform_equals_torchvision(size: tuple[int, int]) -> None:
    model = build("fcos_resnet50_fpn")
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(0))
    batch, geometry = _prepare_batch(model, images)
    ref, _ = model.transform(list(images))
    assert torch.equal(batch.tensors, ref.tensors)
    assert batch.image_sizes == ref.image_sizes
    assert geometry.padded == tuple(ref.tensors.shape[-2:])


def test_candidates_batched_equal_one_by_one(family_model: torch.nn.Module) -> None:
    # Matched by box, not by position: random-init scores have neighbours 1e-7 apart (RetinaNet v2, measured),
    # which a batch and a single image round apart differently on other CPUs and thread counts, swapping places
    # and trading the last place of the top 50 (24 of 600 box values up to 27.6 px apart on another machine).
    adapter = odam.wrap_detector(family_model)
    images = torch.rand(3, 3, 96, 120, generator=torch.Generator().manual_seed(1))
    top, room = 50, 80  # each top 50 lies within the other pass's top 80 (near ties move a place or two)
    whole = adapter.candidates(images, max_candidates=room)
    for b in range(3):
        one = adapter.candidates(images[b:b + 1], max_candidates=room)
        m = int(one.valid.sum())
        assert int(whole.valid[b].sum()) == m and m >= top
        for (x, i), (y, j) in (((whole, b), (one, 0)), ((one, 0), (whole, b))):
            perm = match_by_box(x.boxes[i, :top], y.boxes[j, :m], atol=1e-2, scores_a=x.scores[i, :top],
                                scores_b=y.scores[j, :m], score_atol=1e-4, subset=True)
            torch.testing.assert_close(x.probs[i, :top], y.probs[j, perm], atol=1e-5, rtol=1e-4)
            if x.objectness is not None:
                torch.testing.assert_close(x.objectness[i, :top], y.objectness[j, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_every_detection_is_a_candidate(name: str) -> None:
    model = build(name, detections=10)
    adapter = odam.wrap_detector(model)
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(2))
    dets = adapter.detect(image)
    found = adapter.candidates(image[None])
    assert len(dets) == 10
    for k in range(len(dets)):
        label = int(dets.labels[k])
        dist = (found.boxes[0, :, label] - dets.boxes[k]).abs().amax(-1)
        same = found.valid[0] & (dist < 1e-3) & ((found.scores[0, :, label] - dets.scores[k]).abs() < 1e-5)
        assert same.any(), f"detection {k} not among the candidates"
        box = dets.boxes[k]
        if (box[2:] - box[:2]).prod() > 0:  # random weights also predict empty boxes, whose IoU is 0
            assert found.tracked_scores(box, label)[0] >= dets.scores[k] - 1e-6


def test_candidates_describe_their_detector() -> None:
    one = odam.wrap_detector(build("fcos_resnet50_fpn")).candidates(torch.rand(2, 3, 64, 80), max_candidates=7)
    assert one.boxes.shape == (2, 7, 3, 4) and one.probs.shape == (2, 7, 3) and one.objectness.shape == (2, 7)
    retina = odam.wrap_detector(build("retinanet_resnet50_fpn")).candidates(torch.rand(1, 3, 64, 80))
    assert retina.objectness is None
    two = odam.wrap_detector(build("fasterrcnn_resnet50_fpn")).candidates(torch.rand(1, 3, 64, 80))
    torch.testing.assert_close(two.probs.sum(-1)[two.valid], torch.ones(int(two.valid.sum())))  # softmax with bg


def test_tracked_scores_by_hand() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60]]])[:, :, None].expand(1, 3, 2, 4)
    scores = torch.tensor([[[0.0, 0.3], [0.0, 0.9], [0.0, 0.95]]])
    c = odam.detectors.base.Candidates(boxes, scores, scores, None, torch.tensor([[True, True, True]]))
    # IoU([0,0,10,10], [0,0,10,20]) = 0.5: not > 0.5, so only the first candidate counts.
    assert c.tracked_scores(torch.tensor([0.0, 0, 10, 10]), 1).tolist() == [pytest.approx(0.3)]
    assert c.tracked_scores(torch.tensor([100.0, 100, 110, 110]), 1).tolist() == [0.0]


def test_candidates_reject_bad_input_and_borrow() -> None:
    model = build("fasterrcnn_resnet50_fpn").train()
    adapter = odam.wrap_detector(model)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \(3, 64, 80\)"):
        adapter.candidates(torch.rand(3, 64, 80))
    adapter.candidates(torch.rand(1, 3, 64, 80))
    assert model.training

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    model.roi_heads.box_head.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        adapter.candidates(torch.rand(1, 3, 64, 80))
    assert model.training and all(m.training for m in model.modules())
    assert len(model.roi_heads.box_head._forward_hooks) == 1


def test_an_adapter_without_candidates_says_so() -> None:
    class Minimal(odam.DetectorAdapter):
        def run(self, image: torch.Tensor, layer: object, candidates: object) -> None: ...

        def attributes(self, trace: object, detections: object, frozen_norm: bool = False) -> None: ...

    adapter = Minimal(build("fcos_resnet50_fpn"))
    with pytest.raises(NotImplementedError, match="Minimal cannot score candidates"):
        adapter.candidates(torch.rand(1, 3, 32, 32))
