"""How Odam-NMS's decision rule sees overlapping candidates: a diagnostic of a model's object discrimination.

For the first ``--images`` images of a crowd dataset, the candidates before NMS that score > ``--score`` and
match a person (IoU >= 0.5 with a non-ignored ground-truth box) are explained by ODAM (frozen GroupNorm
statistics, short edge 50, as Odam-NMS does). Among pairs of them whose boxes overlap with IoU >= 0.5, it
reports how many pairs on *different* people have a correlation <= T_l (Odam-NMS keeps both: right) and how
many on the *same* person do (Odam-NMS keeps a duplicate: wrong), and the median correlations.

    python benchmarks/nms_pairs.py --data /work/data/eval-crowd --models synthcrowd-fcos synthcrowd-fcos-odamtrain
    ... --write docs/RESULTS.md      # replace the nms-pairs block
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

import odam
from odam.data import read_dataset
from odam.data.stats import write_block
from odam.explainers.odam import ODAM
from odam.nms import Suppression, correlation


def pairs(model: str, data: str, images: int, score: float) -> dict[str, np.ndarray]:
    detector = odam.load_detector(model)
    explainer = ODAM(detector, frozen_norm=True)
    max_candidates = Suppression("nms").max_candidates
    found: dict[str, list] = {"same": [], "different": [], "same_far": []}
    for record in read_dataset(data).images[:images]:
        trace = detector.trace(record.load_image(), candidates=True, max_candidates=max_candidates)
        cands = trace.detections
        corr = correlation(explainer.vectors(trace, cands, 50))
        gt = record.clipped_boxes_tensor()
        gt = gt[~torch.as_tensor(record.ignore)]
        if len(gt) == 0:
            continue
        best, which = box_iou(cands.boxes, gt).max(1)
        ok = (best >= 0.5) & (cands.scores > score)
        iou = box_iou(cands.boxes, cands.boxes)
        i, j = torch.triu_indices(len(cands), len(cands), 1)
        keep = ok[i] & ok[j]
        i, j = i[keep], j[keep]
        same, near = which[i] == which[j], iou[i, j] >= 0.5
        found["same"] += corr[i[same & near], j[same & near]].tolist()
        found["different"] += corr[i[~same & near], j[~same & near]].tolist()
        found["same_far"] += corr[i[same & ~near], j[same & ~near]].tolist()
    return {k: np.asarray(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--score", type=float, default=0.3)
    parser.add_argument("--low", type=float, default=0.2)
    parser.add_argument("--high", type=float, default=0.8)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = [f"`python benchmarks/nms_pairs.py --data {args.data} --models {' '.join(args.models)} --images "
             f"{args.images} --score {args.score:g}`; candidate pairs with box IoU >= 0.5", "",
             f"| model | different people: corr <= {args.low:g} (kept, rightly) | same person: corr <= {args.low:g} "
             f"(kept, wrongly) | median corr, same / different | same person, IoU < 0.5: corr > {args.high:g} |",
             "|---|---|---|---|---|"]
    for model in args.models:
        p = pairs(model, args.data, args.images, args.score)
        lines.append(f"| {model} | {100 * (p['different'] <= args.low).mean():.1f}% of {len(p['different']):,} | "
                     f"{100 * (p['same'] <= args.low).mean():.1f}% of {len(p['same']):,} | "
                     f"{np.median(p['same']):.2f} / {np.median(p['different']):.2f} | "
                     f"{100 * (p['same_far'] > args.high).mean():.1f}% of {len(p['same_far']):,} |")
    text = "\n".join(lines)
    print(text)
    if args.write is not None:
        write_block(args.write, "nms-pairs", text)


if __name__ == "__main__":
    main()
