"""odam.nms against slow references that follow the papers' pseudo-code line by line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from odam.nms import (
    batched_odam_nms,
    correlation,
    feature_nms,
    heatmap_vectors,
    nms,
    odam_nms,
    soft_nms,
)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pearson(u, v) -> float:
    u = np.asarray(u, np.float64) - np.mean(u)
    v = np.asarray(v, np.float64) - np.mean(v)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))


def _cosine(u, v) -> float:
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))


def _reference_odam_nms(boxes, scores, vectors, t_iou, low, high, labels=None, corr_fn=None):
    """Algorithm 1 of the paper, one pair at a time."""
    corr_fn = corr_fn or _pearson
    boxes, vectors = boxes.tolist(), vectors.tolist()
    P = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))  # SORT(P); stable: ties in index order
    D = []
    while P:
        p = P.pop(0)
        is_duplicate = False
        for d in D:
            if labels is not None and labels[p] != labels[d]:
                continue
            iou = _iou(boxes[p], boxes[d])
            corr = corr_fn(vectors[p], vectors[d])
            if iou >= t_iou and corr > low:  # noqa: SIM114 (Algorithm 1's two branches, as written)
                is_duplicate = True
            elif iou < t_iou and corr > high:
                is_duplicate = True
        if not is_duplicate:
            D.append(p)
    return D


def _reference_feature_nms(boxes, scores, emb, low, high, distance):
    boxes, emb = boxes.tolist(), np.asarray(emb, np.float64)
    P = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    D = []
    for p in P:
        duplicate = False
        for d in D:
            iou = _iou(boxes[p], boxes[d])
            if iou > high or (iou >= low and np.linalg.norm(emb[p] - emb[d]) <= distance):
                duplicate = True
        if not duplicate:
            D.append(p)
    return D


def _reference_soft_nms(boxes, scores, sigma, threshold, method, t_iou):
    boxes = boxes.tolist()
    s = [float(x) for x in scores]
    remaining = [i for i in range(len(s)) if s[i] >= threshold]
    keep, decayed = [], []
    while remaining:
        best = max(remaining, key=lambda i: (s[i], -i))
        keep.append(best)
        decayed.append(s[best])
        remaining.remove(best)
        for i in remaining:
            iou = _iou(boxes[best], boxes[i])
            if method == "gaussian":
                s[i] *= math.exp(-iou * iou / sigma)
            elif iou > t_iou:
                s[i] *= 1 - iou
        remaining = [i for i in remaining if s[i] >= threshold]
    return keep, decayed


def _crowd(seed: int, n: int, objects: int = 6, dim: int = 64, tie_every: int = 0, device: torch.device | None = None):
    """Candidates clustered on a few overlapping objects, with heat maps that resemble their object's (drawn on the
    CPU, then moved to ``device``)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 60
    which = torch.randint(objects, (n,), generator=g)
    xy = centres[which] + torch.randn(n, 2, generator=g) * 4
    wh = 20 + torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + wh], 1).round()  # integer corners: many exact IoU values
    prototypes = torch.rand(objects, dim, generator=g)
    vectors = prototypes[which] + torch.rand(n, dim, generator=g) * torch.rand(n, 1, generator=g) * 2
    scores = torch.rand(n, generator=g)
    if tie_every:
        scores = (scores * tie_every).round() / tie_every  # many equal scores
    return boxes.to(device), scores.to(device), vectors.to(device)


@pytest.mark.parametrize("seed", range(12))
def test_odam_nms_matches_algorithm_1(seed: int, device: torch.device) -> None:
    n = [1, 2, 30, 80, 300][seed % 5]
    boxes, scores, vectors = _crowd(seed, n, tie_every=4 if seed % 2 else 0, device=device)
    g = np.random.default_rng(seed)
    for t_iou, low, high in [(0.5, 0.2, 0.8), (0.3, 0.0, 1.0), tuple(sorted(g.uniform(0, 1, 3)))]:
        keep = odam_nms(boxes, scores, vectors, t_iou, low, high)
        assert keep.device.type == device.type
        assert keep.tolist() == _reference_odam_nms(boxes, scores, vectors, t_iou, low, high)


@pytest.mark.parametrize("seed", range(3))
def test_odam_nms_by_cosine(seed: int, device: torch.device) -> None:
    boxes, scores, vectors = _crowd(seed, 120, device=device)
    got = odam_nms(boxes, scores, vectors, 0.5, 0.9, 0.97, centred=False).tolist()
    assert got == _reference_odam_nms(boxes, scores, vectors, 0.5, 0.9, 0.97, corr_fn=_cosine)
    assert got != odam_nms(boxes, scores, vectors, 0.5, 0.9, 0.97).tolist()  # the two measures differ here


def test_odam_nms_blocks_agree_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes, scores, vectors = _crowd(3, 600, objects=30)
    whole = odam_nms(boxes, scores, vectors)
    import odam.nms.ops as module

    monkeypatch.setattr(module, "_BLOCK", 7)
    assert odam_nms(boxes, scores, vectors).tolist() == whole.tolist()
    monkeypatch.setattr(module, "_BLOCK", 10_000)
    assert odam_nms(boxes, scores, vectors).tolist() == whole.tolist()


def _signs(bits: str) -> list[float]:
    # 16 entries, eight +1 and eight -1 around a mean of 3: centred values are exactly +-1, so every
    # Pearson correlation between two of them is an exact multiple of 1/8.
    assert len(bits) == 16 and bits.count("1") == 8
    return [4.0 if b == "1" else 2.0 for b in bits]


def test_odam_nms_threshold_edges_are_exact(device: torch.device) -> None:
    a = "1111111100000000"
    b = "1111110100000010"  # 2 disagreements with a: corr 0.75
    c = "1111000011110000"  # 8 disagreements with a: corr 0; with b: corr 0 as well
    d = "1110111100010000"  # 2 disagreements with a: corr 0.75
    vectors = torch.tensor([_signs(a), _signs(b), _signs(c), _signs(d)], device=device)
    assert correlation(vectors)[0].tolist() == [1.0, 0.75, 0.0, 0.75]
    # 0 and 1 overlap with IoU exactly 0.5; 0 and 3 are apart (IoU 0); 2 repeats 0's box.
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2], [10, 10, 12, 12]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    for low, high in [(0.75, 0.75), (0.74, 0.76), (0.76, 0.74), (0.0, 1.0), (-0.01, 0.75)]:
        got = odam_nms(boxes, scores, vectors, 0.5, low, high).tolist()
        assert got == _reference_odam_nms(boxes, scores, vectors, 0.5, low, high), (low, high)
    # corr == T_l at IoU == T_iou is not a duplicate; corr == T_h apart is not one either
    assert odam_nms(boxes, scores, vectors, 0.5, 0.75, 0.75).tolist() == [0, 1, 2, 3]
    assert odam_nms(boxes, scores, vectors, 0.5, 0.74, 0.74).tolist() == [0, 2]
    assert odam_nms(boxes, scores, vectors, 0.51, 0.74, 0.76).tolist() == [0, 1, 2, 3]


def test_classical_limit_and_torchvision(device: torch.device) -> None:
    boxes, scores, vectors = _crowd(5, 200, device=device)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.5).tolist() == expected.tolist()
    # low = -1 and high > 1: the correlation can never matter, so Odam-NMS is NMS with IoU >= T
    got = odam_nms(boxes, scores, vectors, 0.5 + 1e-6, -1.0, 1.1)
    assert got.tolist() == expected.tolist()


def test_batched_odam_nms_keeps_classes_apart(device: torch.device) -> None:
    boxes, scores, vectors = _crowd(7, 120, device=device)
    labels = torch.randint(3, (120,), generator=torch.Generator().manual_seed(1)).to(device)
    got = batched_odam_nms(boxes, scores, vectors, labels, 0.5, 0.2, 0.8)
    assert got.tolist() == _reference_odam_nms(boxes, scores, vectors, 0.5, 0.2, 0.8, labels.tolist())
    # per class, the same as running each class alone
    for c in range(3):
        idx = torch.where(labels == c)[0]
        alone = idx[odam_nms(boxes[idx], scores[idx], vectors[idx])]
        assert sorted(alone.tolist()) == sorted(i for i in got.tolist() if labels[i] == c)


@pytest.mark.parametrize("seed", range(6))
def test_feature_nms_matches_reference(seed: int, device: torch.device) -> None:
    boxes, scores, _ = _crowd(seed, [1, 40, 150][seed % 3], tie_every=3 if seed % 2 else 0, device=device)
    g = torch.Generator().manual_seed(seed)
    emb = (torch.nn.functional.normalize(torch.randn(len(boxes), 32, generator=g), dim=1) * 0.8).to(device)
    for low, high, distance in [(0.1, 0.9, 1.0), (0.3, 0.6, 1.2), (0.0, 0.0, 0.0)]:
        got = feature_nms(boxes, scores, emb, low, high, distance).tolist()
        assert got == _reference_feature_nms(boxes, scores, emb.cpu(), low, high, distance)


def test_feature_nms_edges(device: torch.device) -> None:
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2]], device=device)  # IoU(0, 1) = 0.5 exactly
    emb = torch.tensor([[0.0, 0], [1.0, 0], [3.0, 4]], device=device)  # distance(0, 1) = 1 exactly, (0, 2) = 5
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    assert feature_nms(boxes, scores, emb, 0.5, 0.9, 1.0).tolist() == [0]  # 1: IoU = low, distance = d
    assert feature_nms(boxes, scores, emb, 0.5, 1.0, 0.99).tolist() == [0, 1, 2]  # 2: IoU 1 is not > high
    assert feature_nms(boxes, scores, emb, 0.51, 0.9, 1.0).tolist() == [0, 1]  # 1 below low: distinct


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_matches_reference(method: str, seed: int, device: torch.device) -> None:
    boxes, scores, _ = _crowd(seed, [0, 1, 50, 150][seed], tie_every=5 if seed % 2 else 0, device=device)
    keep, decayed = soft_nms(boxes, scores, 0.5, 0.05, method, 0.3)
    ref_keep, ref_decayed = _reference_soft_nms(boxes, scores, 0.5, 0.05, method, 0.3)
    assert keep.tolist() == ref_keep and decayed.device.type == device.type
    np.testing.assert_allclose(decayed.cpu().numpy(), ref_decayed, rtol=1e-5)


def test_soft_nms_writes_decayed_scores_back() -> None:
    # Two boxes with IoU 0.5: the second's score is decayed by exp(-0.25 / 0.5) and that is what comes back,
    # which reorders it below a weaker box far away.
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [10, 10, 12, 12]])
    keep, decayed = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.5]), sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(decayed.tolist(), [0.9, 0.5, 0.8 * math.exp(-0.5)], rtol=1e-6)
    keep, decayed = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.5]), method="linear", iou_threshold=0.3)
    np.testing.assert_allclose(decayed.tolist(), [0.9, 0.5, 0.4], rtol=1e-6)
    # a decayed score under the threshold drops the box
    keep, _ = soft_nms(boxes, torch.tensor([0.9, 0.08, 0.5]), sigma=0.5)
    assert keep.tolist() == [0, 2]


def test_correlation_is_pearson(device: torch.device) -> None:
    x = torch.rand(20, 50, dtype=torch.float64)
    x[3] = 2.0  # constant: 0 everywhere
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nan_to_num(np.corrcoef(x.numpy()))  # NaN for the constant row -> 0
    np.testing.assert_allclose(correlation(x.to(device)).cpu().numpy(), expected, atol=1e-6)


def test_heatmap_vectors_short_edge(device: torch.device) -> None:
    maps = torch.arange(2 * 100 * 200, dtype=torch.float32, device=device).reshape(2, 100, 200)
    v = heatmap_vectors(maps, 50)
    assert v.shape == (2, 50 * 100)
    assert v[0, 0] == maps[0, :2, :2].mean()
    with pytest.raises(ValueError, match="short_edge"):
        heatmap_vectors(maps, 0)


def test_empty_and_bad_input() -> None:
    empty = torch.zeros(0, 4)
    assert odam_nms(empty, torch.zeros(0), torch.zeros(0, 10)).shape == (0,)
    assert feature_nms(empty, torch.zeros(0), torch.zeros(0, 32)).shape == (0,)
    assert soft_nms(empty, torch.zeros(0))[0].shape == (0,)
    assert nms(empty, torch.zeros(0)).dtype == torch.int64
    with pytest.raises(ValueError, match=r"boxes of shape \[N, 4\]"):
        odam_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"vectors of shape \[3, D\]"):
        odam_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="method"):
        soft_nms(torch.zeros(3, 4), torch.zeros(3), method="box")
