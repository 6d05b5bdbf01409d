"""Peak memory of ``overlay`` and ``save_panel`` on a large image, each in a fresh process.

Prints the peak resident memory above what the inputs already hold, in MB and in bytes per image pixel. With
``--viz FILE`` the same cases also run against another copy of the overlay module (``odam/viz/overlays.py``;
``odam/viz.py`` before it became a package), e.g. ``git show HEAD~1:src/odam/viz/overlays.py > /tmp/viz_old.py``,
side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_viz_memory.py --size 4000x3000 --viz /tmp/viz_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _case(case: str, width: int, height: int, targets: int, viz_file: str | None) -> dict:
    import torch

    from odam.structures import Detections, Explanation

    if viz_file:
        spec = importlib.util.spec_from_file_location("viz_under_test", viz_file)
        viz = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(viz)
    else:
        import odam.viz as viz
    torch.manual_seed(0)
    image = torch.rand(3, height, width)
    box = torch.tensor([width * 0.2, height * 0.2, width * 0.7, height * 0.8])
    if case == "overlay":
        heat = torch.rand(height, width)
        before = _rss_mb()
        viz.overlay(image, heat, box)
    else:
        names = tuple(f"t{i}" for i in range(targets))
        dets = Detections(box[None], torch.tensor([0.9]), torch.tensor([0]))
        explanation = Explanation(dets, names, torch.rand(1, targets, height, width))
        before = _rss_mb()
        with tempfile.TemporaryDirectory() as tmp:
            viz.save_panel(Path(tmp) / "p.png", image, explanation, 0)
    peak = _peak_mb() - before
    return {"case": case, "peak_mb": round(peak), "bytes_per_pixel": round(peak * 2**20 / (width * height), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the image (default 4000x3000)")
    parser.add_argument("--targets", type=int, default=5, help="maps per detection in the panel (default 5)")
    parser.add_argument("--viz", help="another copy of odam/viz/overlays.py to measure beside the installed one")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "VIZ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    if args.one:
        case, viz_file = args.one
        print(json.dumps(_case(case, width, height, args.targets, viz_file or None)))
        return
    versions = [("odam.viz", "")] + ([(args.viz, args.viz)] if args.viz else [])
    print(f"image {width}x{height} ({width * height / 1e6:.1f} MP), panel of {args.targets} maps + combined")
    print(f"{'case':<10} {'version':<24} {'peak MB':>8} {'B/pixel':>8}")
    for case in ("overlay", "panel"):
        for name, viz_file in versions:
            out = subprocess.run([sys.executable, __file__, "--size", args.size, "--targets", str(args.targets),
                                  "--one", case, viz_file], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            print(f"{case:<10} {name:<24} {r['peak_mb']:>8} {r['bytes_per_pixel']:>8}")


if __name__ == "__main__":
    main()
