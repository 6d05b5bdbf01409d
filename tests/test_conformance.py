"""The adapter conformance suite (``odam.testing``) on every supported detector family.

Each family contributes :class:`odam.testing.Case` objects in ``tests/cases/<family>.py``; docs/ADAPTERS.md shows
how to run the same checks on your own adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.cases import all_cases

from odam.testing import CHECKS, Case, check_maps_line_up_with_image

CASES = all_cases()

#: Each case's bound for ``check_maps_line_up_with_image``, in cells of its finest explained map: the median
#: offset of a patch's placed change from the patch (``OMP_NUM_THREADS=1`` and ``2`` alike), y and x, is
#: yolo-v8 (-0.04, 0.01), yolo-11 (0.13, -0.06), detr-resnet (0.11, -0.02): a quarter cell holds.
#: torchvision-retinanet (P4, 0.26, 0.16) and retinaface (pretrained P3, -0.10, -0.19): half a cell.
#: torchvision-fcos (P3, 0.89, 0.64) and torchvision-fasterrcnn (P2, 1.96, 1.44): FPN levels below the top one,
#: which with random weights respond most where their coarser levels' cells sit (docs/ODAM.md), placed at the
#: anchors' centre on purpose.
LINE_UP = {"yolo-v8": 0.25, "yolo-11": 0.25, "detr-resnet": 0.25, "torchvision-retinanet": 0.5, "retinaface": 0.5,
           "torchvision-fcos": 1.5, "torchvision-fasterrcnn": 3.0}


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(case: Case, check: Callable[[Case], None]) -> None:
    if check is check_maps_line_up_with_image:
        check_maps_line_up_with_image(case, tolerance=LINE_UP[case.id])
    else:
        check(case)


def test_every_family_has_a_case() -> None:
    from odam.detectors import FAMILIES

    ids = {c.id.split("-")[0] for c in CASES}
    assert {"torchvision"} | {f.split(":")[0].rsplit(".", 1)[1] for f in FAMILIES} <= ids


def test_a_failing_check_names_itself() -> None:
    """The suite can fail: an adapter whose detections are shifted by a pixel fails the native comparison."""
    from odam.testing import check_adapter

    case = CASES[0]

    def shifted(model, image):  # noqa: ANN001, ANN202
        boxes, scores, labels = case.native(model, image)
        return boxes + 1, scores, labels

    bad = Case(case.id, case.build, shifted, case.image, case.probe)
    with pytest.raises(AssertionError, match="check_detect_equals_native: boxes"):
        check_adapter(bad)


def test_a_check_that_raises_another_error_is_named_too() -> None:
    """A bug in an adapter often surfaces as a TypeError: check_adapter still names the check, with the cause."""
    from odam.detectors.torchvision import OneStageAdapter
    from odam.testing import check_adapter

    case = CASES[0]

    class Broken(OneStageAdapter):
        def attributes(self, trace, detections, frozen_norm=False):  # noqa: ANN001, ANN202
            raise TypeError("unsupported operand")

    bad = Case(case.id, case.build, case.native, case.image, case.probe, wrap=Broken)
    with pytest.raises(AssertionError, match="check_attributes_reproduce_detections: TypeError: unsupported") as err:
        check_adapter(bad)
    assert isinstance(err.value.__cause__, TypeError)


def test_a_model_whose_weights_are_all_buffers_has_a_device_and_dtype() -> None:
    import torch
    from torch import nn

    import odam

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", torch.ones(2, dtype=torch.float64))

    class Adapter(odam.DetectorAdapter):
        def run(self, image, layer, candidates):  # noqa: ANN001, ANN202
            raise NotImplementedError

        def attributes(self, trace, detections, frozen_norm=False):  # noqa: ANN001, ANN202
            raise NotImplementedError

    adapter = Adapter(Fixed())
    assert adapter.device == torch.device("cpu") and adapter.dtype == torch.float64
    assert Adapter(nn.Identity()).dtype == torch.float32


def test_maps_placed_five_cells_off_fail_the_line_up_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default bound (a quarter cell, at least 16 model pixels: two cells of FCOS's P3) catches 5 cells."""
    from odam.detectors.base import MapGroup

    case = CASES[0]
    check_maps_line_up_with_image(case)
    place = MapGroup.to_image
    monkeypatch.setattr(MapGroup, "to_image", lambda self, maps, rows: place(self, maps.roll(5, -1), rows))
    with pytest.raises(AssertionError, match=r"cells \(y, x\) from it"):
        check_maps_line_up_with_image(case)


@pytest.mark.parametrize("shift", [(0.5, 0.0), (0.0, 0.5), (1.0, 1.0)], ids=["half-y", "half-x", "one-cell"])
def test_maps_placed_half_a_cell_off_fail_the_line_up_check(monkeypatch: pytest.MonkeyPatch,
                                                            shift: tuple[float, float]) -> None:
    """A group whose centre is off by half a cell on one axis, or a cell on both, fails the quarter-cell bound."""
    from odam.detectors.yolo import import_ultralytics

    import_ultralytics()  # offline, with a private settings dir: never pytest.importorskip
    from odam.detectors.base import MapGroup

    case = next(c for c in CASES if c.id == "yolo-11")
    check_maps_line_up_with_image(case, tolerance=0.25)
    place = MapGroup.to_image

    def shifted(self: MapGroup, maps, rows):  # noqa: ANN001, ANN202
        centre = self.centre
        self.centre = (centre[0] + shift[0] * self.stride[0], centre[1] + shift[1] * self.stride[1])
        try:
            return place(self, maps, rows)
        finally:
            self.centre = centre

    monkeypatch.setattr(MapGroup, "to_image", shifted)
    with pytest.raises(AssertionError, match=r"cells \(y, x\) from it, more than 0.25"):
        check_maps_line_up_with_image(case, tolerance=0.25)


def test_an_adapter_that_leaves_a_patch_or_changes_a_buffer_fails_the_borrow_check() -> None:
    from odam.detectors.torchvision import OneStageAdapter
    from odam.testing import check_model_is_borrowed

    case = CASES[0]

    class Patching(OneStageAdapter):
        def run(self, image, layer, candidates):  # noqa: ANN001, ANN202
            self.model.head.forward = self.model.head.forward  # an instance attribute left behind
            return super().run(image, layer, candidates)

    class Drifting(OneStageAdapter):
        def run(self, image, layer, candidates):  # noqa: ANN001, ANN202
            bn = next(m for m in self.model.modules() if hasattr(m, "running_mean"))
            bn.running_mean += 1
            return super().run(image, layer, candidates)

    for adapter, message in ((Patching, "modes, flags, hooks or methods"), (Drifting, "parameters or buffers")):
        model = case.build()
        bad = Case(case.id, lambda m=model: m, case.native, case.image, case.probe, wrap=adapter)
        with pytest.raises(AssertionError, match=message):
            check_model_is_borrowed(bad)
