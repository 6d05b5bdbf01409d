"""``odam data synthcrowd`` and ``odam data stats``: make and describe datasets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from odam.cli.common import STYLES


def add_arguments(data: argparse.ArgumentParser) -> None:
    """Add ``odam data``'s subcommands to its parser."""
    data.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{synthcrowd,stats}")
    gen = data_sub.add_parser("synthcrowd", help="generate a SynthCrowd dataset",
                              description="Write DIR/images/*.png, DIR/annotations.json (COCO) and "
                                          "DIR/annotations.odgt (CrowdHuman). The same seed gives the same bytes.")
    gen.add_argument("--out", required=True, type=Path)
    gen.add_argument("--num-images", required=True, type=int, metavar="N")
    gen.add_argument("--seed", required=True, type=int, metavar="S")
    gen.add_argument("--size", type=int, default=320, metavar="N", help="image side in pixels (default: 320)")
    gen.add_argument("--style", choices=STYLES, default="crowd", help="(default: crowd)")
    gen.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4), metavar="N",
                     help="rendering processes (default: CPU count, at most 4)")
    gen.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    gen.set_defaults(run=run_synthcrowd)
    stats = data_sub.add_parser("stats", help="print a dataset's crowd statistics",
                                description="Objects per image, pairs of full boxes with IoU > 0.5 per image, "
                                            "and the occlusion histogram (1 - visible box area / full box area).")
    stats.add_argument("datasets", nargs="+", metavar="DIR")
    stats.add_argument("--write", type=Path, default=None, metavar="FILE",
                       help="also replace the statistics block of this Markdown file")
    stats.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    stats.set_defaults(run=run_stats)


def run_synthcrowd(args: argparse.Namespace) -> int:
    """``odam data synthcrowd``; returns the exit status."""
    from odam.data.synthcrowd import generate

    data = generate(args.out, args.num_images, args.seed, size=args.size, style=args.style, workers=args.workers)
    objects = sum(len(r) for r in data.images)
    print(f"odam data synthcrowd: {len(data)} images, {objects} objects -> {args.out}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    """``odam data stats``; returns the exit status."""
    from odam.data import read_dataset
    from odam.data.stats import crowd_statistics, markdown, write_block

    rows = [crowd_statistics(read_dataset(d), name=str(d)) for d in args.datasets]
    text = markdown(rows)
    print(text)
    if args.write is not None:
        write_block(args.write, "synthcrowd_stats", text)
    return 0
