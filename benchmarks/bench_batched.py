"""Batched ODAM against the per-detection, per-attribute loop, measured side by side in one run.

For each model and each K it times, on the same image and detections:
  * ``fwd+bwd``: one forward pass of the detector plus one backward pass of the sum of its outputs
    (parameters and input), the cost of a training step without the optimiser;
  * ``loop``: :func:`odam.explainers.odam.explain_loop`, one ``autograd.grad`` per detection and attribute;
  * ``batched``: :meth:`odam.ODAM.explain`;
and reports ``loop / batched``, ``batched / (fwd+bwd)`` and the largest relative difference between the maps.

    python benchmarks/bench_batched.py                      # the table in docs/PERFORMANCE.md
    python benchmarks/bench_batched.py --write docs/PERFORMANCE.md
    python benchmarks/bench_batched.py --models fasterrcnn --ks 1,10 --size 256   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import torch
from torchvision.models import detection

import odam
from odam.explainers.odam import explain_loop

MODELS = {
    "fcos": ("fcos_resnet50_fpn", {"score_thresh": 0.0}, "detections_per_img"),
    "fasterrcnn": ("fasterrcnn_resnet50_fpn", {"box_score_thresh": 0.0}, "box_detections_per_img"),
    "retinanet": ("retinanet_resnet50_fpn", {"score_thresh": 0.0}, "detections_per_img"),
}
START, END = "<!-- bench_batched:start -->", "<!-- bench_batched:end -->"


def _timed(fn):  # noqa: ANN001, ANN202 - a tiny local helper
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def forward_backward(model: torch.nn.Module, image: torch.Tensor) -> None:
    x = image.clone().requires_grad_(True)
    out = model([x])[0]
    (out["scores"].sum() + out["boxes"].sum()).backward()
    model.zero_grad(set_to_none=True)


def run(name: str, ks: list[int], size: int) -> list[dict]:
    builder, kwargs, per_img = MODELS[name]
    torch.manual_seed(0)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for k in ks:
        torch.manual_seed(0)
        model = getattr(detection, builder)(weights=None, weights_backbone=None, **kwargs, **{per_img: k}).eval()
        explainer = odam.ODAM(model)
        forward_backward(model, image)  # warm-up
        t_fb, _ = _timed(lambda m=model: forward_backward(m, image))
        t_batched, fast = _timed(lambda e=explainer: e.explain(image, targets=odam.TARGETS))
        t_loop, slow = _timed(lambda e=explainer: explain_loop(e, image, targets=odam.TARGETS))
        err = float((fast.maps - slow.maps).abs().max() / slow.maps.abs().max().clamp_min(1e-12))
        row = {"model": builder, "K": len(fast), "fwd+bwd": t_fb, "loop": t_loop, "batched": t_batched,
               "speed-up": t_loop / t_batched, "batched/(fwd+bwd)": t_batched / t_fb, "max rel. err": err}
        print(" | ".join(f"{key}={_fmt(v)}" for key, v in row.items()), flush=True)
        rows.append(row)
    return rows


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if v < 1e-2 else f"{v:.2f}"
    return str(v)


def markdown(rows: list[dict], command: str) -> str:
    keys = list(rows[0])
    lines = [f"`{command}` on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}."
             " Times in seconds.", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fcos,fasterrcnn,retinanet", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--ks", default="1,10,50,100", help="numbers of detections to explain")
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this file")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    rows = [r for name in args.models.split(",") for r in run(name, ks, args.size)]
    command = "python benchmarks/bench_batched.py" + "".join(
        f" --{a} {getattr(args, a)}" for a in ("models", "ks", "size")
        if getattr(args, a) != parser.get_default(a))
    table = markdown(rows, command)
    print(table)
    if args.write:
        text = args.write.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{args.write} has no {START} ... {END} markers")
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{table}\n{END}", text,
                      flags=re.S)
        args.write.write_text(text)


if __name__ == "__main__":
    main()
