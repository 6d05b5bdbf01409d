"""``odam train``: train a detector, writing an odam checkpoint (a thin layer over :func:`odam.train.train`)."""

from __future__ import annotations

import argparse
import os

from odam.cli import common
from odam.cli.common import ARCHITECTURES, BACKBONES


def add_arguments(train: argparse.ArgumentParser) -> None:
    """Add the options of ``odam train`` to its parser (its defaults are :class:`odam.train.TrainConfig`'s)."""
    from odam.train.config import TrainConfig

    d = TrainConfig(model="fcos", data="", out="")
    train.description = ("Train a torchvision detector from scratch; writes an odam checkpoint to --out after every "
                         "epoch and evaluates COCO mAP/AP50 at the end. Under 'torchrun --nproc-per-node N -m odam "
                         "train ...' it trains with DistributedDataParallel.")
    common.add_output_options(train)
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
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``odam train``; returns the exit status."""
    from odam.train import TrainConfig, train
    from odam.viz import format_metric

    device = common.device(args.device)
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
        print(f"odam train: {args.out}: COCO mAP {format_metric(m['mAP'])}, AP50 {format_metric(m['AP50'])} on "
              f"{m['val_images']} validation images")
    return 0
