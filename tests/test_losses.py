"""Odam-Train's loss (odam.losses): a slow pair-by-pair reference, gradcheck, and the properties of Eq. 3."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from odam.losses import OdamTrainLoss, odam_train_loss


def reference(maps, gt, ious, image=None, boxes=None, negatives="all", weight=1.0, eps=1e-6):
    """Eq. 3 written out pair by pair."""
    n = len(maps)
    image = [0] * n if image is None else image.tolist()
    gt, ious = gt.tolist(), ious.tolist()
    con = sep = 0.0
    pairs = 0
    for key in dict.fromkeys(zip(image, gt, strict=True)):
        members = [i for i in range(n) if (image[i], gt[i]) == key]
        best = max(members, key=lambda i: (ious[i], -i))  # highest IoU, the first on ties
        for j in range(n):
            if j == best or image[j] != key[0]:
                continue
            cos = float(torch.nn.functional.cosine_similarity(maps[best], maps[j], dim=0))
            cos = min(max(cos, eps), 1 - eps)
            if gt[j] == key[1]:
                con -= math.log(cos)
                pairs += 1
            elif negatives == "all" or float(box_iou(boxes[best][None], boxes[j][None])) > 0:
                sep -= math.log(1 - cos)
                pairs += 1
    return (weight * (con + sep) / pairs if pairs else 0.0), con / max(pairs, 1), sep / max(pairs, 1), pairs


def _random_case(seed, n=14, d=30, device=None):
    """Drawn on the CPU, then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, d, generator=g, dtype=torch.float64) ** 3
    gt = torch.randint(0, 4, (n,), generator=g)
    image = torch.randint(0, 2, (n,), generator=g)
    ious = torch.rand(n, generator=g, dtype=torch.float64).round(decimals=1)  # ties on purpose
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 20], 1)
    return tuple(t.to(device) for t in (maps, gt, ious, image, boxes))


@pytest.mark.parametrize("negatives", ["all", "overlapping"])
@pytest.mark.parametrize("seed", range(6))
def test_loss_equals_a_pair_by_pair_reference(seed, negatives, device):
    maps, gt, ious, image, boxes = _random_case(seed, device=device)
    loss, stats = odam_train_loss(maps, gt, ious, image_index=image, boxes=boxes, negatives=negatives, weight=0.7)
    assert loss.device.type == device.type
    expected, con, sep, pairs = reference(maps, gt, ious, image, boxes, negatives, weight=0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert stats["con"].item() == pytest.approx(con, rel=1e-10, abs=1e-14)
    assert stats["sep"].item() == pytest.approx(sep, rel=1e-10, abs=1e-14)
    assert int(stats["con_pairs"] + stats["sep_pairs"]) == pairs


@pytest.mark.parametrize("negatives", ["all", "overlapping"])
def test_gradcheck_in_float64(negatives, device):
    maps, gt, ious, image, boxes = _random_case(1, n=8, d=6, device=device)
    maps = (maps + 0.1).requires_grad_(True)  # away from the clamp
    assert torch.autograd.gradcheck(
        lambda m: odam_train_loss(m, gt, ious, image_index=image, boxes=boxes, negatives=negatives)[0], (maps,))


def test_identical_maps_per_object_and_orthogonal_maps_across_objects_cost_almost_nothing():
    basis = torch.eye(6)
    gt = torch.tensor([0, 0, 0, 1, 1, 2])
    maps = basis[gt] * torch.tensor([1.0, 2, 3, 1, 5, 1])[:, None]  # scale does not matter to a cosine
    loss, stats = odam_train_loss(maps, gt, torch.rand(6))
    assert loss.item() < 1e-5
    # each best against every other object's maps
    assert int(stats["con_pairs"]) == 3 and int(stats["sep_pairs"]) == 3 + 4 + 5


def test_swapping_two_objects_maps_raises_the_loss():
    torch.manual_seed(0)
    centres = torch.eye(3) * 4
    maps = torch.cat([centres[0] + 0.3 * torch.rand(3, 3), centres[1] + 0.3 * torch.rand(3, 3)])
    gt = torch.tensor([0, 0, 0, 1, 1, 1])
    ious = torch.tensor([0.9, 0.6, 0.5, 0.8, 0.7, 0.6])
    before = odam_train_loss(maps, gt, ious)[0]
    swapped = maps[[0, 1, 3, 2, 4, 5]]  # one map of each object trades places
    assert odam_train_loss(swapped, gt, ious)[0] > before + 1.0


def test_the_best_prediction_is_the_one_with_the_highest_iou_and_the_first_on_ties():
    maps = torch.tensor([[1.0, 0], [0.0, 1], [1.0, 1]])
    gt = torch.zeros(3, dtype=torch.int64)
    # best = map 1 (IoU 0.9): cos with map 0 is 0 (clamped), with map 2 is 0.707
    loss = odam_train_loss(maps, gt, torch.tensor([0.5, 0.9, 0.9]))[0]
    assert loss.item() == pytest.approx((-math.log(1e-6) - math.log(2 ** -0.5)) / 2, rel=1e-6)


def test_weight_scales_the_loss_and_the_module_equals_the_function():
    maps, gt, ious, image, boxes = _random_case(3)
    one = odam_train_loss(maps, gt, ious, image_index=image)[0]
    assert odam_train_loss(maps, gt, ious, image_index=image, weight=2.5)[0].item() == pytest.approx(2.5 * one.item())
    module = OdamTrainLoss(negatives="overlapping", weight=0.3)
    a = module(maps, gt, ious, boxes, image)[0]
    b = odam_train_loss(maps, gt, ious, boxes=boxes, image_index=image, negatives="overlapping", weight=0.3)[0]
    assert a.item() == b.item()


def test_no_pairs_gives_a_zero_loss_that_still_backpropagates():
    maps = torch.rand(1, 5, requires_grad=True)
    loss, stats = odam_train_loss(maps, torch.tensor([0]), torch.tensor([0.5]))
    loss.backward()
    assert loss.item() == 0 and int(stats["con_pairs"]) == 0 and maps.grad.abs().sum() == 0
    empty, _ = odam_train_loss(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert empty.item() == 0


def test_pairs_never_cross_images():
    maps = torch.tensor([[1.0, 0], [1.0, 0]])
    # the same object id in two images: two one-member groups, no pair at all
    _, stats = odam_train_loss(maps, torch.tensor([0, 0]), torch.tensor([0.5, 0.6]), image_index=torch.tensor([0, 1]))
    assert int(stats["con_pairs"]) == 0 and int(stats["sep_pairs"]) == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"maps": torch.rand(3)}, "maps must be Tensor[N, D]"),
    ({"gt_index": torch.zeros(2, dtype=torch.int64)}, "gt_index must be Tensor[3]"),
    ({"ious": torch.rand(3, 1)}, "ious must be Tensor[3]"),
    ({"negatives": "near"}, "negatives must be one of"),
    ({"negatives": "overlapping"}, "needs boxes of shape [3, 4]"),
    ({"eps": 0.0}, "eps must be in"),
])
def test_bad_input_is_named(kwargs, message):
    args = {"maps": torch.rand(3, 4), "gt_index": torch.tensor([0, 0, 1]), "ious": torch.rand(3)} | kwargs
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        odam_train_loss(**args)


def test_half_precision_maps_give_the_float32_loss():
    maps, gt, ious, image, _ = _random_case(5)
    full = odam_train_loss(maps.float(), gt, ious, image_index=image)[0]
    half = odam_train_loss(maps.half(), gt, ious, image_index=image)[0]
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=2e-3)
