"""The training loop behind ``odam train``: one process, or one per device under ``torchrun`` (DDP).

Design choices (see docs/MODELS.md):

* **Reproducible by construction.** Every random choice of epoch ``e`` (the order of images, flips, the
  scale jitter and the detectors' own samplers) comes from seeds derived from ``(seed, e)``, set at the start
  of the epoch. A checkpoint therefore needs only the weights, the momentum buffers, the epoch and step
  counters (and on CUDA the AMP loss-scaler state), and a resumed run replays exactly what an uninterrupted
  one would have done.
* **Atomic checkpoints.** After every epoch, rank 0 writes ``train_state.safetensors`` (weights and momentum;
  its metadata holds the full JSON state), ``train_state.json`` (the same state, to read), and then the
  loadable model checkpoint (``model.safetensors`` and ``config.json``), each to a temporary name and then
  renamed. Resuming reads ``train_state.safetensors`` alone, so a run killed at any moment resumes from the
  last complete epoch.
* **Data parallel.** Under ``torchrun`` each rank takes every ``world``-th image of the epoch's permutation
  (disjoint shards, equal length), gradients are averaged by ``DistributedDataParallel`` (gloo on CPU, nccl
  on CUDA), batch-norm running statistics are averaged over ranks after every epoch, and at the end the ranks
  compare digests of their whole state and fail, before the final evaluation, if they diverged. A failure on
  one rank (a non-finite gradient, a failed save) is seen by all ranks at the same step, so none hangs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import Tensor, nn
from tqdm import tqdm

from odam import _distributed
from odam._atomic import atomic_path, atomic_write
from odam.data import Dataset, read_dataset
from odam.models import create_model, save_checkpoint
from odam.train.config import TrainConfig
from odam.train.evaluate import evaluate_coco
from odam.train.samples import load_image_tensor, training_target

#: The name of label 0 in checkpoint categories, which are indexed by label as torchvision's are.
BACKGROUND = "__background__"
_STATE = "train_state.safetensors"
_STATE_JSON = "train_state.json"


# ------------------------------------------------------------------------------------------------ data


class _Samples(torch.utils.data.Dataset):
    def __init__(self, dataset: Dataset, plan: list[tuple[int, bool]]) -> None:
        self.dataset, self.plan = dataset, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor], int]:
        index, flip = self.plan[i]
        record = self.dataset.images[index]
        image = load_image_tensor(record)
        return (image.flip(-1) if flip else image), training_target(record, flip), index


def shard(num_images: int, epoch: int, seed: int, rank: int, world: int, batch_size: int,
          flip: float = 0.5) -> list[tuple[int, bool]]:
    """This rank's ``(image index, flip)`` plan for one epoch: every ``world``-th item of a seeded permutation,
    cut to a whole number of batches so that all ranks run the same number of steps.

    Example:
        >>> a = shard(10, epoch=0, seed=1, rank=0, world=2, batch_size=2)
        >>> b = shard(10, epoch=0, seed=1, rank=1, world=2, batch_size=2)
        >>> len(a), len(b), set(i for i, _ in a).isdisjoint(i for i, _ in b)
        (4, 4, True)
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_images)
    flips = rng.random(num_images)
    steps = num_images // (world * batch_size)
    mine = _distributed.shard(order, rank, world)[: steps * batch_size]
    return [(int(i), bool(flips[i] < flip)) for i in mine]


def _iters_per_epoch(config: TrainConfig, num_images: int, world: int) -> int:
    steps = num_images // (world * config.batch_size)
    if steps == 0:
        raise ValueError(f"{num_images} training images cannot fill one batch of {config.batch_size} on "
                         f"{world} process(es); lower --batch-size")
    return steps if config.max_iters is None else min(steps, config.max_iters)


# ------------------------------------------------------------------------------------------- schedule


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up from ``lr / 1000`` over ``warmup_iters`` steps, then cosine decay to 0 at ``total``.

    Example:
        >>> c = TrainConfig(model="fcos", data="", out="", lr=0.1, warmup_iters=10)
        >>> round(learning_rate(c, 0, 110), 6), learning_rate(c, 10, 110), round(learning_rate(c, 60, 110), 6)
        (0.0001, 0.1, 0.05)
    """
    warm = min(config.warmup_iters, max(total - 1, 0))
    if step < warm:
        return config.lr * (0.001 + 0.999 * step / warm)
    span = max(total - warm, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch's global generator for epoch ``epoch`` (-1: the initial weights)."""
    torch.manual_seed(int(np.random.default_rng([seed, epoch + 1, 7]).integers(2**62)))


def jitter_sizes(config: TrainConfig) -> tuple[int, ...]:
    """The training resize choices: five sizes spread over ``jitter * min_size``, rounded to multiples of 16.

    Example:
        >>> jitter_sizes(TrainConfig(model="fcos", data="", out="", min_size=320))
        (256, 288, 320, 352, 384)
    """
    lo, hi = config.jitter
    sizes = {max(16, round(config.min_size * f / 16) * 16) for f in np.linspace(lo, hi, 5)}
    return tuple(sorted(sizes | {config.min_size}))


# -------------------------------------------------------------------------------------------- training


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a detector and write its checkpoint to ``config.out``; returns the final JSON state.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group and trains with DDP.

    Raises:
        ValueError: for bad settings, unreadable data (:class:`odam.data.DatasetError`), or a checkpoint that
            does not fit ``--resume``.
        FloatingPointError: when the gradient becomes non-finite (lower the learning rate); with AMP on CUDA
            the loss scaler skips such steps instead.
        RuntimeError: when ranks diverge, or (on the other ranks) when rank 0 could not save a checkpoint.
    """
    config.check()
    rank, world, local = _distributed.environment()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, rank, world, device, resume, progress and rank == 0)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, rank: int, world: int, device: torch.device, resume: bool,
           progress: bool) -> dict[str, Any]:
    data = read_dataset(config.data)
    if config.val is not None:
        train_set, val_set = data, read_dataset(config.val)
        if val_set.categories != data.categories:
            raise ValueError(f"validation categories {val_set.categories} differ from training {data.categories}")
    else:
        train_set, val_set = split(data, config.val_fraction)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    kwargs = config.model_kwargs(data.num_classes)
    _seed_epoch(config.seed, -1)  # the initial weights
    model = create_model(f"odam:{config.model}", **kwargs).to(device)
    optimizer = torch.optim.SGD(_parameter_groups(model, config.weight_decay), lr=config.lr,
                                momentum=config.momentum)
    iters = _iters_per_epoch(config, len(train_set), world)
    total = iters * config.epochs
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "training": _jsonable(config),
                             "categories": list(data.categories), "world_size": world}
    if resume:
        state = _restore(out, config, model, optimizer, device)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    odam = None
    if config.odam_train:
        from odam.train.odam_train import OdamTrainer

        odam = OdamTrainer(model, weight=config.odam_weight, negatives=config.odam_negatives,
                           max_positives=config.odam_max_positives, second_order=config.odam_second_order)
    embedding = None
    if config.feature_embedding:
        from odam.train.embedding import EmbeddingTrainer

        embedding = EmbeddingTrainer(model, weight=config.embedding_weight)
    eval_sizes = (model.transform.min_size, model.transform.max_size)
    sizes = jitter_sizes(config)
    bar = tqdm(total=total, initial=state["step"], desc=f"train {config.model}", unit="it", disable=not progress,
               dynamic_ncols=True)
    try:
        for epoch in range(state["epoch"], config.epochs):
            _seed_epoch(config.seed, epoch)
            plan = shard(len(train_set), epoch, config.seed, rank, world, config.batch_size, config.flip)
            plan = plan[: iters * config.batch_size]
            model.train()
            model.transform.min_size, model.transform.max_size = sizes, max(config.max_size, max(sizes))
            sums: dict[str, float] = {}
            loaded: list[int] = []  # the images this rank really trained on, for the shard check below
            started = time.monotonic()
            for batch_index, (images, targets, indices) in enumerate(_batches(train_set, plan, config)):
                loaded.extend(indices)
                lr = learning_rate(config, state["step"], total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                watched: dict[str, Tensor] = {}
                with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
                    with odam.capture() if odam is not None else nullcontext(), \
                            embedding.capture() if embedding is not None else nullcontext():
                        losses = net(images, targets)
                    if odam is not None:
                        losses["odam"], stats = odam.loss()
                        watched = {"con": stats["con"], "sep": stats["sep"]}
                    if embedding is not None:
                        losses["embedding"], _ = embedding.loss()
                    loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:  # the scaler skips steps with non-finite gradients by itself
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    # after DDP's all-reduce the gradients, hence this norm, are the same on every rank
                    norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                    if not torch.isfinite(norm):
                        raise FloatingPointError(f"the gradient became {norm.item()} at epoch {epoch + 1} step "
                                                 f"{batch_index + 1} (loss {loss.item():.4g}); lower --lr")
                    optimizer.step()
                state["step"] += 1
                for k, v in (losses | watched).items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                shown = {_short(k): f"{v / (batch_index + 1):.3f}" for k, v in sums.items()}
                bar.set_postfix(shown | {"lr": f"{lr:.2g}"})
                bar.update()
            model.transform.min_size, model.transform.max_size = eval_sizes
            _average_buffers(model, world)
            seen = _distributed.gather(loaded, world)
            state["epoch"] = epoch + 1
            state["history"].append({
                "epoch": epoch + 1, **{k: v / iters for k, v in sums.items()}, "lr_end": lr,
                "seconds": round(time.monotonic() - started, 1),
                "images_per_rank": [len(s) for s in seen], "distinct_images": len(set().union(*map(set, seen))),
            })
            if scaler is not None:
                state["grad_scaler"] = {k: (float(v) if isinstance(v, float) else v)
                                        for k, v in scaler.state_dict().items()}
            failure = None
            if rank == 0:
                try:
                    _save(out, model, optimizer, state, config, data)
                except Exception as err:  # reported on every rank below, then raised here
                    failure = err
            errors = _distributed.gather(None if failure is None else " ".join(str(failure).split()), world)
            if failure is not None:
                raise failure
            if errors[0] is not None:
                raise RuntimeError(f"rank 0 failed to save the checkpoint: {errors[0]}")
    finally:
        bar.close()
        model.transform.min_size, model.transform.max_size = eval_sizes
    digests = _distributed.gather(_digest(model), world)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks hold different weights after training: {digests}")
    state["rank_weight_sha256"] = digests
    if rank == 0:
        if "metrics" not in state:
            model.eval()
            state["metrics"] = evaluate_coco(model, val_set, progress=progress) | {"val_images": len(val_set)}
        # also when resuming a finished run: a kill during the last save may have left only train_state.safetensors
        _save(out, model, optimizer, state, config, data)
    return state


def split(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Hold out the last ``ceil(fraction * N)`` images (at least one when ``fraction`` > 0) for validation."""
    n_val = 0 if fraction == 0 else max(1, math.ceil(fraction * len(data)))
    if n_val >= len(data):
        raise ValueError(f"cannot hold out {n_val} of {len(data)} images for validation; pass --val DIR")
    cut = len(data) - n_val
    return (Dataset(data.images[:cut], data.categories, data.source),
            Dataset(data.images[cut:], data.categories, data.source))


def _batches(dataset: Dataset, plan: list[tuple[int, bool]], config: TrainConfig) -> Iterator:
    loader = torch.utils.data.DataLoader(_Samples(dataset, plan), batch_size=config.batch_size, shuffle=False,
                                         num_workers=config.workers, collate_fn=_collate)
    return iter(loader)


def _collate(batch: list) -> tuple:
    return tuple(zip(*batch, strict=True))


def _short(name: str) -> str:
    return {"classification": "cls", "bbox_regression": "box", "bbox_ctrness": "ctr", "loss_classifier": "cls",
            "loss_box_reg": "box", "loss_objectness": "obj", "loss_rpn_box_reg": "rpn",
            "embedding": "emb"}.get(name, name)


def _average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks.

    DDP keeps parameters identical, but each rank's last forward pass updates its own running statistics.
    """
    if world == 1:
        return
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b.div_(world)


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["jitter"] = list(config.jitter)
    return d


# ----------------------------------------------------------------------------------------- checkpoints


def _save(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
          config: TrainConfig, data: Dataset) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf.detach().to("cpu").contiguous().clone()
    text = json.dumps(state, indent=2, allow_nan=False)
    with atomic_path(out / _STATE) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"state": text})
    atomic_write(out / _STATE_JSON, text + "\n")
    extra = {
        "preprocessing": {"min_size": config.min_size, "max_size": config.max_size,
                          "image_mean": list(model.transform.image_mean), "image_std": list(model.transform.image_std),
                          "input": "RGB float in [0, 1]"},
        "training": state["training"], "epochs_done": state["epoch"], "history": state["history"],
    }
    if "metrics" in state:
        extra["metrics"] = state["metrics"]
    save_checkpoint(model, out, spec=f"odam:{config.model}", kwargs=config.model_kwargs(data.num_classes),
                    categories=[BACKGROUND, *data.categories], extra=extra)


def _restore(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device) -> dict[str, Any]:
    path = out / _STATE
    if not path.is_file():
        raise ValueError(f"cannot resume: {path} does not exist (start without --resume)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = safetensors.torch.load_file(str(path), device=str(device))
        state = json.loads(meta["state"])
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot resume from {path}: {' '.join(str(err).split())}") from err
    before, now_all = state["training"], _jsonable(config)
    defaults = _jsonable(TrainConfig(model=config.model, data="", out=""))  # for settings added since
    for key in sorted(set(now_all) - {"out", "device", "workers"}):
        now = now_all[key]
        if before.get(key, defaults[key]) != now:
            raise ValueError(f"cannot resume {out}: it was trained with {key}={before.get(key)!r}, now {now!r}")
    if state.get("world_size", 1) != int(os.environ.get("WORLD_SIZE", "1")):
        print(f"odam: warning: resuming a {state.get('world_size', 1)}-process run with "
              f"{os.environ.get('WORLD_SIZE', '1')} process(es); the result will differ from an uninterrupted run",
              file=sys.stderr)
        state["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in model.named_parameters():
        buf = tensors.get(f"momentum.{name}")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf
    state["training"] = _jsonable(config)
    return state
