"""``odam evaluate ...``: measure detectors and their explanations (thin layers over :mod:`odam.evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from odam.cli import common
from odam.cli.common import BUNDLED, DEFAULT_MODEL
from odam.evaluation.config import METHODS, CorrelationConfig, EvaluationConfig, NmsConfig


def add_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Add ``odam evaluate``'s subcommands to its parser (their defaults are the runners' configurations')."""
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
    det.set_defaults(run=run_detector)

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
    ex.set_defaults(run=run_explanations)

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
    co.set_defaults(run=run_correlation)

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
    nm.set_defaults(run=run_nms)

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
    cmp.set_defaults(run=run_compare)


def run_detector(args: argparse.Namespace) -> int:
    """``odam evaluate detector``; returns the exit status."""
    from odam.data import read_dataset
    from odam.data.stats import write_block
    from odam.models import bundled_path, configure, load_checkpoint
    from odam.train.evaluate import coco_metrics, error_breakdown, evaluate_coco, oracle_results
    from odam.viz import DetectorRow, detector_report

    device = common.device(args.device)
    data = read_dataset(args.data)
    sweep, scores = common.numbers("--nms", args.nms), common.numbers("--errors", args.errors)
    if args.oracle and not sweep:
        raise ValueError("--oracle needs --nms")
    rows = []
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
        seconds = [h.get("seconds") for h in config.get("history", [])]
        size, params = (path / "model.safetensors").stat().st_size, sum(p.numel() for p in model.parameters())
        swept = []
        if sweep:
            own = model.roi_heads.nms_thresh if hasattr(model, "roi_heads") else model.nms_thresh
            for t in sweep:
                configure(model, nms_threshold=t)
                swept.append(evaluate_coco(model, data, progress=False)["AP50"])
            configure(model, nms_threshold=own)
        rows.append(DetectorRow(
            name=spec, architecture=str(config["spec"]), backbone=str(config["kwargs"].get("backbone", "-")),
            parameters=params, weights_bytes=size,
            training_data=str(config.get("training", {}).get("data", "-")), epochs=str(config.get("epochs_done", "-")),
            training_seconds=sum(seconds) if seconds and None not in seconds else None,
            mAP=metrics["mAP"], AP50=metrics["AP50"], nms_ap50=swept, errors=error_breakdown(model, data, scores)))
    oracle = [coco_metrics(data, oracle_results(data, t))["AP50"] for t in sweep] if args.oracle else None
    objects = sum(int((~r.ignore).sum()) for r in data.images) if scores else None
    text = detector_report(rows, data=args.data, images=len(data), nms_thresholds=sweep, oracle_ap50=oracle,
                           error_objects=objects)
    print(text)
    if args.write is not None:
        write_block(args.write, args.key, text)
    return 0


def run_explanations(args: argparse.Namespace) -> int:
    """``odam evaluate explanations``; returns the exit status."""
    from odam.data.stats import write_block
    from odam.evaluation import run, summarize

    data = Path(args.data) / args.split if args.split else Path(args.data)
    if not data.exists():
        raise ValueError(f"no dataset at {data}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    config = EvaluationConfig(
        data=str(data), model=args.model, methods=methods, max_objects=args.max_objects,
        drise_objects=args.drise_objects, drise_masks=args.drise_masks, drise_batch=args.drise_batch,
        steps=args.steps, eval_every=args.eval_every, sanity_objects=args.sanity_objects, seed=args.seed,
    )
    device = common.device(args.device)
    if run(config, args.out, device=device, imports=args.imports) is None:
        return 0  # a rank other than 0 under torchrun: rank 0 reports
    summary = summarize(args.out)
    text = (args.out / "summary.md").read_text(encoding="utf-8").rstrip("\n")
    print(text)
    if args.write is not None:
        write_block(args.write, f"explanations-{Path(summary['data']).name}-{Path(summary['model']).name}", text)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``odam evaluate compare``; returns the exit status."""
    from odam.data.stats import write_block
    from odam.evaluation.report import compare

    flags = f"--method {args.method}" + (" --oracle" if args.oracle else "")
    text = f"`odam evaluate compare {' '.join(map(str, args.runs))} {flags}`\n\n" + compare(
        args.runs, args.method, args.oracle)
    print(text)
    if args.write is not None:
        write_block(args.write, args.key, text)
    return 0


def run_correlation(args: argparse.Namespace) -> int:
    """``odam evaluate correlation``; returns the exit status."""
    from odam.data.stats import write_block
    from odam.evaluation.correlation import markdown, run

    if not Path(args.data).exists():
        raise ValueError(f"no dataset at {args.data}")
    names = [Path(spec).name for spec in args.model]
    if len(set(names)) < len(names):
        raise ValueError(f"models need distinct names, for OUT/<name>: got {', '.join(names)}")
    from odam._distributed import process_group

    summaries = []
    with process_group(common.device(args.device)) as (rank, _, device):  # one group for every model under torchrun
        for spec in args.model:
            config = CorrelationConfig(data=str(args.data), model=spec, max_images=args.max_images,
                                       score_threshold=args.score_threshold, overlap_iou=args.overlap_iou)
            summaries.append(run(config, args.out / Path(spec).name, device=device))
    if rank != 0:
        return 0  # rank 0 reports
    text = (f"`odam evaluate correlation --data {args.data} --model {' '.join(args.model)} --max-images "
            f"{args.max_images} --score-threshold {args.score_threshold:g} --overlap-iou {args.overlap_iou:g}`\n\n"
            + markdown(summaries))
    print(text)
    if args.write is not None:
        write_block(args.write, f"correlation-{Path(args.data).name}", text)
    return 0


def run_nms(args: argparse.Namespace) -> int:
    """``odam evaluate nms``; returns the exit status."""
    from odam.data.stats import write_block
    from odam.evaluation.nms import run, table5, table7

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
    from odam._distributed import process_group

    summaries = []
    with process_group(common.device(args.device)) as (rank, _, device):  # one group for every model under torchrun
        for spec, feature in zip(args.model, features, strict=True):
            config = NmsConfig(data=str(args.data), model=spec, feature_model=feature, methods=methods,
                               max_images=args.max_images, low=args.low, high=args.high,
                               frozen_norm=not args.exact_maps, short_edge=args.short_edge, centred=not args.cosine,
                               max_candidates=args.max_candidates, sweep=args.sweep)
            summaries.append(run(config, args.out / Path(spec).name, device=device))
    if rank != 0:
        return 0  # rank 0 reports
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
