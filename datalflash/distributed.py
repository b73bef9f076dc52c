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
    rank, world_size = (
        require_int("rank", rank, error=TypeError),
        require_int("world_size", world_size, error=TypeError),
    )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def draw_seed(generator: torch.Generator | None) -> int:
    """A seed drawn as torch's DataLoader draws its base seed (from ``generator`` or torch's RNG)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def check_seed_can_be_agreed(seed: int | None, world_size: int) -> None:
    """Raise ValueError where ranks could not agree on a drawn seed (no ``seed``, several ranks,
    and no process group to broadcast it over); a check only, no communication."""
    if seed is None and world_size > 1 and not is_initialized():
        raise ValueError(
            "with world_size > 1 and torch.distributed not initialized, pass seed= (the same on every "
            "rank) so that all ranks plan the same order"
        )


def agree_seed(drawn: int, world_size: int) -> int:
    """Rank 0's ``drawn`` seed on every rank (a broadcast; every rank must call this)."""
    if world_size == 1:
        return drawn
    box = [drawn]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])
