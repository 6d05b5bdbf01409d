"""Odam-NMS's cost: the suppression alone, and the whole pipeline against plain NMS.

1. **The suppression** (``odam.nms``) on N = 1000 candidates with 50x50 heat-map vectors, against
   ``torchvision.ops.nms`` on the same boxes: realistic candidates (clusters of overlapping boxes around 60
   objects, maps resembling their object's: most are suppressed) and the worst case (random boxes with unrelated
   maps: nothing is suppressed, every IoU and correlation row is needed). Median of ``--repeats``, interleaved.
2. **The pipeline**, per image of a crowd dataset, for each model: detector + NMS (``load_detector(model,
   nms="nms")``) against detector + ODAM maps of every candidate + Odam-NMS (``nms="odam"``), with the maps'
   GroupNorm statistics frozen (the default) and exact. The pipelines take turns on each image after one warm-up
   image; we report the mean seconds per image and their ratio.

    python benchmarks/bench_nms.py --data /work/data/eval-crowd                                # print
    python benchmarks/bench_nms.py --data /work/data/eval-crowd --write docs/PERFORMANCE.md    # and record
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import odam
from odam.data import read_dataset
from odam.data.stats import write_block
from odam.nms import Suppression, odam_nms


def _clustered(n: int, objects: int = 60, dim: int = 2500, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 600
    which = torch.randint(objects, (n,), generator=g)
    xy = centres[which] + torch.randn(n, 2, generator=g) * 6
    wh = 60 + torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    prototypes = torch.rand(objects, dim, generator=g)
    vectors = prototypes[which] + 0.3 * torch.rand(n, dim, generator=g)
    return boxes, torch.rand(n, generator=g), vectors


def _random(n: int, dim: int = 2500, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 5000
    boxes = torch.cat([xy, xy + 20], 1)  # far apart: nothing overlaps
    return boxes, torch.rand(n, generator=g), torch.rand(n, dim, generator=g)


def suppression_times(n: int, repeats: int) -> list[dict]:
    rows = []
    for name, (boxes, scores, vectors) in (("clustered", _clustered(n)), ("worst case", _random(n))):
        t_odam, t_tv = [], []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            keep = odam_nms(boxes, scores, vectors)
            t_odam.append(time.perf_counter() - start)
            start = time.perf_counter()
            torchvision.ops.nms(boxes, scores, 0.5)
            t_tv.append(time.perf_counter() - start)
        rows.append({"case": name, "n": n, "kept": len(keep), "odam_nms_ms": 1000 * statistics.median(t_odam[1:]),
                     "torchvision_nms_ms": 1000 * statistics.median(t_tv[1:])})
    return rows


def pipeline_times(model: str, data: str, images: int, max_candidates: int) -> dict:
    records = read_dataset(data).images[: images + 1]
    pipelines = {
        "nms": odam.load_detector(model, nms=Suppression("nms", max_candidates=max_candidates)),
        "odam-nms (frozen)": odam.load_detector(model, nms=Suppression("odam-nms", max_candidates=max_candidates)),
        "odam-nms (exact)": odam.load_detector(model, nms=Suppression("odam-nms", max_candidates=max_candidates,
                                                                      frozen_norm=False)),
    }
    times: dict[str, list[float]] = {k: [] for k in pipelines}
    candidates = []
    for i, record in enumerate(records):
        image = record.load_image()
        for name, detector in pipelines.items():
            start = time.perf_counter()
            detector.detect(image)
            if i:  # the first image warms up
                times[name].append(time.perf_counter() - start)
        if i:
            trace = pipelines["nms"].trace(image, candidates=True, max_candidates=max_candidates)
            candidates.append(len(trace.detections))
    mean = {k: statistics.mean(v) for k, v in times.items()}
    return {"model": model, "images": len(records) - 1, "candidates": statistics.mean(candidates), **mean}


def markdown(supp: list[dict], pipes: list[dict], threads: int) -> str:
    lines = [f"`python benchmarks/bench_nms.py` on {platform.machine()} with {threads} threads, torch "
             f"{torch.__version__}.", "",
             "| candidates | N | kept | `odam_nms` (ms) | `torchvision.ops.nms` (ms) | goal |",
             "|---|---|---|---|---|---|"]
    for r in supp:
        lines.append(f"| {r['case']} | {r['n']} | {r['kept']} | {r['odam_nms_ms']:.1f} | {r['torchvision_nms_ms']:.1f} "
                     f"| < 20 ms |")
    lines += ["", "| model | images | candidates / image | detector + NMS (s) | + maps + Odam-NMS, frozen GN (s) | "
              "ratio | exact maps (s) | ratio | goal |", "|---|---|---|---|---|---|---|---|---|"]
    for p in pipes:
        lines.append(f"| {Path(p['model']).name} | {p['images']} | {p['candidates']:.0f} | {p['nms']:.3f} | "
                     f"{p['odam-nms (frozen)']:.3f} | **{p['odam-nms (frozen)'] / p['nms']:.1f}x** | "
                     f"{p['odam-nms (exact)']:.3f} | {p['odam-nms (exact)'] / p['nms']:.1f}x | 1.3x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a crowd dataset (e.g. SynthCrowd eval-crowd)")
    parser.add_argument("--models", nargs="+", default=["synthcrowd-fcos-odamtrain", "synthcrowd-fasterrcnn-odamtrain"])
    parser.add_argument("--images", type=int, default=10, help="timed images per model (after one warm-up)")
    parser.add_argument("--max-candidates", type=int, default=1000)
    parser.add_argument("--n", type=int, default=1000, help="candidates for the suppression-only timing")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="replace the bench_nms block of this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    supp = suppression_times(args.n, args.repeats)
    pipes = [pipeline_times(m, args.data, args.images, args.max_candidates) for m in args.models]
    text = markdown(supp, pipes, args.threads)
    print(text)
    if args.write is not None:
        write_block(args.write, "bench_nms", text)


if __name__ == "__main__":
    main()
