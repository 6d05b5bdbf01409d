"""tests/_matching.py: the pairing by box that order-independent comparisons rely on must be able to fail."""

from __future__ import annotations

import pytest
import torch
from tests._matching import match_by_box

BOXES = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [5, 5, 20, 20], [30, 0, 40, 8]])
SCORES = torch.tensor([0.9, 0.5, 0.4, 0.5])


def test_a_permutation_is_undone() -> None:
    order = torch.tensor([3, 1, 0, 2])
    perm = match_by_box(BOXES, BOXES[order] + 1e-4, scores_a=SCORES, scores_b=SCORES[order])
    assert torch.equal(order[perm], torch.arange(4))  # the equal boxes 1 and 2 are told apart by their scores


def test_a_moved_box_or_score_or_label_does_not_match() -> None:
    moved = BOXES.clone()
    moved[3, 0] += 0.01
    with pytest.raises(AssertionError, match=r"row 3 of a .* nearest row 3 of b: box .* at 0.01 px"):
        match_by_box(moved, BOXES)
    with pytest.raises(AssertionError, match="not one each"):  # two rows of a want the same row of b
        match_by_box(BOXES[[0, 0, 1, 3]], BOXES)
    with pytest.raises(AssertionError, match="no partner"):
        match_by_box(BOXES, BOXES, scores_a=SCORES, scores_b=SCORES + 1e-4)
    labels = torch.tensor([0, 1, 1, 2])
    with pytest.raises(AssertionError, match="no partner"):
        match_by_box(BOXES, BOXES, labels_a=labels, labels_b=labels.flip(0))
    with pytest.raises(AssertionError, match="4 rows against 3"):
        match_by_box(BOXES, BOXES[:3])


def test_a_top_k_pairs_into_a_longer_list() -> None:
    perm = match_by_box(BOXES[[3, 0]], BOXES, subset=True)
    assert perm.tolist() == [3, 0]
    with pytest.raises(AssertionError, match="cannot pair"):
        match_by_box(BOXES, BOXES[:2], subset=True)
    assert match_by_box(BOXES[:0], BOXES, subset=True).shape == (0,)
