"""Time SynthCrowd generation: N images of SIZE pixels, with 1 and with all CPU workers, written to disk.

    python benchmarks/bench_synthcrowd.py --num-images 1000 --write docs/SYNTHCROWD.md

The issue's target is 1,000 images of 320x320 in under 2 minutes on a 2-core machine. Run it alone: other
work on the machine slows it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from odam.data.stats import write_block
from odam.data.synthcrowd import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    rows = []
    for workers in sorted({1, cpus}):
        out = Path(tempfile.mkdtemp(prefix="synthcrowd-bench-"))
        try:
            start = time.perf_counter()
            data = generate(out, args.num_images, args.seed, size=args.size, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        finally:
            shutil.rmtree(out)
        objects = sum(len(r) for r in data.images)
        rows.append(f"| {workers} | {args.num_images} | {args.size}x{args.size} | {seconds:.1f} s "
                    f"| {args.num_images / seconds:.1f} | {objects} | {megabytes:.0f} MB |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"`python benchmarks/bench_synthcrowd.py --num-images {args.num_images} --write docs/SYNTHCROWD.md` "
        f"on {cpus} CPU cores ({platform.processor() or platform.machine()}), images, COCO json and odgt included:",
        "", "| workers | images | size | wall time | images / s | objects | on disk |", "|---|---|---|---|---|---|---|",
        *rows])
    print(text)
    if args.write is not None:
        write_block(args.write, "synthcrowd_speed", text)


if __name__ == "__main__":
    main()
