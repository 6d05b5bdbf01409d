"""FeatureNMS's embedding loss and its trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import odam
from odam.losses import pair_margin_loss
from odam.train.embedding import EmbeddingTrainer


def _reference(e, gt, image, alpha, beta):
    same, diff = [], []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            if image[i] != image[j]:
                continue
            d = float(torch.linalg.vector_norm(e[i] - e[j]))
            if gt[i] == gt[j]:
                same.append(max(0.0, alpha + d - beta))
            else:
                diff.append(max(0.0, alpha - (d - beta)))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return mean(same) + mean(diff), len(same), len(diff)


@pytest.mark.parametrize("seed", range(4))
def test_pair_margin_loss_matches_a_pair_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = [1, 5, 12, 30][seed]
    e = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    gt = torch.randint(3, (n,), generator=g)
    image = torch.randint(2, (n,), generator=g)
    loss, stats = pair_margin_loss(e, gt, image_index=image, alpha=0.2, beta=1.0, weight=0.5)
    expected, n_same, n_diff = _reference(e, gt.tolist(), image.tolist(), 0.2, 1.0)
    assert loss.item() == pytest.approx(0.5 * expected, rel=1e-6, abs=1e-7)
    assert (int(stats["same_pairs"]), int(stats["different_pairs"])) == (n_same, n_diff)


def test_pair_margin_loss_gradcheck_and_margins() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([0, 0, 1, 1, 2, 2])

    assert torch.autograd.gradcheck(lambda x: pair_margin_loss(x, gt, alpha=0.3, beta=0.9)[0], (e,))
    # same object within beta - alpha and different objects beyond beta + alpha cost nothing
    close = torch.tensor([[0.0, 0], [0.79, 0], [3.0, 0]])
    assert pair_margin_loss(close, torch.tensor([0, 0, 1]))[0].item() == 0.0
    far = torch.tensor([[0.0, 0], [0.9, 0], [1.1, 0]])  # same pair 0.1 over, different pair (0.2) 1.0 under
    assert pair_margin_loss(far, torch.tensor([0, 0, 1]))[0].item() == pytest.approx(0.1 + (1.0 + 0.1) / 2)


@pytest.mark.parametrize("arch", ["fcos", "fasterrcnn"])
def test_trainer_overfits_and_cleans_up(arch: str) -> None:
    torch.manual_seed(0)
    model = odam.create_model(f"odam:{arch}", num_classes=2, min_size=96, max_size=96, embedding_dim=8).train()
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(1))]
    targets = [{"boxes": torch.tensor([[4.0, 4, 40, 80], [20, 2, 60, 70], [50, 10, 90, 90]]),
                "labels": torch.tensor([1, 1, 1])}]
    trainer = EmbeddingTrainer(model)
    optimiser = torch.optim.SGD(model.embedding_head.parameters(), lr=0.5)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # the same proposals each step
        with trainer.capture():
            model(images, targets)
        loss, stats = trainer.loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert stats["same_pairs"] > 0 and stats["different_pairs"] > 0
    assert losses[-1] < 0.5 * losses[0]
    assert not any(m._forward_hooks for m in model.modules())
    assert "compute_loss" not in vars(model.head) if arch == "fcos" else \
        "select_training_samples" not in vars(model.roi_heads)
    with pytest.raises(RuntimeError, match="no training forward pass"):
        trainer.loss()


def test_trainer_errors() -> None:
    with pytest.raises(ValueError, match="no embedding head"):
        EmbeddingTrainer(odam.create_model("odam:fcos", num_classes=2))
    model = odam.create_model("odam:fcos", num_classes=2, embedding_dim=4)
    with pytest.raises(ValueError, match="max_positives"):
        EmbeddingTrainer(model, max_positives=1)
    with pytest.raises(ValueError, match="embedding_dim"):
        odam.create_model("odam:fcos", num_classes=2, embedding_dim=-1)
