"""One command as several processes under ``torchrun``: the environment, the process group, the shard rule and
the sync points where the ranks share their errors.

Shared by training (:mod:`odam.train.engine`) and the evaluation runners (:mod:`odam.evaluation`). The process
group is torchrun's (``env://``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):
gloo on the CPU, nccl on CUDA with rank ``r`` on ``cuda:LOCAL_RANK``. Outside torchrun everything here is a
single process: rank 0 of 1, no process group, sync points that do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: How long a collective waits for the slowest rank before it fails (``init_process_group(timeout=...)``). An
#: evaluation's ranks meet after their whole shards, which can end hours apart on a long run; a rank that dies
#: does not make the others wait this long, since torchrun stops every rank when one exits.
TIMEOUT = timedelta(hours=4)


def environment() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it.

    Example:
        >>> environment() if "WORLD_SIZE" not in os.environ else (0, 1, 0)
        (0, 1, 0)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def shard(items: Sequence[T], rank: int, world: int) -> Sequence[T]:
    """Rank ``rank``'s share of ``items``: every ``world``-th item, from the ``rank``-th on. The shares of the
    ``world`` ranks are disjoint, cover ``items`` and differ in length by at most one.

    Example:
        >>> [shard(list("abcdefg"), rank, 3) for rank in range(3)]
        [['a', 'd', 'g'], ['b', 'e'], ['c', 'f']]
    """
    if not 0 <= rank < world:
        raise ValueError(f"expected 0 <= rank < world, got rank {rank} of {world}")
    return items[rank::world]


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), by rank; ``[obj]`` in a single process."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def process_group(device: str | torch.device) -> Iterator[tuple[int, int, torch.device]]:
    """Join torchrun's process group for the block, unless one is joined already, and leave it at the end of the
    block (also after an exception) if it was joined here. Yields ``(rank, world, device)``: under torchrun a
    CUDA ``device`` becomes ``cuda:LOCAL_RANK``.

    Example:
        >>> with process_group("cpu") as (rank, world, device):
        ...     pass
        >>> (rank, world, device) if "WORLD_SIZE" not in os.environ else (0, 1, torch.device("cpu"))
        (0, 1, device(type='cpu'))
    """
    rank, world, local = environment()
    device = torch.device(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    joined = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        joined = True
    try:
        yield rank, world, device
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def sync_point(world: int) -> Iterator[None]:
    """Run the block on every rank, then wait until all have run it (a barrier that also shares errors).

    An exception in the block on any rank is raised on every rank when they meet: its own on the rank that
    raised it, ``RuntimeError("rank R failed: ...")`` (one line) on the others, so that no rank goes on alone
    and none waits for a rank that gave up. ``KeyboardInterrupt`` is not shared: torchrun stops every rank.

    Example:
        >>> with sync_point(1):  # a single process: the block alone
        ...     x = 1
    """
    if world == 1:
        yield
        return
    try:
        yield
    except Exception as err:
        gather(" ".join(str(err).split()) or type(err).__name__, world)
        raise
    failed = [(rank, error) for rank, error in enumerate(gather(None, world)) if error is not None]
    if failed:
        raise RuntimeError(f"rank {failed[0][0]} failed: {failed[0][1]}")
