"""Odam-NMS's cost: the suppression alone, and the whole pipeline against plain NMS, at the bundled models' scale
and at the paper's (ResNet-50-FPN, 800 px, about 1000 candidates per image).

1. **The suppression** (``odam.nms``) on N = 1000 candidates with 50x50 heat-map vectors, against
   ``torchvision.ops.nms`` on the same boxes, against the same pass without its bfloat16 pre-pass (float32 products
   only, what a CPU without bfloat16 in oneDNN or a GPU runs) and against the previous block pass
   (``ops.odam_nms_reference``):
   realistic candidates (clusters of overlapping boxes around 60 objects, maps resembling their object's: most
   are suppressed) and the worst case (random boxes with unrelated maps: nothing is suppressed, every IoU and
   correlation row is needed). Median of ``--repeats``, interleaved, after an untimed round of both cases.
2. **The pipeline**, per image of a crowd dataset, for each model: detector + NMS (``nms="nms"``) against
   detector + ODAM maps of every candidate + Odam-NMS (``nms="odam"``), with the maps' GroupNorm statistics
   frozen (the default) and exact. The pipelines take turns on each image after one warm-up image; we report the
   mean seconds per image, their ratio, and where Odam-NMS's time goes (forward pass with the candidates, the
   maps' vectors, the suppression). The ResNet-50-FPN rows are torchvision's ``fcos_resnet50_fpn`` and
   ``fasterrcnn_resnet50_fpn`` with random weights (``torch.manual_seed(0)``, one foreground class, score
   threshold 0 so that ``--max-candidates`` of them enter), on the dataset's images upscaled to an 800 px short
   side; their exact-GroupNorm pipeline is not timed (one full-head backward pass per candidate: hours on a CPU).
3. **The kept sets** (``--check``): on the first images of the dataset, with both bundled models, the kept set of
   the current pipeline (maps placed directly on the 50-cell grid, ``odam_nms``) against the previous one (maps
   resampled to the image then averaged, ``ops.odam_nms_reference``).

    OMP_NUM_THREADS=1 python benchmarks/bench_nms.py --data /work/data/eval-crowd                         # print
    OMP_NUM_THREADS=1 python benchmarks/bench_nms.py --data /work/data/eval-crowd --write docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import odam
from odam.data import read_dataset
from odam.data.stats import write_block
from odam.explainers.odam import ODAM
from odam.nms import Suppressed, Suppression, decide, odam_nms, ops

R50 = {"fcos-r50-fpn": "fcos_resnet50_fpn", "fasterrcnn-r50-fpn": "fasterrcnn_resnet50_fpn"}


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def suppression_times(n: int, repeats: int, device: torch.device) -> list[dict]:
    """Median milliseconds of each pass on both cases, after one untimed round of both: the first round in a
    process runs the bfloat16 pass far slower (12 against 7 ms clustered, here), well past its first repeat."""
    _suppression_round(n, 2, device)
    return _suppression_round(n, repeats, device)


def _suppression_round(n: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for name, data in (("clustered", _clustered(n)), ("worst case", _random(n))):
        boxes, scores, vectors = (t.to(device) for t in data)
        fns: dict[str, Callable] = {
            "odam_nms": lambda b=boxes, s=scores, v=vectors: odam_nms(b, s, v),
            "float32": lambda b=boxes, s=scores, v=vectors: odam_nms(b, s, v, prepass=False),
            "previous": lambda b=boxes, s=scores, v=vectors: ops.odam_nms_reference(b, s, v),
            "torchvision": lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.5),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats + 1):
            for k, fn in fns.items():
                _sync(device)
                start = time.perf_counter()
                out = fn()
                _sync(device)
                times[k].append(time.perf_counter() - start)
                if k == "odam_nms":
                    keep = out
                elif k in ("previous", "float32") and out.tolist() != keep.tolist():
                    raise AssertionError(f"{name}: odam_nms and {k} keep different sets")
        coarse = ops.prepass_pays(n, device)
        rows.append({"case": name, "n": n, "kept": len(keep), "coarse": coarse,
                     **{k: 1000 * statistics.median(v[1:]) for k, v in times.items()}})
    return rows


def _r50(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    builder = getattr(torchvision.models.detection, R50[name])
    if "fcos" in name:  # one sigmoid per foreground class
        return builder(weights=None, weights_backbone=None, num_classes=1, score_thresh=0.0)
    return builder(weights=None, weights_backbone=None, num_classes=2, box_score_thresh=0.0)  # background + 1


def _images(data: str, count: int, short_side: int | None) -> list[torch.Tensor]:
    images = [r.load_image() for r in read_dataset(data).images[:count]]
    if short_side is None:
        return images
    return [F.interpolate(x[None], scale_factor=short_side / min(x.shape[-2:]), mode="bilinear",
                          align_corners=False)[0].clamp(0, 1) for x in images]


def pipeline_times(model: str, data: str, images: int, max_candidates: int, device: torch.device,
                   exact: bool = True, previous: bool = True) -> dict:
    """Mean seconds per image of each pipeline, and Odam-NMS's (frozen) breakdown; ``previous`` also times the
    previous frozen pipeline (maps resampled to the image, one backward pass per crop group, the previous block
    pass)."""
    if model in R50:
        inner = odam.wrap_detector(_r50(model).to(device))
        pictures = _images(data, images + 1, 800)
    else:
        inner = odam.load_detector(model)
        inner.model.to(device)
        pictures = _images(data, images + 1, None)
    nms = Suppressed(inner, Suppression("nms", max_candidates=max_candidates))
    frozen = Suppression("odam-nms", max_candidates=max_candidates)
    exact_det = Suppressed(inner, Suppression("odam-nms", max_candidates=max_candidates, frozen_norm=False))

    def odam_staged(image: torch.Tensor, clock: dict[str, float]) -> None:
        # what Suppressed(inner, frozen).detect(image) does, stage by stage
        start = time.perf_counter()
        trace = inner.trace(image, candidates=True, max_candidates=max_candidates)
        _sync(device)
        clock["forward"] = time.perf_counter() - start
        start = time.perf_counter()
        vectors = ODAM(inner, frozen_norm=True).vectors(trace, trace.detections, frozen.short_edge)
        _sync(device)
        clock["maps"] = time.perf_counter() - start
        start = time.perf_counter()
        decide(trace.detections, frozen, vectors=vectors, max_detections=inner.max_detections)
        _sync(device)
        clock["suppression"] = time.perf_counter() - start
        clock["candidates"] = len(trace.detections)

    stages = ("forward", "maps", "suppression", "candidates")
    times: dict[str, list[float]] = {k: [] for k in ("nms", "odam-nms (frozen)", "odam-nms (exact)", "previous",
                                                     *stages)}
    for i, image in enumerate(pictures):
        image = image.to(device)
        clock: dict[str, float] = {}
        _sync(device)
        start = time.perf_counter()
        nms.detect(image)
        _sync(device)
        t_nms = time.perf_counter() - start
        odam_staged(image, clock)
        t_previous = None
        if previous:
            start = time.perf_counter()
            trace = inner.trace(image, candidates=True, max_candidates=max_candidates)
            vectors = _previous_explainer(inner).vectors(trace, trace.detections, frozen.short_edge, direct=False)
            _previous_keep(trace.detections, frozen, vectors, inner.max_detections)
            _sync(device)
            t_previous = time.perf_counter() - start
        t_exact = None
        if exact:
            start = time.perf_counter()
            exact_det.detect(image)
            _sync(device)
            t_exact = time.perf_counter() - start
        if i:  # the first image warms up
            times["nms"].append(t_nms)
            times["odam-nms (frozen)"].append(clock["forward"] + clock["maps"] + clock["suppression"])
            for k in stages:
                times[k].append(clock[k])
            if exact:
                times["odam-nms (exact)"].append(t_exact)
            if previous:
                times["previous"].append(t_previous)
    mean = {k: statistics.mean(v) if v else None for k, v in times.items()}
    return {"model": model, "images": len(pictures) - 1, **mean}


def _previous_explainer(detector: odam.DetectorAdapter) -> ODAM:
    """ODAM as the previous pipeline ran it: maps resampled to the image, one backward pass per crop group."""
    explainer = ODAM(detector, frozen_norm=True)
    explainer.one_backward = False
    return explainer


def _previous_keep(cands: odam.Detections, config: Suppression, vectors: torch.Tensor,
                   max_detections: int | None) -> torch.Tensor:
    """What ``decide`` keeps, with the previous block pass, class by class."""
    kept = []
    for label in torch.unique(cands.labels):
        idx = torch.where(cands.labels == label)[0]
        kept.append(idx[ops.odam_nms_reference(cands.boxes[idx], cands.scores[idx], vectors[idx], None,
                                         config.iou_threshold, config.low, config.high, config.centred)])
    keep = torch.cat(kept)
    keep = keep[torch.sort(cands.scores[keep], descending=True, stable=True).indices]
    return keep[:max_detections]


def kept_set_check(models: list[str], data: str, images: int, max_candidates: int, device: torch.device
                   ) -> list[dict]:
    """Per bundled model, on how many of the first ``images`` images the current pipeline keeps exactly the
    candidates the previous one kept, and the largest relative difference between their vectors."""
    rows = []
    config = Suppression("odam-nms", max_candidates=max_candidates)
    for model in models:
        inner = odam.load_detector(model)
        inner.model.to(device)
        same, worst = 0, 0.0
        pictures = _images(data, images, None)
        for image in pictures:
            trace = inner.trace(image.to(device), candidates=True, max_candidates=max_candidates)
            cands = trace.detections
            new = ODAM(inner, frozen_norm=True).vectors(trace, cands, config.short_edge)
            old = _previous_explainer(inner).vectors(trace, cands, config.short_edge, direct=False)
            worst = max(worst, float(((new - old).abs().amax(1) / old.abs().amax(1).clamp_min(1e-30)).max()))
            keep_new = decide(cands, config, vectors=new, max_detections=inner.max_detections).keep
            keep_old = _previous_keep(cands, config, old, inner.max_detections)
            same += keep_new.tolist() == keep_old.tolist()
        rows.append({"model": model, "images": len(pictures), "identical": same, "vector_error": worst})
    return rows


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def markdown(supp: list[dict], pipes: list[dict], checks: list[dict], threads: int, device: torch.device) -> str:
    where = f"{platform.machine()} CPU with {threads} threads" if device.type == "cpu" else str(device)
    lines = [f"`OMP_NUM_THREADS={threads} python benchmarks/bench_nms.py` on {where}, torch {torch.__version__}.", "",
             "| candidates | N | kept | `odam_nms` (ms) | bfloat16 pre-pass | float32 only (ms) "
             "| previous block pass (ms) | `torchvision.ops.nms` (ms) | goal |", "|" + "---|" * 9]
    for r in supp:
        goal = "≤ 10 ms" if r["case"] == "clustered" else "≤ 30 ms"
        lines.append(f"| {r['case']} | {r['n']} | {r['kept']} | **{r['odam_nms']:.1f}** | "
                     f"{'used' if r['coarse'] else 'not here'} | {r['float32']:.1f} | {r['previous']:.1f} | "
                     f"{r['torchvision']:.1f} | {goal} |")
    lines += ["", "| model | images | candidates / image | detector + NMS (s) | + maps + Odam-NMS, frozen GN (s) | "
              "ratio | goal | previous pipeline (s) | ratio | exact GN (s) | ratio | Odam-NMS: forward (s) | maps (s) "
              "| suppression (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in pipes:
        goal = "≤ 1.5x" if p["model"] in R50 else "≤ 10x"
        exact, before = p["odam-nms (exact)"], p["previous"]
        exact_ratio = "—" if exact is None else f"{exact / p['nms']:.1f}x"
        before_ratio = "—" if before is None else f"{before / p['nms']:.1f}x"
        lines.append(f"| {Path(p['model']).name} | {p['images']} | {p['candidates']:.0f} | {p['nms']:.3f} | "
                     f"{p['odam-nms (frozen)']:.3f} | **{p['odam-nms (frozen)'] / p['nms']:.1f}x** | {goal} | "
                     f"{_s(before)} | {before_ratio} | {_s(exact)} | {exact_ratio} | "
                     f"{p['forward']:.3f} | {p['maps']:.3f} | {p['suppression']:.3f} |")
    if checks:
        lines += ["", "Kept sets, current pipeline against the previous one (maps resampled to the image then "
                  "averaged; the previous block pass):", "",
                  "| model | images | identical kept sets | vectors: max relative difference |", "|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['model']} | {c['images']} | {c['identical']} / {c['images']} | "
                         f"{c['vector_error']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a crowd dataset (e.g. SynthCrowd eval-crowd)")
    parser.add_argument("--models", nargs="*", default=["synthcrowd-fcos-odamtrain", "synthcrowd-fasterrcnn-odamtrain"])
    parser.add_argument("--r50", nargs="*", default=list(R50), choices=list(R50),
                        help="ResNet-50-FPN rows (random weights, 800 px); none with an empty list")
    parser.add_argument("--images", type=int, default=10, help="timed images per bundled model (after one warm-up)")
    parser.add_argument("--r50-images", type=int, default=2, help="timed images per ResNet-50 model")
    parser.add_argument("--r50-previous", action="store_true",
                        help="also time the previous pipeline on the ResNet-50 rows (slow on a CPU)")
    parser.add_argument("--check", type=int, default=20, help="images for the kept-set check (0: skip)")
    parser.add_argument("--max-candidates", type=int, default=1000)
    parser.add_argument("--n", type=int, default=1000, help="candidates for the suppression-only timing")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--write", type=Path, default=None, help="replace the bench_nms block of this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    supp = suppression_times(args.n, args.repeats, device)
    print(markdown(supp, [], [], args.threads, device), flush=True)
    pipes = [pipeline_times(m, args.data, args.images, args.max_candidates, device) for m in args.models]
    pipes += [pipeline_times(m, args.data, args.r50_images, args.max_candidates, device, exact=False,
                             previous=args.r50_previous) for m in args.r50]
    checks = kept_set_check(args.models, args.data, args.check, args.max_candidates, device) if args.check else []
    text = markdown(supp, pipes, checks, args.threads, device)
    print(text)
    if args.write is not None:
        write_block(args.write, "bench_nms", text)


if __name__ == "__main__":
    main()
