"""Metrics of visual explanations: every expected number is worked out by hand in a comment.

scipy and scikit-image are test-only peers: ``spearman`` and ``ssim`` are checked against them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import skimage.metrics
import torch

from odam.metrics import (
    Compactness,
    Curve,
    EnergyPointingGame,
    ObjectDiscrimination,
    PointingGame,
    compactness,
    deletion,
    energy_pointing_game,
    insertion,
    object_discrimination_index,
    perturbation_order,
    pointing_game,
    region_mask,
    spearman,
    ssim,
    visual_explanation_accuracy,
)

DTYPES = [torch.float32, torch.float64]


def box(*xyxy: float) -> torch.Tensor:
    return torch.tensor(xyxy, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- region_mask


class TestRegionMask:
    def test_pixel_centres_on_the_box_edges_are_inside(self):
        # centres x = 0.5, 1.5, 2.5 against [0.5, 2.0]: cols 0 (0.5 on the edge) and 1; y = 0.5, 1.5 against
        # [0.0, 1.5]: rows 0 and 1 (1.5 on the edge)
        mask = region_mask(box(0.5, 0.0, 2.0, 1.5), (2, 3))
        assert mask.dtype == torch.bool
        assert mask.int().tolist() == [[1, 1, 0], [1, 1, 0]]

    def test_box_just_short_of_a_centre_excludes_it(self):
        # [0.6, 1.4] holds no centre 0.5, 1.5, 2.5
        assert not region_mask(box(0.6, 0.6, 1.4, 1.4), (3, 3)).any()

    def test_degenerate_box_through_one_centre(self):
        # the point (1.5, 0.5) is the centre of pixel (row 0, col 1)
        expected = torch.zeros(2, 3, dtype=torch.bool)
        expected[0, 1] = True
        assert torch.equal(region_mask(box(1.5, 0.5, 1.5, 0.5), (2, 3)), expected)

    def test_box_larger_than_the_image_and_float32_box(self):
        assert region_mask(torch.tensor([-5.0, -5.0, 50.0, 50.0]), torch.Size([2, 3])).all()

    def test_mask_is_returned_as_is(self):
        mask = torch.tensor([[True, False], [False, True]])
        assert torch.equal(region_mask(mask, (2, 2)), mask)

    def test_errors_show_the_bad_shape(self):
        with pytest.raises(ValueError, match=r"\(3, 2\)"):
            region_mask(torch.zeros(3, 2, dtype=torch.bool), (2, 2))
        with pytest.raises(ValueError, match=r"got \(5,\)"):
            region_mask(torch.zeros(5), (2, 2))
        with pytest.raises(ValueError, match="bool"):
            region_mask(torch.zeros(2, 2, dtype=torch.uint8), (2, 2))


# ------------------------------------------------------------------------------------------------ pointing game


class TestPointingGame:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_peak_inside_box(self, dtype):
        s = torch.zeros(4, 5, dtype=dtype)
        s[2, 3] = 5.0  # peak (x, y) = (3, 2), centre (3.5, 2.5)
        assert pointing_game(s, box(3.0, 2.0, 4.0, 3.0)) == PointingGame(hit=True, point=(3, 2))

    def test_centre_on_the_box_edge_hits_and_just_outside_misses(self):
        s = torch.zeros(4, 5)
        s[2, 3] = 5.0  # centre (3.5, 2.5)
        assert pointing_game(s, box(0.0, 0.0, 3.5, 2.5)).hit
        assert not pointing_game(s, box(0.0, 0.0, 3.49, 2.5)).hit
        assert pointing_game(s, box(3.5, 2.5, 9.0, 9.0)).hit

    def test_peak_outside_is_a_miss_with_its_point(self):
        s = torch.zeros(4, 5)
        s[0, 0] = 1.0
        assert pointing_game(s, box(2.0, 2.0, 5.0, 4.0)) == PointingGame(hit=False, point=(0, 0))

    def test_ties_take_the_first_maximum_in_row_major_order(self):
        s = torch.zeros(4, 5)
        s[2, 3] = s[0, 4] = 5.0  # flat indices 13 and 4: the first is (x, y) = (4, 0)
        result = pointing_game(s, box(3.0, 2.0, 4.0, 3.0))
        assert result == PointingGame(hit=False, point=(4, 0))

    def test_mask_region(self):
        s = torch.zeros(4, 5)
        s[2, 3] = 1.0
        mask = torch.zeros(4, 5, dtype=torch.bool)
        mask[2, 3] = True
        assert pointing_game(s, mask).hit
        assert not pointing_game(s, ~mask).hit

    @pytest.mark.parametrize("fill", [0.0, -1.0])
    def test_map_without_positive_value_has_no_peak(self, fill):
        s = torch.full((4, 5), fill)
        assert pointing_game(s, box(0.0, 0.0, 5.0, 4.0)) == PointingGame(hit=False, point=None)

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match=r"saliency of shape \[H, W\].*\(1, 4, 5\)"):
            pointing_game(torch.zeros(1, 4, 5), box(0.0, 0.0, 1.0, 1.0))
        with pytest.raises(ValueError, match=r"\(4, 4\)"):
            pointing_game(torch.zeros(4, 5), torch.zeros(4, 4, dtype=torch.bool))

    def test_result_is_frozen(self):
        result = pointing_game(torch.ones(2, 2), box(0.0, 0.0, 1.0, 1.0))
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.hit = False  # type: ignore[misc]


class TestEnergyPointingGame:
    # clipped map [[1, 2, 0], [0, 4, 1]]: total 8
    S = torch.tensor([[1.0, 2.0, 0.0], [-3.0, 4.0, 1.0]])

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_box(self, dtype):
        # box [0, 0, 2, 2] holds cols 0-1, rows 0-1: 1 + 2 + 0 + 4 = 7 of 8
        result = energy_pointing_game(self.S.to(dtype), box(0.0, 0.0, 2.0, 2.0))
        assert result == EnergyPointingGame(share=0.875, inside=7.0, total=8.0)

    def test_mask(self):
        # column 2: 0 + 1 = 1 of 8
        mask = torch.tensor([[False, False, True], [False, False, True]])
        assert energy_pointing_game(self.S, mask) == EnergyPointingGame(share=0.125, inside=1.0, total=8.0)

    def test_all_zero_map(self):
        assert energy_pointing_game(torch.zeros(2, 3), box(0.0, 0.0, 2.0, 2.0)) == EnergyPointingGame(0.0, 0.0, 0.0)


class TestCompactness:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_hand_computed(self, dtype):
        # peak (1, 1) value 4; corners (0, 0) and (2, 2) value 1 at squared distance 2; the -5 clips to 0.
        # sum S d^2 / sum S = (1 * 2 + 1 * 2) / 6 = 2/3; box 6 x 8: (36 + 64) / 4 = 25 -> sqrt(2/75)
        s = torch.tensor([[1.0, 0.0, -5.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
        result = compactness(s, box(10.0, 10.0, 16.0, 18.0))
        assert result.peak == (1, 1)
        assert result.value == pytest.approx(math.sqrt(2 / 75), rel=1e-12)

    def test_distances_from_the_first_maximum(self):
        # [[1, 2, 0, 2]]: peak is x = 1 (not 3). sum S d^2 = 1 * 1 + 2 * 2^2 = 9, sum S = 5 -> 1.8;
        # box 4 x 2: (16 + 4) / 4 = 5 -> sqrt(0.36) = 0.6 (from x = 3 it would be sqrt(3.4 / 5))
        result = compactness(torch.tensor([[1.0, 2.0, 0.0, 2.0]]), box(0.0, 0.0, 4.0, 2.0))
        assert result.peak == (1, 0)
        assert result.value == pytest.approx(0.6, rel=1e-12)

    def test_single_hot_pixel_is_zero(self):
        s = torch.zeros(5, 5)
        s[3, 1] = 2.0
        assert compactness(s, box(0.0, 0.0, 5.0, 5.0)) == Compactness(value=0.0, peak=(1, 3))

    def test_all_zero_map_is_nan(self):
        result = compactness(torch.zeros(3, 3), box(0.0, 0.0, 3.0, 3.0))
        assert math.isnan(result.value) and result.peak is None

    def test_errors(self):
        with pytest.raises(ValueError, match="diagonal"):
            compactness(torch.ones(3, 3), box(1.0, 1.0, 1.0, 1.0))
        with pytest.raises(ValueError, match=r"box of shape \[4\].*\(3, 3\)"):
            compactness(torch.ones(3, 3), torch.ones(3, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------- object discrimination


class TestObjectDiscrimination:
    # one row of 6 pixels, values 1..6; object 0 covers cols 0-2, object 1 cols 2-4 (col 2 shared), col 5 is
    # background
    S = torch.arange(1.0, 7.0).view(1, 6)
    BOXES = torch.tensor([[0.0, 0.0, 3.0, 1.0], [2.0, 0.0, 5.0, 1.0]])

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_overlap_counts_as_other(self, dtype):
        # other = cols 2-4 = 3 + 4 + 5 = 12; all = cols 0-4 = 15 -> 0.8
        result = object_discrimination_index(self.S.to(dtype), 0, self.BOXES)
        assert result == ObjectDiscrimination(value=pytest.approx(0.8, rel=1e-12), other=12.0, all=15.0)

    def test_other_target(self):
        # other = cols 0-2 = 1 + 2 + 3 = 6 of 15
        result = object_discrimination_index(self.S, 1, self.BOXES)
        assert (result.other, result.all) == (6.0, 15.0)
        assert result.value == pytest.approx(0.4, rel=1e-12)

    def test_other_objects_are_a_union(self):
        # a third object on cols 3-5 overlapping object 1: other = cols 2-5 counted once = 3 + 4 + 5 + 6 = 18,
        # all = 21 -> 6/7 (summing per object would give 12 + 15 = 27)
        boxes = torch.cat([self.BOXES, torch.tensor([[3.0, 0.0, 6.0, 1.0]])])
        result = object_discrimination_index(self.S, 0, boxes)
        assert (result.other, result.all) == (18.0, 21.0)
        assert result.value == pytest.approx(6 / 7, rel=1e-12)

    def test_masks(self):
        # tighter masks: target {0, 1}, other {3}: other = 4, all = 1 + 2 + 4 = 7
        masks = torch.zeros(2, 1, 6, dtype=torch.bool)
        masks[0, 0, :2] = True
        masks[1, 0, 3] = True
        result = object_discrimination_index(self.S, 0, masks)
        assert (result.other, result.all) == (4.0, 7.0)
        assert result.value == pytest.approx(4 / 7, rel=1e-12)

    def test_masks_equal_to_boxes_give_the_same_result(self):
        masks = torch.stack([region_mask(b, (1, 6)) for b in self.BOXES])
        assert object_discrimination_index(self.S, 0, masks) == object_discrimination_index(self.S, 0, self.BOXES)

    def test_single_object(self):
        # no other object: other = 0, all = 1 + 2 + 3 = 6
        result = object_discrimination_index(self.S, 0, self.BOXES[:1])
        assert result == ObjectDiscrimination(value=0.0, other=0.0, all=6.0)

    def test_map_peaked_outside_every_object_is_nan(self):
        s = torch.zeros(1, 6)
        s[0, 5] = 9.0  # background only
        result = object_discrimination_index(s, 0, self.BOXES)
        assert math.isnan(result.value) and (result.other, result.all) == (0.0, 0.0)

    def test_all_zero_map_is_nan(self):
        assert math.isnan(object_discrimination_index(torch.zeros(1, 6), 1, self.BOXES).value)

    def test_negative_values_are_clipped(self):
        s = torch.tensor([[1.0, -100.0, 0.0, 3.0, 0.0, 0.0]])  # other = 3, all = 1 + 3 = 4
        assert object_discrimination_index(s, 0, self.BOXES).value == 0.75

    def test_target_from_a_tensor(self):
        assert object_discrimination_index(self.S, torch.tensor(1), self.BOXES).other == 6.0

    @pytest.mark.parametrize("target", [2, -1])
    def test_target_out_of_range(self, target):
        with pytest.raises(ValueError, match=f"target {target} out of range for 2"):
            object_discrimination_index(self.S, target, self.BOXES)

    def test_bad_region_shapes(self):
        with pytest.raises(ValueError, match=r"\(2, 5\)"):
            object_discrimination_index(self.S, 0, torch.zeros(2, 5))
        with pytest.raises(ValueError, match=r"\(2, 2, 6\)"):
            object_discrimination_index(self.S, 0, torch.zeros(2, 2, 6, dtype=torch.bool))


# ---------------------------------------------------------------------------------- visual explanation accuracy


class TestVisualExplanationAccuracy:
    # values 0..10 normalise to k / 10 exactly; the object is cols 5..10 (6 pixels)
    S = torch.arange(11.0).view(1, 11)
    MASK = torch.arange(11).view(1, 11) >= 5
    # at threshold j / 10 the map keeps {k >= j}: IoU = (11 - max(j, 5)) / (11 - min(j, 5))
    EXPECTED = [6 / 10, 6 / 9, 6 / 8, 6 / 7, 6 / 6, 5 / 6, 4 / 6, 3 / 6, 2 / 6]
    # trapezoid with spacing 0.1: half of the end values plus the inner ones
    EXPECTED_AUC = 0.1 * ((6 / 10 + 2 / 6) / 2 + 6 / 9 + 6 / 8 + 6 / 7 + 1 + 5 / 6 + 4 / 6 + 3 / 6)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_known_map(self, dtype):
        curve = visual_explanation_accuracy(self.S.to(dtype), self.MASK)
        assert isinstance(curve, Curve)
        assert curve.x.dtype == curve.y.dtype == torch.float64 and curve.x.device.type == "cpu"
        assert curve.x.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], abs=1e-15)
        # exact, including the pixel of value exactly 0.3 at threshold 0.3
        assert curve.y.tolist() == pytest.approx(self.EXPECTED, abs=1e-15)
        assert curve.auc == pytest.approx(self.EXPECTED_AUC, rel=1e-12)

    def test_min_max_normalised(self):
        # 7 * k + 2 normalises to k / 10 as well
        curve = visual_explanation_accuracy(7 * self.S + 2, self.MASK)
        assert curve.y.tolist() == pytest.approx(self.EXPECTED, abs=1e-12)

    def test_box_instead_of_mask(self):
        # centres 5.5 .. 10.5 lie in [5, 11]
        curve = visual_explanation_accuracy(self.S, box(5.0, 0.0, 11.0, 1.0))
        assert curve.y.tolist() == pytest.approx(self.EXPECTED, abs=1e-15)

    def test_custom_thresholds(self):
        # t = 0: all 11 pixels -> 6/11; t = 0.5: exactly the object -> 1; t = 1: pixel 10 only -> 1/6
        curve = visual_explanation_accuracy(self.S, self.MASK, torch.tensor([0.0, 0.5, 1.0]))
        assert curve.y.tolist() == pytest.approx([6 / 11, 1.0, 1 / 6], abs=1e-15)
        assert curve.auc == pytest.approx(0.5 * (6 / 11 + 1) / 2 + 0.5 * (1 + 1 / 6) / 2, rel=1e-12)

    def test_negative_values_are_clipped_before_normalising(self):
        # [-4, 0, 2, 4] clips to [0, 0, 2, 4] -> [0, 0, 0.5, 1]: at 0.5 the map keeps exactly the mask, IoU 1
        # (unclipped it would normalise to [0, 0.5, 0.75, 1] and keep 3 pixels, IoU 2/3)
        mask = torch.tensor([[False, False, True, True]])
        curve = visual_explanation_accuracy(torch.tensor([[-4.0, 0.0, 2.0, 4.0]]), mask, torch.tensor([0.5]))
        assert curve.y.tolist() == [1.0]
        assert curve.auc == 0.0  # a single point has no area

    @pytest.mark.parametrize("value", [0.0, 3.0])
    def test_constant_map_scores_zero(self, value):
        curve = visual_explanation_accuracy(torch.full((1, 11), value), self.MASK)
        assert curve.y.tolist() == [0.0] * 9 and curve.auc == 0.0

    def test_empty_mask_and_empty_prediction(self):
        # constant map keeps nothing, the mask is empty: the union is empty and the IoU is defined as 0
        curve = visual_explanation_accuracy(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))
        assert curve.y.tolist() == [0.0] * 9

    def test_errors(self):
        with pytest.raises(ValueError, match=r"\(1, 10\)"):
            visual_explanation_accuracy(self.S, torch.zeros(1, 10, dtype=torch.bool))
        with pytest.raises(ValueError, match="increasing"):
            visual_explanation_accuracy(self.S, self.MASK, torch.tensor([0.5, 0.5]))
        with pytest.raises(ValueError, match=r"thresholds of shape \[T\].*\(1, 2\)"):
            visual_explanation_accuracy(self.S, self.MASK, torch.tensor([[0.1, 0.2]]))


# ---------------------------------------------------------------------------------------- deletion / insertion


class TestPerturbationOrder:
    def test_highest_first_ties_in_row_major_order(self):
        # values 1, 3, 3, 2: the two 3s (flat 1 and 2) keep their order
        assert perturbation_order(torch.tensor([[1.0, 3.0], [3.0, 2.0]])).tolist() == [1, 2, 3, 0]

    def test_ties_are_stable_on_a_large_map(self):
        # every 7th pixel is 1, the rest 0: first the 1s in row-major order, then the 0s in row-major order
        s = torch.zeros(100, 100)
        s.view(-1)[::7] = 1.0
        ones = list(range(0, 10000, 7))
        zeros = [i for i in range(10000) if i % 7]
        assert perturbation_order(s).tolist() == ones + zeros

    def test_all_zero_map_is_row_major(self):
        order = perturbation_order(torch.zeros(2, 3, dtype=torch.float64))
        assert order.dtype == torch.int64 and order.tolist() == [0, 1, 2, 3, 4, 5]

    def test_negative_values_are_ordered_not_clipped(self):
        assert perturbation_order(torch.tensor([[-1.0, -3.0, 0.0]])).tolist() == [2, 0, 1]

    def test_bad_shape(self):
        with pytest.raises(ValueError, match=r"\(6,\)"):
            perturbation_order(torch.zeros(6))


class RecordingScore:
    """Fake detector score: how many pixels of the 2x2 box [2, 2, 4, 4] of a 4x4 image still hold ``reference``.

    Perturbed pixels hold noise (deletion) or zeros (insertion), never the reference values.
    """

    def __init__(self, reference: torch.Tensor):
        self.reference = reference
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        self.batches.append(batch.clone())
        same = (batch[:, :, 2:, 2:] == self.reference[:, 2:, 2:]).all(dim=1)
        return same.flatten(1).sum(1).to(batch.dtype)

    @property
    def images(self) -> torch.Tensor:
        return torch.cat(self.batches)


# distinct positive pixel values; saliency k at flat pixel k: the order is 15, 14, 13, ..., 0
IMAGE = (torch.arange(48.0) + 1).view(3, 4, 4) / 48
SALIENCY = torch.arange(16.0).view(4, 4)
# the box [2, 2, 4, 4] holds flat pixels 10, 11, 14, 15, at positions 5, 4, 1, 0 of the order


def changed_pixels(images: torch.Tensor, reference: torch.Tensor) -> list[list[int]]:
    """Flat indices of the pixels of each image that differ from ``reference`` in any channel."""
    changed = (images != reference).any(dim=1).flatten(1)
    return [row.nonzero().flatten().tolist() for row in changed]


class TestDeletion:
    def test_hand_computed_curve(self):
        score = RecordingScore(IMAGE)
        curve = deletion(IMAGE, SALIENCY, score, steps=8, pixels_per_step=1, eval_every=3,
                         generator=torch.Generator().manual_seed(0))
        # evaluated at k = 0, 3, 6 and always at the last step 8; n_k = 0, 3, 6, 8 pixels deleted
        assert len(score.batches) == 1 and score.images.shape == (4, 3, 4, 4)
        assert changed_pixels(score.images, IMAGE) == [[], [13, 14, 15], [10, 11, 12, 13, 14, 15], list(range(8, 16))]
        # box pixels left: 4, 2 (10 and 11), 0, 0 -> y = 1, 0.5, 0, 0 at x = 0, 3/8, 6/8, 1
        assert curve.x.dtype == curve.y.dtype == torch.float64
        assert curve.x.tolist() == [0.0, 0.375, 0.75, 1.0]
        assert curve.y.tolist() == [1.0, 0.5, 0.0, 0.0]
        # 100 * (3/8 * (1 + 0.5) / 2 + 3/8 * (0.5 + 0) / 2 + 2/8 * 0) = 100 * (0.28125 + 0.09375)
        assert curve.auc == pytest.approx(37.5, rel=1e-12)

    def test_noise_is_drawn_once_from_the_generator(self):
        score = RecordingScore(IMAGE)
        deletion(IMAGE, SALIENCY, score, steps=8, pixels_per_step=1, eval_every=3,
                 generator=torch.Generator().manual_seed(7))
        noise = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(7))
        last = score.images[-1]  # pixels 8..15 (rows 2 and 3) deleted
        assert torch.equal(last[:, 2:], noise[:, 2:]) and torch.equal(last[:, :2], IMAGE[:, :2])
        # the same pixel gets the same noise at every step
        for image in score.images[1:]:
            assert torch.equal(image[:, 3, 1:], noise[:, 3, 1:])
        again = RecordingScore(IMAGE)
        deletion(IMAGE, SALIENCY, again, steps=8, pixels_per_step=1, eval_every=3,
                 generator=torch.Generator().manual_seed(7))
        assert torch.equal(again.images, score.images)

    def test_float64_image(self):
        image = IMAGE.to(torch.float64)
        score = RecordingScore(image)
        curve = deletion(image, SALIENCY.to(torch.float64), score, steps=8, pixels_per_step=1, eval_every=3,
                         generator=torch.Generator().manual_seed(0))
        assert score.images.dtype == torch.float64
        assert curve.y.tolist() == [1.0, 0.5, 0.0, 0.0]
        noise = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.float64)
        assert torch.equal(score.images[-1][:, 2:], noise[:, 2:])

    def test_all_zero_map_deletes_in_row_major_order(self):
        score = RecordingScore(IMAGE)
        deletion(IMAGE, torch.zeros(4, 4), score, steps=1, pixels_per_step=3)
        assert changed_pixels(score.images, IMAGE) == [[], [0, 1, 2]]

    @pytest.mark.parametrize(
        ("area_box", "per_step"),
        [
            (box(0.0, 0.0, 20.0, 15.0), 3),  # area 300 -> int(3.0)
            (box(1.0, 1.0, 26.0, 11.0), 2),  # area 250 -> int(2.5) = 2
            (box(0.0, 0.0, 9.0, 11.0), 1),  # area 99 -> int(0.99) = 0 -> max(1, 0) = 1
        ],
    )
    def test_pixels_per_step_from_the_box_area(self, area_box, per_step):
        score = RecordingScore(IMAGE)
        deletion(IMAGE, SALIENCY, score, area_box, steps=4, eval_every=1)
        counts = [len(c) for c in changed_pixels(score.images, IMAGE)]
        assert counts == [k * per_step for k in range(5)]

    def test_evaluation_points_and_pixel_count_capped_at_the_image(self):
        # steps 20, every 10: k = 0, 10, 20; n = 0, 10, min(20, 16) = 16
        score = RecordingScore(IMAGE)
        curve = deletion(IMAGE, SALIENCY, score, steps=20, pixels_per_step=1, eval_every=10)
        assert curve.x.tolist() == [0.0, 0.5, 1.0]
        assert [len(c) for c in changed_pixels(score.images, IMAGE)] == [0, 10, 16]

    @pytest.mark.parametrize(
        ("steps", "eval_every", "ks"),
        [(10, 10, [0, 10]), (25, 10, [0, 10, 20, 25]), (3, 10, [0, 3]), (4, 1, [0, 1, 2, 3, 4])],
    )
    def test_last_step_is_always_evaluated(self, steps, eval_every, ks):
        curve = deletion(IMAGE, SALIENCY, RecordingScore(IMAGE), steps=steps, pixels_per_step=1,
                         eval_every=eval_every)
        assert curve.x.tolist() == [k / steps for k in ks]

    def test_batches_of_at_most_batch_size(self):
        # 4 evaluated images in batches of 3: two calls, of 3 and 1 images, in step order
        score = RecordingScore(IMAGE)
        curve = deletion(IMAGE, SALIENCY, score, steps=8, pixels_per_step=1, eval_every=3, batch_size=3,
                         generator=torch.Generator().manual_seed(0))
        assert [len(b) for b in score.batches] == [3, 1]
        assert curve.y.tolist() == [1.0, 0.5, 0.0, 0.0]

    def test_zero_reference_score_is_nan(self):
        curve = deletion(IMAGE, SALIENCY, lambda b: torch.zeros(len(b)), steps=2, pixels_per_step=1, eval_every=1)
        assert curve.y.isnan().all() and math.isnan(curve.auc)
        assert curve.x.tolist() == [0.0, 0.5, 1.0]

    def test_errors(self):
        def run(**kwargs):
            args = {"image": IMAGE, "saliency": SALIENCY, "score_fn": RecordingScore(IMAGE), "pixels_per_step": 1}
            args.update(kwargs)
            return deletion(**args)

        for name in ("steps", "eval_every", "pixels_per_step", "batch_size"):
            with pytest.raises(ValueError, match=name):
                run(**{name: 0})
        with pytest.raises(ValueError, match="pixels_per_step is None"):
            run(pixels_per_step=None)
        with pytest.raises(ValueError, match=r"image of shape \[3, H, W\].*\(4, 4, 4\)"):
            run(image=torch.zeros(4, 4, 4))
        with pytest.raises(ValueError, match=r"\(4, 5\)"):
            run(saliency=torch.zeros(4, 5))
        with pytest.raises(ValueError, match=r"box of shape \[4\].*\(2, 4\)"):
            run(box=torch.zeros(2, 4), pixels_per_step=None)
        with pytest.raises(ValueError, match=r"score_fn.*\[2\].*\(2, 1\)"):
            run(score_fn=lambda b: torch.zeros(len(b), 1), steps=1)


class TestInsertion:
    def test_hand_computed_curve_relative_to_the_original_image(self):
        score = RecordingScore(IMAGE)
        curve = insertion(IMAGE, SALIENCY, score, steps=8, pixels_per_step=1, eval_every=3)
        # one batch: the steps k = 0, 3, 6, 8 and then the original image
        assert len(score.batches) == 1 and score.images.shape == (5, 3, 4, 4)
        black = torch.zeros(3, 4, 4)
        assert changed_pixels(score.images, black) == [
            [], [13, 14, 15], [10, 11, 12, 13, 14, 15], list(range(8, 16)), list(range(16))
        ]
        assert torch.equal(score.images[-1], IMAGE)
        assert torch.equal(score.images[2][:, 2:3, 2:], IMAGE[:, 2:3, 2:])  # inserted pixels take the image's values
        # box pixels restored: 0, 2 (14, 15), 4, 4; the original image scores 4 -> y = 0, 0.5, 1, 1
        assert curve.x.tolist() == [0.0, 0.375, 0.75, 1.0]
        assert curve.y.tolist() == [0.0, 0.5, 1.0, 1.0]
        # 100 * (3/8 * (0 + 0.5) / 2 + 3/8 * (0.5 + 1) / 2 + 2/8 * (1 + 1) / 2) = 100 * (0.09375 + 0.28125 + 0.25)
        assert curve.auc == pytest.approx(62.5, rel=1e-12)

    def test_reference_in_the_last_batch(self):
        # 5 images in batches of 2: 2 + 2 + 1, the original image alone in the last call
        score = RecordingScore(IMAGE)
        curve = insertion(IMAGE, SALIENCY, score, steps=8, pixels_per_step=1, eval_every=3, batch_size=2)
        assert [len(b) for b in score.batches] == [2, 2, 1]
        assert torch.equal(score.batches[-1][0], IMAGE)
        assert curve.y.tolist() == [0.0, 0.5, 1.0, 1.0]

    def test_pixels_per_step_from_the_box_area(self):
        score = RecordingScore(IMAGE)
        insertion(IMAGE, SALIENCY, score, box(0.0, 0.0, 20.0, 15.0), steps=4, eval_every=2)
        # area 300 -> 3 pixels per step; k = 0, 2, 4 -> 0, 6, 12 pixels, then the original image (16)
        assert [len(c) for c in changed_pixels(score.images, torch.zeros(3, 4, 4))] == [0, 6, 12, 16]

    def test_float64_and_tied_saliency(self):
        # score = mean brightness + 0.25; the reference is the original image (0.25 + 0.25)
        image = torch.zeros(3, 2, 2, dtype=torch.float64)
        image[:, 0, 0] = 1.0  # mean 0.25
        curve = insertion(image, torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64),
                          lambda b: b.mean(dim=(1, 2, 3)) + 0.25, steps=4, pixels_per_step=1, eval_every=1)
        # order 1, 0, 2, 3: pixel 0 arrives at k = 2; scores 0.25, 0.25, 0.5, 0.5, 0.5 over reference 0.5
        assert curve.y.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0]
        # 100 * 0.25 * (0.5 + 0.75 + 1 + 1) = 81.25
        assert curve.auc == pytest.approx(81.25, rel=1e-12)

    def test_zero_reference_score_is_nan(self):
        curve = insertion(IMAGE, SALIENCY, lambda b: torch.zeros(len(b)), steps=2, pixels_per_step=1)
        assert curve.y.isnan().all() and math.isnan(curve.auc)

    def test_errors(self):
        with pytest.raises(ValueError, match=r"\(4, 4\)"):
            insertion(IMAGE[0], SALIENCY, RecordingScore(IMAGE), pixels_per_step=1)
        with pytest.raises(ValueError, match="pixels_per_step is None"):
            insertion(IMAGE, SALIENCY, RecordingScore(IMAGE))


# ------------------------------------------------------------------------------------------------- similarity


class TestSpearman:
    def test_hand_computed(self):
        # ranks differ by d = 0, 1, 1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
        assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)

    def test_ties_take_the_average_rank(self):
        # ranks a = 1, 2.5, 2.5, 4 and b = 1, 2, 3, 4 around 2.5: sum da db = 2.25 + 2.25 = 4.5,
        # sum da^2 = 4.5, sum db^2 = 5 -> 4.5 / sqrt(22.5)
        rho = spearman(torch.tensor([[1.0, 2.0], [2.0, 3.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        assert rho == pytest.approx(4.5 / math.sqrt(22.5), rel=1e-12)

    def test_monotone_maps(self):
        a = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
        assert spearman(a, a.exp()) == pytest.approx(1.0, abs=1e-12)
        assert spearman(a, -a) == pytest.approx(-1.0, abs=1e-12)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_scipy_with_ties(self, dtype):
        g = torch.Generator().manual_seed(1)
        a = torch.randint(0, 5, (9, 7), generator=g).to(dtype)  # many ties
        b = torch.rand(9, 7, generator=g, dtype=dtype).round(decimals=1)
        expected = scipy.stats.spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
        assert spearman(a, b) == pytest.approx(expected, rel=1e-12)

    def test_constant_map_is_nan(self):
        assert math.isnan(spearman(torch.zeros(3, 3), torch.rand(3, 3)))

    def test_errors(self):
        with pytest.raises(ValueError, match=r"\(3, 3\) and \(3, 4\)"):
            spearman(torch.zeros(3, 3), torch.zeros(3, 4))
        with pytest.raises(ValueError, match="non-empty"):
            spearman(torch.zeros(0), torch.zeros(0))


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    def normalise(x: np.ndarray) -> np.ndarray:
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    a_np, b_np = normalise(a.double().numpy()), normalise(b.double().numpy())
    return float(skimage.metrics.structural_similarity(
        a_np, b_np, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


class TestSsim:
    @pytest.mark.parametrize("shape", [(11, 11), (13, 29), (40, 32)])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_skimage(self, shape, dtype):
        g = torch.Generator().manual_seed(sum(shape))
        a = torch.rand(shape, generator=g, dtype=dtype)
        b = 0.6 * a + 0.4 * torch.rand(shape, generator=g, dtype=dtype) ** 3  # correlated, so SSIM is far from 0
        expected = skimage_ssim(a, b)
        assert expected > 0.3
        assert ssim(a, b) == pytest.approx(expected, rel=1e-9)

    def test_matches_skimage_on_a_blob_at_the_border(self):
        # the reflected boundary matters most where the signal touches the edge
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
        a = torch.exp(-((xx - 1) ** 2 + (yy - 2) ** 2) / 8)
        b = torch.exp(-((xx - 3) ** 2 + (yy - 1) ** 2) / 18)
        assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), rel=1e-9)

    def test_hand_computed(self):
        a = torch.rand(12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # identical after normalisation: every local term is (2 mu^2 + C1)(2 var + C2) / ((2 mu^2 + C1)(2 var + C2))
        assert ssim(a, 5 * a + 2) == pytest.approx(1.0, abs=1e-12)
        # two constant maps normalise to zeros: (C1 * C2) / (C1 * C2) = 1 everywhere
        assert ssim(torch.zeros(11, 11), torch.full((11, 11), 3.0)) == 1.0

    def test_errors(self):
        with pytest.raises(ValueError, match=r"H, W >= 11.*\(10, 12\)"):
            ssim(torch.zeros(10, 12), torch.zeros(10, 12))
        with pytest.raises(ValueError, match=r"\(11, 11\) and \(12, 11\)"):
            ssim(torch.zeros(11, 11), torch.zeros(12, 11))
