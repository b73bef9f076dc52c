"""Loader state for exact mid-epoch resume: a small JSON dict, checked before it is trusted.

A state names the data (a fingerprint of the store's manifest and split, or of a RAM dataset's
fields), the settings that decide the order (shuffle, seed, window; ``seed_per_epoch`` when the
seed was drawn for this epoch alone, as ``seed=None`` loaders draw one per epoch: then the order
is the seed's with epoch number 0, and the following epochs draw their own), and where the epoch
stands:
the positions that were still to serve when the epoch (or its last resume) started, the world
size and ``drop_last`` they were split with, and how many positions of its share each rank has
served since. Every rank of a DDP job steps in lockstep, so one rank's state describes all of
them. Resumed on the same world size, each rank continues its own share, batch for batch as an
uninterrupted run; on another world size the positions not yet served are shared out anew.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from datalflash.arguments import require_int
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.memory import FlashDataset
from datalflash.ordering.ranges import Ranges, normalize, served, subtract, total

STATE_VERSION = 1
ORDER_KEYS = ("data", "num_samples", "shuffle", "window_chunks", "tokens")


def fingerprint(dataset: FlashDataset | ChunkedDataset) -> str:
    """A short id of the data a loader reads: the store's manifest and split, or a RAM
    dataset's field dtypes and shapes."""
    if isinstance(dataset, ChunkedDataset):
        doc: Any = {"manifest": dataset.store.manifest.to_json(), "split": dataset.split}
    else:
        doc = {name: [str(t.dtype), list(t.shape)] for name, t in dataset.fields.items()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def make_state(
    order: dict,
    *,
    seed: int,
    seed_per_epoch: bool,
    epoch: int,
    remaining: Ranges,
    world_size: int,
    drop_last: bool,
    served: int,
) -> dict:
    """The state dict (see the module docstring); ``order`` holds :data:`ORDER_KEYS`."""
    return {
        "datalflash_loader_state": STATE_VERSION,
        **order,
        "seed": seed,
        "seed_per_epoch": seed_per_epoch,
        "epoch": epoch,
        "remaining": [list(r) for r in remaining],
        "world_size": world_size,
        "drop_last": drop_last,
        "served": served,
    }


def _int(state: dict, key: str, low: int = 0) -> int:
    return require_int(f"loader state: {key!r}", state.get(key), low)


def resume_point(state: Any, order: dict, world_size: int, drop_last: bool) -> tuple[int, bool, int, Ranges, int]:
    """``(seed, seed per epoch, epoch, remaining, skip)`` to resume a state on ``world_size`` ranks: each rank
    serves its share of ``remaining`` from position ``skip`` on. Checks first that the state
    belongs to a loader over the same data with the same order settings (``order``)."""
    if not isinstance(state, dict) or state.get("datalflash_loader_state") != STATE_VERSION:
        raise ValueError(f"not a datalflash loader state (version {STATE_VERSION}): {str(state)[:200]}")
    differ = [f"{k}: saved {state.get(k)!r}, this loader {order[k]!r}" for k in ORDER_KEYS if state.get(k) != order[k]]
    if differ:
        raise ValueError("loader state is for different data or settings; " + "; ".join(differ))
    seed, epoch, saved_world = _int(state, "seed", -(2**63)), _int(state, "epoch"), _int(state, "world_size", 1)
    per_epoch = state.get("seed_per_epoch", False)
    if not isinstance(per_epoch, bool):
        raise ValueError(f"loader state: 'seed_per_epoch' must be a bool, got {per_epoch!r}")
    served_per_rank, saved_drop_last = _int(state, "served"), state.get("drop_last")
    if not isinstance(saved_drop_last, bool):
        raise ValueError(f"loader state: 'drop_last' must be a bool, got {saved_drop_last!r}")
    raw = state.get("remaining")
    n = order["num_samples"]
    if not isinstance(raw, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and 0 <= r[0] <= r[1] <= n
        for r in raw
    ):
        raise ValueError(f"loader state: 'remaining' must be [start, stop] pairs within 0..{n}")
    remaining = [(a, b) for a, b in raw]
    if total(normalize(remaining)) != total(remaining):
        raise ValueError("loader state: 'remaining' ranges overlap")
    if (saved_world, saved_drop_last) == (world_size, drop_last):
        return seed, per_epoch, epoch, remaining, served_per_rank
    left = subtract(remaining, served(remaining, saved_world, saved_drop_last, served_per_rank))
    return seed, per_epoch, epoch, left, 0
