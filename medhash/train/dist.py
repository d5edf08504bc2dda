"""One training process among many under `torchrun` (DDP), or the only one.

The process group uses gloo on CPU and NCCL on CUDA; without WORLD_SIZE > 1 every helper here is
the single-process no-op, so the trainers are written once for both. Ranks agree on the data order
without communicating: each epoch is one permutation seeded by (seed, epoch), cut into equal shards.
Only rank 0 writes files; the others wait at a barrier, so no rank reads a half-written state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medhash.atomic import atomic_path
from medhash.model.runtime import resolve_device

__all__ = ["DistContext", "all_gather_cat", "barrier", "init_process", "rank_batches", "rank_shard", "save_on_main"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _join_process_group(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op without WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_process(device_name: str) -> tuple[torch.device, DistContext]:
    """This process's device and place in the process group; under torchrun each rank takes the GPU of its LOCAL_RANK."""
    device = resolve_device(device_name)
    ctx = _join_process_group(device)
    if device.type == "cuda":
        if ctx.enabled:
            device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return device, ctx


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_gather_cat(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0 (rank order)."""
    if not ctx.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def rank_shard(n: int, seed: int, epoch: int, ctx: DistContext) -> np.ndarray:
    """This rank's items of one epoch: one seeded permutation shared by all ranks, cut into equal shards.

    Every rank gets the same count (DDP steps must match); the remainder is dropped for this epoch.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // ctx.world_size
    return perm[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]


def rank_batches(n: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[np.ndarray]:
    """This rank's full batches of one epoch (one short batch when its shard is smaller than a batch)."""
    mine = rank_shard(n, seed, epoch, ctx)
    n_batches = len(mine) // batch_size if len(mine) >= batch_size else min(1, len(mine))
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def save_on_main(path: str | Path, state: dict[str, Any], ctx: DistContext) -> None:
    """torch.save `state` atomically from rank 0; every rank returns once the file is complete."""
    if ctx.is_main:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    barrier(ctx)
