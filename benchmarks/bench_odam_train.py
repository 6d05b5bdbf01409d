"""Odam-Train's cost and the error of its batched one-stage maps.

1. **Training-step time** (forward, backward and SGD step on one batch of SynthCrowd training images), for
   each bundled model: the detector's own loss alone, plus Odam-Train with first-order maps (the default) and
   with ``second_order=True``. The modes take turns on copies of the same weights and the same batch, and
   each reports the median of ``--repeats`` steps after one warm-up, so the ratios are side by side.
2. **Batched FCOS maps against exact autograd.** ``OdamTrainer`` reruns FCOS's head on a window around each
   positive with the GroupNorm statistics held fixed (see ``odam.train.odam_train``). For every k-th positive
   of the batch the exact map comes from one ``autograd.grad`` of its score w.r.t. the whole FPN level; we
   report the relative L2 error of the batched map, their cosine, and the loss computed from each set.

    python benchmarks/bench_odam_train.py --data /work/data/train                           # print
    python benchmarks/bench_odam_train.py --data /work/data/train --write docs/PERFORMANCE.md --write docs/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from odam.data import read_dataset
from odam.data.stats import write_block
from odam.losses import odam_train_loss
from odam.models import bundled_path, load_checkpoint
from odam.train.engine import load_image_tensor, training_target
from odam.train.odam_train import OdamTrainer


def _batch(data: str, size: int) -> tuple[list, list]:
    records = read_dataset(data).images[:size]
    return [load_image_tensor(r) for r in records], [training_target(r, False) for r in records]


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer: OdamTrainer | None, images: list,
          targets: list) -> float:
    start = time.perf_counter()
    if trainer is None:
        loss = sum(model(images, targets).values())
    else:
        with trainer.capture():
            losses = model(images, targets)
        loss = sum(losses.values()) + trainer.loss()[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def step_times(name: str, images: list, targets: list, repeats: int, max_positives: int | None) -> dict:
    base, _ = load_checkpoint(bundled_path(name))
    modes = {"detector loss": None, "+ Odam-Train": False, "+ Odam-Train, second order": True}
    runs = {}
    for mode, second in modes.items():
        model = copy.deepcopy(base).train()
        trainer = None if second is None else OdamTrainer(model, max_positives=max_positives, second_order=second)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        runs[mode] = (model, optimizer, trainer)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats + 1):
        for mode, (model, optimizer, trainer) in runs.items():
            torch.manual_seed(r)
            t = _step(model, optimizer, trainer, images, targets)
            if r:
                times[mode].append(t)
    row = {"model": name, **{m: statistics.median(v) for m, v in times.items()}}
    print(row, flush=True)
    return row


def _score(out: dict, b: int, i: int, label: int) -> torch.Tensor:
    return torch.sqrt(torch.sigmoid(out["cls_logits"][b, i, label]) * torch.sigmoid(out["bbox_ctrness"][b, i, 0]))


def fcos_error(images: list, targets: list, every: int) -> dict:
    model, _ = load_checkpoint(bundled_path("synthcrowd-fcos"))
    model.train()
    trainer = OdamTrainer(model)
    with trainer.capture():
        model(images, targets)
    p = trainer.positives()
    seen = trainer.seen
    features, out = seen["features"], seen["head"]
    sizes = [f.shape[-2] * f.shape[-1] for f in features]
    starts = torch.tensor([0, *sizes]).cumsum(0)
    found = [(b, i, int(t["labels"][m[i]])) for b, (m, t) in enumerate(zip(seen["matched"], seen["targets"],
                                                                           strict=True))
             for i in torch.where(m >= 0)[0].tolist()]  # the order OdamTrainer uses without max_positives
    h0, w0 = features[0].shape[-2:]
    chosen = list(range(0, len(found), every))
    exact = []
    for n in chosen:
        b, i, label = found[n]
        level = int(torch.searchsorted(starts, torch.tensor(i), right=True)) - 1
        score = _score(out, b, i, label)
        g = torch.autograd.grad(score, features[level], retain_graph=True)[0][b]
        h = F.relu((g * features[level][b].detach()).sum(0))
        if level:
            h = F.interpolate(h[None, None], size=(h0, w0), mode="bilinear", align_corners=False)[0, 0]
        exact.append(h)
    exact = torch.stack(exact)
    approx = p.maps[chosen].detach()
    err = ((approx - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1).clamp_min(1e-12))
    cos = F.cosine_similarity(approx.flatten(1), exact.flatten(1), dim=1)
    kw = {"boxes": p.boxes[chosen], "image_index": p.image_index[chosen]}
    loss_a = odam_train_loss(approx.flatten(1), p.gt_index[chosen], p.ious[chosen], **kw)[0]
    loss_e = odam_train_loss(exact.flatten(1), p.gt_index[chosen], p.ious[chosen], **kw)[0]
    row = {"positives": len(found), "compared": len(chosen), "err_median": float(err.median()),
           "err_p90": float(err.quantile(0.9)), "err_max": float(err.max()), "cos_min": float(cos.min()),
           "cos_median": float(cos.median()), "loss_batched": float(loss_a), "loss_exact": float(loss_e),
           "score_gap": max(abs(float(p.scores[n]) - float(_score(out, *found[n]).detach())) for n in chosen)}
    print(row, flush=True)
    return row


def markdown(rows: list[dict], error: dict, args: argparse.Namespace) -> str:
    cmd = f"python benchmarks/bench_odam_train.py --data {args.data} --batch {args.batch} --repeats {args.repeats}"
    if args.max_positives is not None:
        cmd += f" --max-positives {args.max_positives}"
    lines = [f"`{cmd}` on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}. "
             f"One batch of {args.batch} training images; median seconds per training step "
             f"(forward, backward, SGD step); max positives per image: {args.max_positives or 'all'}.", "",
             "| model | detector loss | + Odam-Train | ratio | + Odam-Train, second order | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        b = r["detector loss"]
        lines.append(f"| {r['model']} | {b:.3f} | {r['+ Odam-Train']:.3f} | **{r['+ Odam-Train'] / b:.2f}x** | "
                     f"{r['+ Odam-Train, second order']:.3f} | {r['+ Odam-Train, second order'] / b:.2f}x |")
    e = error
    lines += ["", f"Batched FCOS maps against exact autograd, {e['compared']} of the batch's {e['positives']} "
              f"positives (every {args.every}th):", "",
              "| relative L2 error: median | 90th pct | max | cosine: median | min | loss, batched | loss, exact "
              "| recomputed score, max abs. difference |", "|---|---|---|---|---|---|---|---|",
              f"| {e['err_median']:.3f} | {e['err_p90']:.3f} | {e['err_max']:.3f} | {e['cos_median']:.4f} | "
              f"{e['cos_min']:.4f} | {e['loss_batched']:.4f} | {e['loss_exact']:.4f} | {e['score_gap']:.1e} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a SynthCrowd training set (odam data synthcrowd)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-positives", type=int, default=None)
    parser.add_argument("--every", type=int, default=4, help="compare every k-th FCOS positive with exact autograd")
    parser.add_argument("--write", type=Path, action="append", default=[],
                        help="replace the bench_odam_train block of this file (repeatable)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, targets = _batch(args.data, args.batch)
    rows = [step_times(n, images, targets, args.repeats, args.max_positives)
            for n in ("synthcrowd-fcos", "synthcrowd-fasterrcnn")]
    error = fcos_error(images, targets, args.every)
    text = markdown(rows, error, args)
    print(text)
    for path in args.write:
        write_block(path, "bench_odam_train", text)


if __name__ == "__main__":
    main()
