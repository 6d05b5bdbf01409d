"""Seconds per image: D-RISE (5000 masks) against ODAM, Grad-CAM and Grad-CAM++ on the same image and model.

Every explainer explains the same detections of the bundled SynthCrowd scene with the bundled model, in one
run: all detections the model returns at its own score threshold, and those scoring at least 0.5 (what
``odam demo`` shows). ODAM and the CAMs explain the score only, as D-RISE does. Gradient methods are timed
as the median of ``--repeats`` runs after one warm-up; D-RISE once (it takes minutes on a CPU).

    python benchmarks/bench_drise.py                               # both bundled models, CPU
    python benchmarks/bench_drise.py --write docs/PERFORMANCE.md   # the table in docs/PERFORMANCE.md
    python benchmarks/bench_drise.py --models synthcrowd-fcos --masks 500   # a quick look

``--rpn-compare`` times D-RISE on a two-stage model twice in the same run, alternating ``--repeats`` times: with
torchvision's ``model.rpn``, which post-processes the masked images one by one, and with the batched RPN
post-processing that ``candidates`` uses (``TwoStageAdapter.batched_rpn``):

    OMP_NUM_THREADS=2 python benchmarks/bench_drise.py --rpn-compare --masks 256 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import odam
from odam.cli import DEMO_SCENE
from odam.data.stats import write_block


def _seconds(fn, repeats: int) -> float:  # noqa: ANN001 - a tiny local helper
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(model: str, masks: int, batch: int, repeats: int, device: str) -> list[dict]:
    detector = odam.load_detector(model)
    detector.model.to(device)
    image = odam.load_image(DEMO_SCENE).to(device)
    every = detector.detect(image)
    rows = []
    for label, dets in (("all", every), ("score >= 0.5", every[every.scores >= 0.5])):
        drise = odam.DRISE(detector, num_masks=masks, batch_size=batch, progress=False)
        row = {"model": model, "detections": f"{len(dets)} ({label})"}
        for name, explainer in (("odam", odam.ODAM(detector)), ("gradcam", odam.GradCAM(detector)),
                                ("gradcam++", odam.GradCAMPlusPlus(detector))):
            explainer.explain(image, detections=dets)  # warm-up
            row[name] = _seconds(lambda e=explainer, d=dets: e.explain(image, detections=d), repeats)
        row["drise"] = _seconds(lambda e=drise, d=dets: e.explain(image, detections=d), 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def rpn_compare(model: str, masks: int, batch: int, repeats: int, device: str) -> dict:
    """Seconds per image of D-RISE with torchvision's per-image RPN post-processing and with the batched one,
    each the median of ``repeats`` runs, the two alternating (after one short warm-up of each)."""
    detector = odam.load_detector(model)
    if not hasattr(detector, "batched_rpn"):
        raise SystemExit(f"--rpn-compare needs a two-stage model, got {model}")
    detector.model.to(device)
    image = odam.load_image(DEMO_SCENE).to(device)
    dets = detector.detect(image)
    times: dict[bool, list[float]] = {False: [], True: []}
    for batched in (False, True):  # warm-up
        detector.batched_rpn = batched
        odam.DRISE(detector, num_masks=batch, batch_size=batch, progress=False).explain(image, detections=dets)
    for _ in range(repeats):
        for batched in (False, True):
            detector.batched_rpn = batched
            drise = odam.DRISE(detector, num_masks=masks, batch_size=batch, progress=False)
            times[batched].append(_seconds(lambda e=drise: e.explain(image, detections=dets), 1))
    row = {"model": model, "detections": len(dets), "old": statistics.median(times[False]),
           "new": statistics.median(times[True]), "runs": times}
    print(row, flush=True)
    return row


def rpn_table(rows: list[dict], masks: int, batch: int, device: str) -> str:
    lines = [f"| model | detections | D-RISE ({masks} masks, batch {batch}) s/image, torchvision RPN per image "
             "| batched RPN | speed-up |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['detections']} | {r['old']:.2f} | {r['new']:.2f} "
                     f"| **{r['old'] / r['new']:.2f}x** |")
    return "\n".join(lines) + f"\n\nOn {_where(device)}, torch {torch.__version__}, the bundled 320x320 scene."


def _where(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"


def table(rows: list[dict], masks: int, device: str) -> str:
    lines = [f"| model | detections | ODAM s/image | Grad-CAM s/image | Grad-CAM++ s/image | D-RISE ({masks} masks) "
             "s/image | D-RISE / ODAM |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['detections']} | {r['odam']:.3f} | {r['gradcam']:.3f} "
                     f"| {r['gradcam++']:.3f} | {r['drise']:.1f} | **{r['drise'] / r['odam']:.0f}x** |")
    return "\n".join(lines) + f"\n\nOn {_where(device)}, torch {torch.__version__}, the bundled 320x320 scene."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="synthcrowd-fcos,synthcrowd-fasterrcnn")
    parser.add_argument("--masks", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=32, help="D-RISE masked images per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", type=Path, default=None, help="replace the bench_drise block of this file")
    parser.add_argument("--rpn-compare", action="store_true",
                        help="two-stage models only: torchvision's per-image RPN against the batched one")
    args = parser.parse_args()
    if args.rpn_compare:
        models = args.models if args.models != parser.get_default("models") else "synthcrowd-fasterrcnn"
        rows = [rpn_compare(m, args.masks, args.batch, args.repeats, args.device) for m in models.split(",")]
        text = rpn_table(rows, args.masks, args.batch, args.device)
        print(text)
        if args.write:
            write_block(args.write, f"bench_drise-rpn-{args.device.split(':')[0]}", text)
        return
    rows = [r for m in args.models.split(",") for r in run(m, args.masks, args.batch, args.repeats, args.device)]
    text = table(rows, args.masks, args.device)
    print(text)
    if args.write:
        write_block(args.write, f"bench_drise-{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()
