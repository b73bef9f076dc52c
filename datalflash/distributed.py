"""Rank, world size and a shared seed, from ``torch.distributed`` or explicit arguments: the one
place loading and conversion learn which process of a job they run in."""

from __future__ import annotations

import torch
import torch.distributed as dist

from datalflash.arguments import require_int


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is running."""
    return dist.is_available() and dist.is_initialized()


def resolve_ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the explicit arguments, else ``torch.distributed``'s when it is
    initialized, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither (to take them from torch.distributed)")
    if rank is None:
        return (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)
    rank, world_size = require_int("rank", rank, error=TypeError), require_int("world_size", world_size, error=TypeError)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def shared_seed(seed: int | None, world_size: int, generator: torch.Generator | None) -> int:
    """The loader's seed: ``seed``, or one drawn as torch draws its base seed; with several
    ranks, rank 0's draw is broadcast so every rank plans the same order."""
    if seed is not None:
        return int(seed)
    drawn = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
    if world_size == 1:
        return drawn
    if not is_initialized():
        raise ValueError(
            "with world_size > 1 and torch.distributed not initialized, pass seed= (the same on every "
            "rank) so that all ranks plan the same order"
        )
    box = [drawn]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])
