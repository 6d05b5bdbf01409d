"""Odam-Train inside a training step (odam.train.odam_train): batched maps against slow per-positive references,
the model left as it was, second-order gradients, a short overfit where the auxiliary loss falls, and the CLI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import odam
from odam.cli import main
from odam.data.synthcrowd import render_scene
from odam.models import bundled_path, load_checkpoint
from odam.train.odam_train import OdamTrainer, _paste, _to_grid


def _scene(index, size=160):
    image, objects = render_scene(seed=11, index=index, size=size)
    kept = [o for o in objects if not o["ignore"]]
    boxes = torch.tensor(np.array([o["box"] for o in kept]), dtype=torch.float32).clamp(0, size)
    target = {"boxes": boxes, "labels": torch.ones(len(kept), dtype=torch.int64)}
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255, target


@pytest.fixture(scope="module")
def batch():
    images, targets = zip(*(_scene(i) for i in range(2)), strict=True)
    return list(images), list(targets)


def _model(arch):
    torch.manual_seed(0)
    return odam.create_model(f"odam:{arch}", num_classes=2, min_size=160, max_size=160).train()


def _captured(model, batch, **kwargs):
    trainer = OdamTrainer(model, **kwargs)
    with trainer.capture():
        losses = model(*batch)
    return trainer, losses


def _fcos_score(out, b, i, label):
    return torch.sqrt(torch.sigmoid(out["cls_logits"][b, i, label]) * torch.sigmoid(out["bbox_ctrness"][b, i, 0]))


def _frozen_norm_head(head, feature):
    """The FCOS head on a whole level with every GroupNorm's statistics detached: what the windows emulate."""
    outs = []
    for branch in (head.classification_head, head.regression_head):
        x = feature
        for layer in branch.conv:
            if isinstance(layer, torch.nn.GroupNorm):
                n, c = x.shape[:2]
                flat = x.reshape(n, layer.num_groups, -1)
                var, mean = torch.var_mean(flat.detach(), dim=2, unbiased=False)
                x = ((flat - mean[..., None]) * torch.rsqrt(var + layer.eps)[..., None]).reshape(x.shape)
                x = x * layer.weight.view(1, c, 1, 1) + layer.bias.view(1, c, 1, 1)
            else:
                x = layer(x)
        outs.append(x)
    return head.classification_head.cls_logits(outs[0]), head.regression_head.bbox_ctrness(outs[1])


def _place(level_map, ratio, size):
    """An independent placement: sample the coarse map at the centre pixel of every finest-level cell."""
    h, w = level_map.shape[-2:]
    ys = (torch.arange(size[0], dtype=level_map.dtype) + 0.5) / ratio  # in coarse cells
    xs = (torch.arange(size[1], dtype=level_map.dtype) + 0.5) / ratio
    grid = torch.stack(torch.meshgrid(2 * xs / w - 1, 2 * ys / h - 1, indexing="xy"), -1)[None]
    return F.grid_sample(level_map[None, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0, 0]


def test_coarse_levels_are_placed_by_their_stride_not_stretched():
    torch.manual_seed(0)
    for h, w, ratio, size in ((3, 3, 16, (40, 40)), (5, 6, 8, (36, 44)), (10, 11, 2, (20, 22)), (4, 4, 1, (4, 4))):
        coarse = torch.rand(2, h, w)
        got = _to_grid(coarse, size)
        for k in range(2):
            assert torch.allclose(got[k], _place(coarse[k], ratio, size), atol=1e-6)


def _positions(trainer):
    seen = trainer._seen
    sizes = [f.shape[-2] * f.shape[-1] for f in seen["features"]]
    starts = np.cumsum([0, *sizes])
    for b, (matched, target) in enumerate(zip(seen["matched"], seen["targets"], strict=True)):
        for i in torch.where(matched >= 0)[0].tolist():
            level = int(np.searchsorted(starts, i, side="right")) - 1
            yield b, i, level, i - starts[level], int(target["labels"][matched[i]])


def test_fcos_windows_equal_the_whole_level_head_with_frozen_groupnorm_statistics(batch):
    model = _model("fcos")
    trainer, _ = _captured(model, batch)
    got = trainer.positives()
    features, out = trainer._seen["features"], trainer._seen["head"]
    h0, w0 = features[0].shape[-2:]
    found = list(_positions(trainer))
    assert len(found) == len(got.maps) > 20
    for n, (b, i, level, cell, label) in enumerate(found):
        assert got.scores[n].item() == pytest.approx(_fcos_score(out, b, i, label).item(), abs=1e-6)
        if n % 3:
            continue  # a third of them is plenty for the slow reference
        feature = features[level]
        logits, ctr = _frozen_norm_head(model.head, feature)
        w = feature.shape[-1]
        y, x = divmod(int(cell), w)
        score = torch.sqrt(torch.sigmoid(logits[b, label, y, x]) * torch.sigmoid(ctr[b, 0, y, x]))
        g = torch.autograd.grad(score, feature, retain_graph=True)[0][b]
        expected = _place(F.relu((g * feature[b]).sum(0)), 2 ** level, (h0, w0))
        expected = expected.detach()
        assert torch.allclose(got.maps[n].detach(), expected, atol=1e-6 * float(expected.abs().max()) + 1e-12)


def test_fcos_maps_stay_close_to_exact_autograd_on_the_trained_model():
    """The one approximation, dropping the gradient through GroupNorm's statistics, measured on trained weights."""
    model, _ = load_checkpoint(bundled_path("synthcrowd-fcos"))
    model.train()
    images, targets = zip(*(_scene(i, size=320) for i in range(2)), strict=True)
    trainer, _ = _captured(model, (list(images), list(targets)))
    got = trainer.positives()
    features, out = trainer._seen["features"], trainer._seen["head"]
    h0, w0 = features[0].shape[-2:]
    cosines = []
    for n, (b, i, level, _, label) in enumerate(_positions(trainer)):
        if n % 5:
            continue
        g = torch.autograd.grad(_fcos_score(out, b, i, label), features[level], retain_graph=True)[0][b]
        exact = _place(F.relu((g * features[level][b]).sum(0)), 2 ** level, (h0, w0))
        cosines.append(F.cosine_similarity(got.maps[n].flatten(), exact.flatten(), dim=0).detach().item())
    assert len(cosines) > 10
    assert np.median(cosines) > 0.98 and min(cosines) > 0.8  # docs/PERFORMANCE.md reports the full distribution


def test_fasterrcnn_maps_equal_one_autograd_call_per_roi(batch):
    model = _model("fasterrcnn")
    trainer, _ = _captured(model, batch)
    got = trainer.positives()
    seen = trainer._seen
    labels = torch.cat(seen["labels"])
    proposals = torch.cat(seen["proposals"])
    pos = torch.where(labels > 0)[0]
    assert len(pos) == len(got.maps) > 5
    pooled = seen["pooled"]
    logits = seen["predictions"][0]
    stride = 1 / max(model.roi_heads.box_roi_pool.scales)
    size = got.maps.shape[-2:]
    for n, r in enumerate(pos.tolist()):
        score = torch.softmax(logits[r], -1)[labels[r]]
        g = torch.autograd.grad(score, pooled, retain_graph=True)[0][r]
        local = F.relu((g * pooled[r]).sum(0))
        expected = _paste(local[None], proposals[r][None], tuple(size), stride)[0]
        expected = expected.detach()
        assert torch.allclose(got.maps[n].detach(), expected, atol=1e-6 * float(expected.abs().max()) + 1e-12)
        assert got.scores[n].item() == pytest.approx(score.item(), abs=1e-6)


def test_paste_fills_the_box_cells_and_nothing_else():
    ones = torch.ones(1, 7, 7)
    pasted = _paste(ones, torch.tensor([[16.0, 8.0, 48.0, 40.0]]), (8, 8), 8.0)[0]
    # cell centres (j + 0.5) * 8: columns 2..5 (20..44 px) and rows 1..4 (12..36 px) lie well inside the box
    assert torch.all(pasted[1:5, 2:6] > 0.99)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[1:5, 2:6] = False
    assert torch.all(pasted[outside] == 0)
    # a 56-pixel box on a stride-8 grid puts bin (i, j) exactly on cell (i, j): no flip, no transpose
    ramp = torch.arange(49.0).view(1, 7, 7)
    pasted = _paste(ramp, torch.tensor([[0.0, 0.0, 56.0, 56.0]]), (9, 8), 8.0)[0]
    assert torch.allclose(pasted[:7, :7], ramp[0], atol=1e-5)
    assert torch.all(pasted[7:] == 0) and torch.all(pasted[:, 7] == 0)


@pytest.mark.parametrize("arch", ["fcos", "fasterrcnn"])
def test_second_order_reaches_the_head_and_first_order_does_not(arch, batch):
    for second in (False, True):
        model = _model(arch)
        trainer, _ = _captured(model, batch, second_order=second)
        trainer.loss()[0].backward()
        head = (model.head.classification_head.cls_logits if arch == "fcos"
                else model.roi_heads.box_predictor.cls_score)
        backbone = next(model.backbone.body.parameters())
        assert backbone.grad is not None and backbone.grad.abs().sum() > 0
        reached = head.weight.grad is not None and bool(head.weight.grad.abs().sum() > 0)
        assert reached == second


@pytest.mark.parametrize("arch", ["fcos", "fasterrcnn"])
def test_the_model_is_left_as_it_was_after_success_and_after_an_error(arch, batch):
    model = _model(arch)
    mine = model.backbone.register_forward_pre_hook(lambda module, args: None)  # the user's own hook stays

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    def patched():
        return {k for m in model.modules() for k in ("compute_loss", "select_training_samples") if k in vars(m)}

    trainer = OdamTrainer(model)
    with trainer.capture():
        model(*batch)
    with pytest.raises(RuntimeError, match="boom"), trainer.capture():
        raise RuntimeError("boom")
    assert hooks() == 1 and patched() == set() and model.training
    mine.remove()


def test_max_positives_below_the_object_count_keeps_only_bests(batch):
    model = _model("fcos")
    every = _captured(model, batch)[0].positives()
    some = _captured(model, batch, max_positives=2)[0].positives()
    for b in range(2):
        mine = some.image_index == b
        assert int(mine.sum()) == 2 and len(torch.unique(some.gt_index[mine])) == 2
        for g, iou in zip(some.gt_index[mine], some.ious[mine], strict=True):
            assert iou == every.ious[(every.image_index == b) & (every.gt_index == g)].max()


def test_max_positives_keeps_each_objects_best_first(batch):
    model = _model("fcos")
    every = _captured(model, batch)[0].positives()
    objects = [len(torch.unique(every.gt_index[every.image_index == b])) for b in range(2)]
    cap = max(objects) + 2
    torch.manual_seed(1)
    some = _captured(model, batch, max_positives=cap)[0].positives()
    for b in range(2):
        mine = some.image_index == b
        assert int(mine.sum()) == min(cap, int((every.image_index == b).sum()))
        for g in torch.unique(every.gt_index[every.image_index == b]):
            best = every.ious[(every.image_index == b) & (every.gt_index == g)].max()
            assert some.ious[mine & (some.gt_index == g)].max() == best


@pytest.mark.parametrize("arch", ["fcos", "fasterrcnn"])
@pytest.mark.parametrize("negatives", ["all", "overlapping"])
def test_images_without_objects_and_batches_without_positives(arch, negatives, batch):
    model = _model(arch)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for images, targets in (([batch[0][0], batch[0][1]], [empty, batch[1][1]]), ([batch[0][0]], [empty])):
        trainer, losses = _captured(model, (images, targets), negatives=negatives)
        positives = trainer.positives()
        assert not bool((positives.image_index == 0).any())  # nothing from the empty image
        loss, _ = trainer.loss()
        assert torch.isfinite(loss)
        (sum(losses.values()) + loss).backward()
        model.zero_grad()


def test_only_the_last_forward_pass_of_a_capture_counts(batch):
    model = _model("fcos")
    other = ([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 10, 60, 90]]), "labels": torch.tensor([1])}])
    once = _captured(model, batch)[0].positives()
    trainer = OdamTrainer(model)
    with trainer.capture():
        model(*other)
        model(*batch)
    twice = trainer.positives()
    assert torch.allclose(twice.maps, once.maps, atol=1e-6) and torch.equal(twice.gt_index, once.gt_index)


def test_a_short_overfit_lowers_the_auxiliary_loss():
    model, _ = load_checkpoint(bundled_path("synthcrowd-fcos"))
    model.train()
    images, targets = zip(*(_scene(i, size=320) for i in range(2)), strict=True)
    trainer = OdamTrainer(model, weight=5.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(15):
        with trainer.capture():
            losses = model(list(images), list(targets))
        aux, _ = trainer.loss()
        history.append(aux.item())
        optimizer.zero_grad()
        (sum(losses.values()) + aux).backward()
        optimizer.step()
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history


def test_unsupported_models_and_settings_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="supports torchvision FCOS and Faster R-CNN, got RetinaNet"):
        OdamTrainer(odam.create_model("odam:retinanet", num_classes=2))
    with pytest.raises(ValueError, match="max_positives must be a positive int"):
        OdamTrainer(_model("fcos"), max_positives=0)
    with pytest.raises(RuntimeError, match="no training forward pass was captured"):
        OdamTrainer(_model("fcos")).loss()
    v2 = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=2)
    with pytest.raises(ValueError, match="box head that treats RoIs independently"):
        OdamTrainer(v2)
    code = main(["train", "--model", "retinanet", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--odam-train"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--odam-train supports fcos and fasterrcnn" in err
