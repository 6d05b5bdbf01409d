"""The pointing game on real photographs with the pretrained RetinaFace: ODAM against Grad-CAM and Grad-CAM++.

Every face RetinaFace detects in the photos that ship inside installed packages (``odam.data.photos``) is
explained by each method, on the same detections and the same feature maps (the FPN level of each face by
default). A hit is the map's peak inside the face's own box (``odam.metrics.pointing_game``); the energy share is
the part of the map's positive mass inside the box (``energy_pointing_game``), averaged over the faces.

    python benchmarks/face_pointing.py                          # print the table
    python benchmarks/face_pointing.py --write docs/RESULTS.md  # replace the face-pointing block
    python benchmarks/face_pointing.py --layer ssh              # the SSH outputs instead of the FPN maps
"""

from __future__ import annotations

import argparse
from pathlib import Path

import odam
from odam.data.photos import PHOTOS, load_photo
from odam.data.stats import write_block
from odam.metrics import energy_pointing_game, pointing_game

METHODS = {"ODAM": odam.ODAM, "Grad-CAM": odam.GradCAM, "Grad-CAM++": odam.GradCAMPlusPlus}


def table(layer: str | None) -> str:
    detector = odam.load_detector("retinaface")
    rows, totals, faces = [], {m: [0, 0.0] for m in METHODS}, 0
    for name in PHOTOS:
        image = load_photo(name)
        dets = detector.detect(image)
        faces += len(dets)
        cells = []
        for method, explainer in METHODS.items():
            maps = explainer(detector, layer=layer).explain(image, detections=dets).maps[:, 0]
            hits = sum(pointing_game(m, b).hit for m, b in zip(maps, dets.boxes, strict=True))
            share = sum(energy_pointing_game(m, b).share for m, b in zip(maps, dets.boxes, strict=True))
            totals[method][0] += hits
            totals[method][1] += share
            cells.append(f"{hits}/{len(dets)} | {share / max(len(dets), 1):.2f}")
        h, w = image.shape[-2:]
        rows.append(f"| {name} ({w}x{h}) | {len(dets)} | " + " | ".join(cells) + " |")
    total = " | ".join(f"**{hits}/{faces}** | {share / faces:.2f}" for hits, share in totals.values())
    header = " | ".join(f"{m} hits | {m} energy" for m in METHODS)
    return "\n".join([
        f"Feature maps: {layer or 'fpn'} (`python benchmarks/face_pointing.py"
        + (f" --layer {layer}" if layer else "") + "`).",
        "",
        f"| photo | faces | {header} |",
        "|---|---|" + "---|---|" * len(METHODS),
        *rows,
        f"| all | {faces} | {total} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default=None, help="explained maps: fpn (default), ssh or a module name")
    parser.add_argument("--write", type=Path, default=None, help="replace the face-pointing block of this file")
    args = parser.parse_args()
    text = table(args.layer)
    print(text)
    if args.write is not None:
        write_block(args.write, f"face-pointing-{args.layer or 'fpn'}", text)


if __name__ == "__main__":
    main()
