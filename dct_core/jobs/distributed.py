"""Work split over the processes an existing launcher started (``torchrun`` / ``python -m torch.distributed.run``).

No scheduler of our own: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; each rank takes every world_size-th item
(``items[rank::world_size]``), uses one GPU (its LOCAL_RANK) when CUDA is present, and the ranks meet at a barrier
(gloo on CPU, NCCL on CUDA) before rank 0 writes what they share. Without a launcher it is one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, starting at its rank (stable for a given list)."""
        return list(items[self.rank :: self.world_size])

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def ranks_from_env() -> Ranks:
    """Rank, world size and local rank as torchrun sets them (one process when unset)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


@contextmanager
def process_group(timeout_minutes: float = 240) -> Iterator[Ranks]:
    """The ranks of this launch, with a process group for barriers while there is more than one (gloo on CPU,
    NCCL on CUDA, one device per rank); torn down afterwards. A long timeout: ranks wait for each other's
    whole share of the work at the final barrier."""
    ranks = ranks_from_env()
    started = False
    if ranks.world_size > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
        started = True
    try:
        yield ranks
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ok(ok: bool) -> bool:
    """A barrier that also tells whether every rank got through: a rank that failed must not leave the others
    waiting at the next barrier (work in passes, as a filtered ``dct dataset``). One process: ``ok``."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; one process: [obj]. Lets ranks agree on what they did
    without reading each other's files (a shared file system may show them late)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
