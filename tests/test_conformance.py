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
