"""Batched ODAM against the per-detection, per-attribute loop, measured side by side in one run.

For each model and each K it times, on the same image and detections:
  * ``fwd+bwd``: one forward pass of the detector plus one backward pass of the sum of its outputs
    (parameters and input), the cost of a training step without the optimiser;
  * ``loop``: :func:`odam.explainers.odam.explain_loop`, one ``autograd.grad`` per detection and attribute;
  * ``batched``: :meth:`odam.ODAM.explain`;
  * ``frozen``: ``odam.ODAM(model, frozen_norm=True).explain``, for models with GroupNorm (FCOS) only: the
    statistics held at their forward values, so the maps are approximate and come from batched crops;
and reports ``loop / batched``, ``batched / (fwd+bwd)``, the largest relative difference between the exact maps,
the frozen path's speed-up over both exact paths, and its agreement with the exact maps: the median and the worst
cosine similarity over all K x 5 maps, and ``max|frozen - exact| / max|exact|``.

Models: ``fcos``, ``fasterrcnn``, ``retinanet`` are torchvision's ResNet-50 FPN detectors with random weights
(seed 0) on a random ``--size`` x ``--size`` image; ``synthcrowd-fcos`` is the bundled trained FCOS on the bundled
crowd scene (320x320, ``--size`` does not apply).

    python benchmarks/bench_batched.py                      # the table in docs/PERFORMANCE.md
    python benchmarks/bench_batched.py --write docs/PERFORMANCE.md
    python benchmarks/bench_batched.py --models fasterrcnn --ks 1,10 --size 256   # a quick look
    python benchmarks/bench_batched.py --device cuda --ks 1,10,100              # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import detection

import odam
from odam.explainers.odam import explain_loop

MODELS = {
    "fcos": ("fcos_resnet50_fpn", {"score_thresh": 0.0}, "detections_per_img"),
    "fasterrcnn": ("fasterrcnn_resnet50_fpn", {"box_score_thresh": 0.0}, "box_detections_per_img"),
    "retinanet": ("retinanet_resnet50_fpn", {"score_thresh": 0.0}, "detections_per_img"),
    "synthcrowd-fcos": None,  # bundled, trained
}
START, END = "<!-- bench_batched:start -->", "<!-- bench_batched:end -->"
FROZEN_KEYS = ("frozen", "batched/frozen", "loop/frozen", "cos median", "cos worst", "frozen rel. err")


def _timed(device: torch.device, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - a tiny helper
    """(seconds, ``fn(*args, **kwargs)``), waiting for the GPU's queue at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def forward_backward(model: nn.Module, image: Tensor) -> None:
    x = image.clone().requires_grad_(True)
    out = model([x])[0]
    (out["scores"].sum() + out["boxes"].sum()).backward()
    model.zero_grad(set_to_none=True)


def cosines(a: Tensor, b: Tensor) -> Tensor:
    """``Tensor[K * T]``: the cosine similarity of each map of ``a`` with the same map of ``b`` (``[K, T, H, W]``).

    Two all-zero maps (a ReLU can zero a map) agree, 1; one all-zero map against a non-zero one scores 0.
    """
    a, b = a.flatten(2).flatten(0, 1).double(), b.flatten(2).flatten(0, 1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)


def rel_err(a: Tensor, b: Tensor) -> float:
    """``max|a - b| / max|b|``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def build(name: str, k: int, size: int, device: torch.device) -> tuple[str, nn.Module, Tensor]:
    """(label, model returning exactly ``k`` detections, image), seeded."""
    torch.manual_seed(0)
    if MODELS[name] is None:
        from odam.cli import DEMO_SCENE

        model = odam.load_detector(name).model
        model.score_thresh, model.detections_per_img = 0.0, k
        return name, model.eval().to(device), odam.load_image(DEMO_SCENE).to(device)
    builder, kwargs, per_img = MODELS[name]
    model = getattr(detection, builder)(weights=None, weights_backbone=None, **kwargs, **{per_img: k})
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    return builder, model.eval().to(device), image.to(device)


def run(name: str, ks: list[int], size: int, device: torch.device) -> list[dict]:
    rows = []
    for k in ks:
        label, model, image = build(name, k, size, device)
        explainer = odam.ODAM(model)
        forward_backward(model, image)  # warm-up
        t_fb, _ = _timed(device, forward_backward, model, image)
        t_batched, fast = _timed(device, explainer.explain, image, targets=odam.TARGETS)
        t_loop, slow = _timed(device, explain_loop, explainer, image, targets=odam.TARGETS)
        row: dict = {"model": label, "K": len(fast), "fwd+bwd": t_fb, "loop": t_loop, "batched": t_batched,
                     "speed-up": t_loop / t_batched, "batched/(fwd+bwd)": t_batched / t_fb,
                     "max rel. err": rel_err(fast.maps, slow.maps)}
        row |= dict.fromkeys(FROZEN_KEYS, "-")
        if any(isinstance(m, nn.GroupNorm) for m in model.modules()):  # frozen_norm changes nothing elsewhere
            t_frozen, frozen = _timed(device, odam.ODAM(model, frozen_norm=True).explain, image,
                                      targets=odam.TARGETS)
            cos = cosines(frozen.maps, fast.maps)
            row |= {"frozen": t_frozen, "batched/frozen": t_batched / t_frozen, "loop/frozen": t_loop / t_frozen,
                    "cos median": float(cos.median()), "cos worst": float(cos.min()),
                    "frozen rel. err": rel_err(frozen.maps, fast.maps)}
        print(" | ".join(f"{key}={_fmt(v, key)}" for key, v in row.items()), flush=True)
        rows.append(row)
    return rows


def _fmt(v: object, key: str = "") -> str:
    if isinstance(v, float):
        if key.startswith("cos"):
            return f"{v:.4f}"
        return f"{v:.2e}" if v < 1e-2 else f"{v:.2f}"
    return str(v)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}"


def markdown(rows: list[dict], command: str, device: torch.device) -> str:
    keys = list(rows[0])
    lines = [f"`{command}` on {describe(device)}. Times in seconds.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k], k) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fcos,fasterrcnn,retinanet,synthcrowd-fcos",
                        help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--ks", default="1,10,50,100", help="numbers of detections to explain")
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels (torchvision models)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this file")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    names = args.models.split(",")
    if unknown := sorted(set(names) - set(MODELS)):
        parser.error(f"unknown models {unknown}, expected some of {sorted(MODELS)}")
    device = torch.device(args.device)
    rows = [r for name in names for r in run(name, ks, args.size, device)]
    command = "python benchmarks/bench_batched.py" + "".join(
        f" --{a} {getattr(args, a)}" for a in ("models", "ks", "size", "device")
        if getattr(args, a) != parser.get_default(a))
    table = markdown(rows, command, device)
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
