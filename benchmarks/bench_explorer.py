"""Size of the explorer page (``odam.viz.explorer``) per image, against its budget of 3 MB per image.

One image of 480x640 and one of 1280x960, each with 100 detections x (5 targets + combined) maps of two kinds:

- ODAM-like: local maps, a Gaussian blob per target around the detection's box (centre and edges), zero far away;
- Grad-CAM-like: smooth maps over the whole image (a coarse 15x20 random field, bilinearly upsampled, ReLU'd),
  as class-activation maps look.

Prints a Markdown table: bytes per image in the page (the JSON block), of which maps, the seconds to build it, and
the whole page's size. Smooth maps are stored as lossy WebP within odam.viz.explorer.MAP_TOLERANCE (of 255 levels).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_explorer.py
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from odam.structures import TARGETS, Detections, Explanation
from odam.viz.explorer import explorer_html, explorer_image

BUDGET = 3_000_000


def detections(n: int, height: int, width: int, g: torch.Generator) -> Detections:
    size = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.15 + 20
    centre = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1).clamp_min(0)
    boxes = torch.minimum(boxes, torch.tensor([width, height, width, height]) - 1)
    return Detections(boxes, torch.rand(n, generator=g).sort(descending=True).values, torch.randint(1, 5, (n,)))


def odam_like(d: Detections, height: int, width: int) -> torch.Tensor:
    """Blobs at the box centre (score) and at the middle of each edge (left, top, right, bottom)."""
    yy = torch.arange(height).float()[:, None]
    xx = torch.arange(width).float()[None]
    maps = torch.empty(len(d), len(TARGETS), height, width)
    for k, (x1, y1, x2, y2) in enumerate(d.boxes.tolist()):
        cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(4.0, 0.15 * min(x2 - x1, y2 - y1))
        for t, (px, py) in enumerate([(cx, cy), (x1, cy), (cx, y1), (x2, cy), (cx, y2)]):
            maps[k, t] = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * s**2)) * (1e-3 * (k + 1))
    return maps


def gradcam_like(n: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n * len(TARGETS), 1, 15, 20, generator=g)
    maps = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).relu()
    return maps.view(n, len(TARGETS), height, width)


def photo_like(height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """Smooth colour regions with a little grain: compresses like a photo, unlike white noise."""
    coarse = F.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(height, width), mode="bicubic",
                           align_corners=False)[0]
    return (coarse + 0.04 * torch.randn(3, height, width, generator=g)).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=100)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []
    images = []
    for height, width in ((480, 640), (960, 1280)):
        d = detections(args.detections, height, width, g)
        photo = photo_like(height, width, g)
        for kind, map_side in (("ODAM-like", 256), ("Grad-CAM-like", 256), ("Grad-CAM-like", 128)):
            maps = odam_like(d, height, width) if kind == "ODAM-like" else gradcam_like(len(d), height, width, g)
            start = time.perf_counter()
            data = explorer_image(photo, {"odam": Explanation(d, TARGETS, maps)}, name=f"{kind} {width}x{height}",
                                  map_side=map_side)
            seconds = time.perf_counter() - start
            del maps
            # what the image adds to a page: its data block and its entry in the page's index
            block = len(explorer_html([data], title="bench").encode()) - len(explorer_html([], title="bench").encode())
            map_bytes = sum(len(e["png"] or "") for per in data["maps"]["odam"] for e in per.values())
            rows.append((f"{width}x{height}", kind, map_side, block, map_bytes, len(data["image"]), seconds))
            images.append(data)
    page = explorer_html(images, title="bench")
    print(f"{args.detections} detections x ({len(TARGETS)} targets + combined) per image, maps at most map_side px on "
          f"the long side; budget {BUDGET / 1e6:.0f} MB per image\n")
    print("| image | maps | map_side | bytes per image | of which maps | of which photo (JPEG) | within 3 MB | "
          "build (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for size, kind, map_side, block, map_bytes, photo_bytes, seconds in rows:
        print(f"| {size} | {kind} | {map_side} | {block / 1e6:.2f} MB | {map_bytes / 1e6:.2f} MB "
              f"| {photo_bytes / 1e6:.2f} MB "
              f"| {'yes' if block <= BUDGET else 'no'} | {seconds:.1f} |")
    print(f"\nThe page of these {len(images)} images: {len(page.encode()) / 1e6:.2f} MB.")


if __name__ == "__main__":
    main()
