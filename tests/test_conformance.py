"""The adapter conformance suite: every supported detector family passes the same checks.

Each family contributes :class:`tests.cases.Case` objects (``tests/cases/<family>.py``). See docs/ADAPTERS.md
for how to run this suite on your own adapter.
"""

from __future__ import annotations

import pytest
import torch
from tests.cases import Case, all_cases, get
from torch import nn

import odam
from odam import TARGETS
from odam.detectors.base import DetectorAdapter

CASES = all_cases()


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _adapter(case: Case) -> tuple[nn.Module, DetectorAdapter]:
    model = get(case)
    return model, case.wrap(model)


def _state(model: nn.Module) -> tuple:
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    hooks = tuple((len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules())
    return modes, flags, hooks


def test_detect_equals_native(case: Case) -> None:
    model, adapter = _adapter(case)
    image = case.image()
    dets = adapter.detect(image)
    boxes, scores, labels = case.native(model, image)
    assert len(dets) >= 2, "a case's image must give at least two detections"
    assert len(dets) == len(boxes)
    torch.testing.assert_close(dets.boxes, boxes.to(dets.boxes), atol=case.atol, rtol=0)
    torch.testing.assert_close(dets.scores, scores.to(dets.scores), atol=case.atol, rtol=0)
    assert torch.equal(dets.labels.cpu(), labels.to(torch.int64).cpu())
    assert dets.has_provenance


def test_attributes_from_provenance_reproduce_detections(case: Case) -> None:
    _, adapter = _adapter(case)
    trace = adapter.trace(case.image())
    dets = trace.detections
    y, groups, group_of = trace.graph(dets)
    assert y.shape == (len(dets), len(TARGETS))
    torch.testing.assert_close(case.score_of(y[:, 0].detach()), dets.scores, atol=1e-5, rtol=1e-5)
    edges = dets.boxes * dets.boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])
    torch.testing.assert_close(y[:, 1:].detach(), edges, atol=1e-3, rtol=1e-5)
    assert group_of.shape == (len(dets),) and int(group_of.min()) >= 0 and int(group_of.max()) < len(groups)


def test_batched_maps_equal_per_detection_loop(case: Case) -> None:
    _, adapter = _adapter(case)
    image = case.image()
    explainer = odam.ODAM(adapter)
    batched = explainer.explain(image, targets=TARGETS)
    assert batched.maps.shape == (len(batched), len(TARGETS), *image.shape[-2:])
    assert torch.isfinite(batched.maps).all()
    assert batched.maps.amax() > 0
    for i in range(len(batched)):
        single = explainer.explain(image, targets=TARGETS, detections=batched.detections[i:i + 1])
        scale = float(batched.maps[i].abs().amax()) + 1e-12
        torch.testing.assert_close(single.maps[0], batched.maps[i], atol=1e-4 * scale, rtol=1e-4)


def test_box_edge_map_differs_from_score_map(case: Case) -> None:
    _, adapter = _adapter(case)
    maps = odam.ODAM(adapter).explain(case.image(), targets=("score", "left", "bottom")).maps
    for j in (1, 2):
        assert not torch.allclose(maps[:, 0], maps[:, j]), f"the {('left', 'bottom')[j - 1]} map equals the score map"


def test_model_is_borrowed_on_success_and_on_error(case: Case) -> None:
    model, adapter = _adapter(case)
    image = case.image()
    params = list(model.parameters())
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in params]
    try:
        model.train()
        params[0].requires_grad_(not flags[0])
        calls: list[int] = []
        handle = case.probe(model).register_forward_hook(lambda *a: calls.append(1))
        before = _state(model)
        try:
            explanation = odam.ODAM(adapter).explain(image, targets=("score", "right"))
            assert _state(model) == before
            assert calls, "the user's hook must still run"
            assert len(explanation) == len(adapter.detect(image))  # explained in eval mode, as detect
            assert _state(model) == before
            # An error raised while the graph is built, after tracing.
            bad = explanation.detections[:1]
            bad = odam.Detections(bad.boxes, bad.scores, bad.labels, bad.levels, bad.indices + 10**7)
            with pytest.raises(ValueError, match="out of range"):
                odam.ODAM(adapter).explain(image, detections=bad)
            assert _state(model) == before
            # An error raised inside the model's forward pass.
            boom = case.probe(model).register_forward_hook(_raise)
            try:
                with pytest.raises(RuntimeError, match="boom"):
                    odam.ODAM(adapter).explain(image)
            finally:
                boom.remove()
            assert _state(model) == before
        finally:
            handle.remove()
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _raise(*_: object) -> None:
    raise RuntimeError("boom")


def test_maps_line_up_with_the_image_after_resizing(case: Case) -> None:
    """A change to one patch of the image changes the explained features where ``to_image`` places that patch.

    The case's image is resized (and padded) by the model; features are compared on the finest explained grid
    and placed on the image by that group's own geometry. Convolutional features change most
    near the patch, so the placed change peaks within one stride of it.
    """
    _, adapter = _adapter(case)
    image = case.image()
    H, W = image.shape[-2:]
    y0, x0, h, w = int(0.55 * H), int(0.15 * W), max(4, H // 6), max(4, W // 6)
    changed = image.clone()
    changed[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, h, w, generator=torch.Generator().manual_seed(5))
    grids = []
    for img in (image, changed):
        trace = adapter.trace(img)
        _, groups, group_of = trace.graph(trace.detections)
        finest = max(groups, key=lambda g: g.features(g.rows[:1]).shape[-2:].numel())
        grids.append(finest.features(finest.rows[:1]))
    delta = (grids[1] - grids[0]).abs().sum(1)
    placed = finest.to_image(delta, finest.rows[:1])[0]
    assert placed.shape == (H, W)
    py, px = divmod(int(placed.argmax()), W)
    g = trace.geometry
    margin = max(finest.stride) * max(g.original[0] / g.resized[0], g.original[1] / g.resized[1])
    assert y0 - margin <= py <= y0 + h + margin and x0 - margin <= px <= x0 + w + margin, (py, px)


def test_bad_input_gives_one_line_errors(case: Case) -> None:
    _, adapter = _adapter(case)
    for bad in (torch.rand(4, 32, 32), torch.rand(32, 32)):
        with pytest.raises(ValueError, match=r"expected image of shape") as info:
            adapter.detect(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown target 'width'"):
        odam.ODAM(adapter).explain(case.image(), targets=("width",))
    with pytest.raises(ValueError, match="no module named 'nope.nope'") as info:
        odam.ODAM(adapter, layer="nope.nope").explain(case.image())
    assert "\n" not in str(info.value)
