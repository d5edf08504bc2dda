"""Process-group set-up for `torchrun` (DDP): gloo on CPU, NCCL on CUDA; single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op without WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value


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
