"""The fast Odam-NMS pass against the previous one and against a plain greedy loop (no timings here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import odam.nms.ops as ops
from odam.heatmaps import pooling_matrix, undefined, unit_vectors, vector_grid
from odam.nms import batched_odam_nms, odam_nms


def _greedy_loop(dup: np.ndarray) -> list[int]:
    """Keep each candidate (in order) unless a kept one before it has it as a duplicate (``dup[kept, it]``)."""
    kept: list[int] = []
    for p in range(len(dup)):
        if not any(dup[k, p] for k in kept):
            kept.append(p)
    return kept


@pytest.mark.parametrize("block", [1, 3, 64, 1000])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 0.9])
def test_greedy_sorted_is_the_greedy_loop(block: int, density: float) -> None:
    # an arbitrary relation, not even symmetric: the pass must read dup[earlier kept, later] and nothing else
    rng = np.random.default_rng(int(density * 100) + block)
    n = 300
    dup = torch.as_tensor(rng.random((n, n)) < density)

    def duplicate(rows: torch.Tensor | slice, cols: torch.Tensor | slice) -> torch.Tensor:
        return dup[rows][:, cols]

    got = ops._greedy_sorted(n, duplicate, torch.device("cpu"), block=block)
    assert got.dtype == torch.int64
    assert got.tolist() == _greedy_loop(dup.numpy())


def _bench_like(seed: int, n: int, clustered: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if clustered:
        centres = torch.rand(40, 2, generator=g) * 400
        which = torch.randint(40, (n,), generator=g)
        xy = (centres[which] + torch.randn(n, 2, generator=g) * 6).round()
        wh = (40 + torch.rand(n, 2, generator=g) * 40).round()
        vectors = torch.rand(40, 400, generator=g)[which] + 0.4 * torch.rand(n, 400, generator=g)
    else:
        xy = torch.rand(n, 2, generator=g) * 3000
        wh = torch.full((n, 2), 20.0)
        vectors = torch.rand(n, 400, generator=g)
    scores = (torch.rand(n, generator=g) * 50).round() / 50  # many ties
    return torch.cat([xy, xy + wh], 1), scores, vectors


@pytest.mark.parametrize("clustered", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_odam_nms_equals_previous_block_pass(seed: int, clustered: bool) -> None:
    boxes, scores, vectors = _bench_like(seed, 1000, clustered)
    for t_iou, low, high in [(0.5, 0.2, 0.8), (0.3, 0.0, 0.5), (0.5, -1.0, 2.0), (0.7, 0.5, 0.95)]:
        fast = odam_nms(boxes, scores, vectors, t_iou, low, high)
        previous = ops.odam_nms_reference(boxes, scores, vectors, None, t_iou, low, high)
        assert fast.tolist() == previous.tolist(), (t_iou, low, high)
    labels = torch.randint(3, (len(boxes),), generator=torch.Generator().manual_seed(seed))
    assert batched_odam_nms(boxes, scores, vectors, labels).tolist() == ops.odam_nms_reference(
        boxes, scores, vectors, labels).tolist()


def test_odam_nms_at_the_thresholds() -> None:
    # IoU exactly 0.5 (and 1) between boxes, correlations exactly 0.75 / 0 / 1 between maps (multiples of 1/8)
    signs = ["1111111100000000", "1111110100000010", "1111000011110000", "1110111100010000"]
    vectors = torch.tensor([[4.0 if c == "1" else 2.0 for c in s] for s in signs]).repeat(50, 1)
    base = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2], [10, 10, 12, 12]])
    boxes = torch.cat([base + 20 * k for k in range(50)])  # 50 copies, far apart from one another
    scores = torch.linspace(1, 0, 200)
    for low, high in [(0.75, 0.75), (0.74, 0.76), (0.0, 1.0), (-0.01, 0.75), (0.75, 1.0), (0.74, 0.74)]:
        for t_iou in (0.5, 0.51, 1.0):
            fast = odam_nms(boxes, scores, vectors, t_iou, low, high).tolist()
            assert fast == ops.odam_nms_reference(boxes, scores, vectors, None, t_iou, low, high).tolist()


def test_unit_vectors_is_the_formula() -> None:
    x = torch.rand(40, 30)
    x[3] = 2.0  # constant
    x[5] = 0.0
    x[7] = 3.0
    x[7, 0] = torch.nextafter(torch.tensor(3.0), torch.tensor(4.0))  # constant up to float32 rounding
    c = x - x.mean(1, keepdim=True)
    expected = torch.where(undefined(x)[:, None], torch.zeros_like(c), c / c.norm(dim=1, keepdim=True).clamp_min(1e-30))
    assert torch.equal(unit_vectors(x), expected)
    assert unit_vectors(x)[[3, 5, 7]].abs().sum() == 0


@pytest.mark.parametrize(("height", "width", "short_edge"), [(320, 320, 50), (97, 203, 50), (30, 45, 50), (7, 5, 3)])
def test_pooling_matrix_is_the_block_average(height: int, width: int, short_edge: int) -> None:
    maps = torch.rand(3, height, width, dtype=torch.float64)
    rows, cols = vector_grid(height, width, short_edge)
    a_y = pooling_matrix(height, rows).double()
    a_x = pooling_matrix(width, cols).double()
    expected = F.adaptive_avg_pool2d(maps[:, None], (rows, cols))[:, 0]
    torch.testing.assert_close(a_y @ maps @ a_x.T, expected, rtol=1e-6, atol=1e-6)


def test_unit_vectors_rows_is_indexing_first() -> None:
    x = torch.rand(40, 30)
    x[3] = 2.0  # constant: zero
    rows = torch.tensor([5, 3, 39, 0, 5])
    for centred in (True, False):
        assert torch.equal(unit_vectors(x, centred, rows=rows), unit_vectors(x[rows], centred))
        assert torch.equal(unit_vectors(x.double(), centred, rows=rows), unit_vectors(x.double()[rows], centred))
    before = x.clone()
    unit_vectors(x, rows=rows)
    unit_vectors(x)
    assert torch.equal(x, before)  # the caller's vectors are never changed in place


def _near_thresholds(seed: int, n: int = 600, dim: int = 2500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups of boxes, half overlapping a leader (IoU 2/3) and half apart, whose maps correlate with the
    leader's within 0.01 of T^l = 0.2 or T^h = 0.8: where bfloat16 rounding alone would decide wrongly."""
    g = torch.Generator().manual_seed(seed)
    groups = n // 6
    basis = torch.linalg.qr(torch.randn(dim, 2 * groups, generator=g, dtype=torch.float64))[0].T  # orthonormal
    basis = basis - basis.mean(1, keepdim=True)  # centring keeps the correlations of these near what they were
    vectors, boxes = [], []
    for k in range(groups):
        e1, e2 = basis[2 * k], basis[2 * k + 1]
        x0 = 100.0 * k
        for j in range(6):
            target = (0.2 if j % 2 else 0.8) + (torch.rand(1, generator=g, dtype=torch.float64).item() - 0.5) * 0.02
            if j == 0:
                target = 1.0
            vectors.append(target * e1 + (1 - target ** 2) ** 0.5 * e2)
            dx = 0.0 if j == 0 else (2.0 if j < 3 else 50.0)  # IoU 2/3 with the leader, or apart
            boxes.append([x0 + dx, 0.0, x0 + dx + 10, 10.0])
    scores = torch.linspace(1, 0.01, len(boxes))
    return torch.tensor(boxes), scores, (torch.stack(vectors) + 5).float()  # an offset that centring removes


@pytest.mark.parametrize("seed", range(2))
def test_bfloat16_prepass_keeps_the_float32_set(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [_bench_like(seed, 1000, True), _bench_like(seed, 1000, False), _near_thresholds(seed)]
    for boxes, scores, vectors in cases:
        for t_iou, low, high in [(0.5, 0.2, 0.8), (0.3, 0.0, 0.5), (0.7, 0.5, 0.95)]:
            exact = odam_nms(boxes, scores, vectors, t_iou, low, high, prepass=False)
            coarse = odam_nms(boxes, scores, vectors, t_iou, low, high, prepass=True)
            assert coarse.tolist() == exact.tolist() == ops.odam_nms_reference(
                boxes, scores, vectors, None, t_iou, low, high).tolist(), (t_iou, low, high)
    # the data needs the float32 second look: without its margin, bfloat16 alone decides some pairs wrongly
    boxes, scores, vectors = _near_thresholds(seed)
    exact = odam_nms(boxes, scores, vectors, 0.5, 0.2, 0.8, prepass=False)
    monkeypatch.setattr(ops, "_coarse_margin", lambda dim: 0.0)
    assert odam_nms(boxes, scores, vectors, 0.5, 0.2, 0.8, prepass=True).tolist() != exact.tolist()


@pytest.mark.parametrize("dim", [16, 400, 2500, 10000])
def test_coarse_margin_bounds_the_bfloat16_error(dim: int) -> None:
    unit = unit_vectors(torch.rand(200, dim, generator=torch.Generator().manual_seed(dim)), centred=False)
    exact = unit.double() @ unit.double().T
    rough = unit.bfloat16()
    for rows, cols in [(slice(None), slice(None)), (slice(0, 1), slice(None)), (slice(None), slice(0, 1)),
                       (slice(3, 67), slice(67, None))]:  # one row, one column, a block: every kernel's shape
        error = ((rough[rows] @ rough[cols].T).double() - exact[rows, cols]).abs().max()
        assert error <= ops._coarse_margin(dim)


def test_bfloat16_prepass_with_every_pair_near_a_threshold() -> None:
    # maps of one look (correlations 0.80 +- 0.004) and T^h inside that spread: every row needs float32
    g = torch.Generator().manual_seed(3)
    vectors = torch.rand(1, 2500, generator=g) + 0.5 * torch.rand(300, 2500, generator=g)
    xy = torch.rand(300, 2, generator=g) * 5000
    boxes = torch.cat([xy, xy + 20], 1)
    scores = torch.rand(300, generator=g)
    corr = unit_vectors(vectors) @ unit_vectors(vectors).T
    high = float(corr[~torch.eye(300, dtype=torch.bool)].median())
    exact = odam_nms(boxes, scores, vectors, 0.5, 0.2, high, prepass=False)
    assert 1 < len(exact) < 299
    assert odam_nms(boxes, scores, vectors, 0.5, 0.2, high, prepass=True).tolist() == exact.tolist()


def test_bfloat16_prepass_only_with_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    many = torch.zeros(ops._COARSE_FROM, 8)
    assert not ops.prepass_pays(len(many) - 1)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not torch.backends.mkldnn.enabled
    assert not ops.prepass_pays(len(many))


@pytest.mark.parametrize("dim", [16, 256, 4096])
def test_coarse_margin_bounds_the_worst_rounding(dim: int) -> None:
    # every element just under half a bfloat16 step above a power of two: all round down by almost 2**-8 of
    # themselves, so the errors of a product's terms add up instead of cancelling (about 2 * 2**-8 in all)
    element = dim ** -0.5 * (1 + 0.99 * 2.0 ** -8)
    unit = torch.full((2, dim), element)
    exact = (unit.double() @ unit.double().T)[0, 1] / (dim * element ** 2)  # as for vectors of unit length
    rough = (unit.bfloat16() @ unit.bfloat16().T).double()[0, 1] / (dim * element ** 2)
    assert 0.007 < abs(rough - exact) <= ops._coarse_margin(dim)


def test_bfloat16_prepass_at_the_thresholds() -> None:
    signs = ["1111111100000000", "1111110100000010", "1111000011110000", "1110111100010000"]
    vectors = torch.tensor([[4.0 if c == "1" else 2.0 for c in s] for s in signs]).repeat(50, 1)
    base = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2], [10, 10, 12, 12]])
    boxes = torch.cat([base + 20 * k for k in range(50)])
    scores = torch.linspace(1, 0, 200)
    for low, high in [(0.75, 0.75), (0.74, 0.76), (0.0, 1.0), (-0.01, 0.75), (0.75, 1.0)]:
        for t_iou in (0.5, 1.0):
            coarse = odam_nms(boxes, scores, vectors, t_iou, low, high, prepass=True).tolist()
            assert coarse == ops.odam_nms_reference(boxes, scores, vectors, None, t_iou, low, high).tolist()


def test_overlaps_are_box_iou_to_the_bit() -> None:
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(300, 2, generator=g) * 100).round()  # on a grid, so boxes touch, nest and repeat
    wh = (torch.rand(300, 2, generator=g) * 30).round()  # some of zero width or height (IoU 0 / 0)
    boxes = torch.cat([xy, xy + wh], 1)
    overlaps = ops._Overlaps(boxes)
    for rows, cols in [(slice(0, 64), slice(64, 300)), (torch.tensor([5, 3, 7]), torch.arange(300)),
                       (slice(10, 20), torch.tensor([299, 0, 11]))]:
        expected = torchvision.ops.box_iou(boxes[rows], boxes[cols])
        torch.testing.assert_close(overlaps(rows, cols), expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(overlaps(slice(0, 300), slice(0, 300))).any()  # the degenerate case was there
