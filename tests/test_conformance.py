"""The adapter conformance suite (``odam.testing``) on every supported detector family.

Each family contributes :class:`odam.testing.Case` objects in ``tests/cases/<family>.py``; docs/ADAPTERS.md shows
how to run the same checks on your own adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.cases import all_cases

from odam.testing import CHECKS, Case

CASES = all_cases()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(case: Case, check: Callable[[Case], None]) -> None:
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


def test_maps_placed_five_cells_off_fail_the_line_up_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from odam.detectors.base import MapGroup
    from odam.testing import check_maps_line_up_with_image

    case = CASES[0]
    check_maps_line_up_with_image(case)
    place = MapGroup.to_image
    monkeypatch.setattr(MapGroup, "to_image", lambda self, maps, rows: place(self, maps.roll(5, -1), rows))
    with pytest.raises(AssertionError, match="is placed at"):
        check_maps_line_up_with_image(case)


def test_an_adapter_that_leaves_a_patch_or_changes_a_buffer_fails_the_borrow_check() -> None:
    from odam.detectors.torchvision import OneStageAdapter
    from odam.testing import check_model_is_borrowed

    case = CASES[0]

    class Patching(OneStageAdapter):
        def _trace(self, image, layer):  # noqa: ANN001, ANN202
            self.model.head.forward = self.model.head.forward  # an instance attribute left behind
            return super()._trace(image, layer)

    class Drifting(OneStageAdapter):
        def _trace(self, image, layer):  # noqa: ANN001, ANN202
            bn = next(m for m in self.model.modules() if hasattr(m, "running_mean"))
            bn.running_mean += 1
            return super()._trace(image, layer)

    for adapter, message in ((Patching, "modes, flags, hooks or methods"), (Drifting, "parameters or buffers")):
        model = case.build()
        bad = Case(case.id, lambda m=model: m, case.native, case.image, case.probe, wrap=adapter)
        with pytest.raises(AssertionError, match=message):
            check_model_is_borrowed(bad)
