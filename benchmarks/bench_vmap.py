"""Vectorised (``is_grads_batched``) against looped backward passes through FCOS's classification tower.

This is the measurement behind ``odam.explainers.odam._vjps`` looping on CPU. Run on the device you care about:

    python benchmarks/bench_vmap.py [--device cuda] [--size 100] [--n 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.models.detection import fcos_resnet50_fpn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=100, help="side of the feature map (P3 of an 800x800 input)")
    parser.add_argument("--n", type=int, default=10, help="number of gradients")
    args = parser.parse_args()
    torch.manual_seed(0)
    head = fcos_resnet50_fpn(weights=None, weights_backbone=None).eval().head.to(args.device)
    a = torch.randn(1, 256, args.size, args.size, device=args.device, requires_grad=True)
    y = head([a])["cls_logits"][0, : args.n, 0]

    def sync() -> None:
        if a.device.type == "cuda":
            torch.cuda.synchronize()

    def looped() -> torch.Tensor:
        return torch.stack([torch.autograd.grad(o, a, retain_graph=True)[0] for o in y])

    def vectorised() -> torch.Tensor:
        eye = torch.eye(len(y), device=a.device)
        return torch.autograd.grad(y, a, eye, retain_graph=True, is_grads_batched=True)[0]

    times = {}
    for name, fn in (("looped", looped), ("vectorised", vectorised), ("looped again", looped)):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times[name] = time.perf_counter() - start
    err = float((vectorised() - looped()).abs().max())
    print(f"{args.n} gradients, {args.size}x{args.size} map, {args.device}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
          + f"; vectorised / looped = {times['vectorised'] / min(times['looped'], times['looped again']):.2f};"
          f" max abs diff {err:.1e} ({out.shape[0]} maps)")


if __name__ == "__main__":
    main()
