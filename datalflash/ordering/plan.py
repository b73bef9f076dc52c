"""Epoch plans: the two-level shuffle of a chunked split, and plain permutations for RAM data.

A chunked split is shuffled in two levels. The chunk order is permuted; consecutive groups of
``window`` chunks form *windows*; the samples of a window are permuted together. Each chunk is
read once per epoch, and a batch mixes samples of up to ``window`` chunks. Everything here is a
pure function of ``(seed, epoch)`` and sizes, so the plan of any epoch is known up front: the
reader knows what to fetch next, and resuming means recomputing the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random generator of ``epoch`` for a loader seeded with ``seed``."""
    return np.random.default_rng([seed % 2**64, epoch % 2**64])


def sample_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Sample indices ``0..n-1`` in epoch order (a permutation when ``shuffle``)."""
    return epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)


def batch_bounds(total: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of each batch over ``total`` samples, as torch cuts them."""
    stop = total - total % batch_size if drop_last else total
    return [(i, min(i + batch_size, total)) for i in range(0, stop, batch_size)]


@dataclass(frozen=True)
class EpochPlan:
    """The read and sample order of one epoch of a chunked split.

    ``windows[w]`` lists the chunk ids of window ``w`` in read order; the window's rows are those
    chunks concatenated. ``orders[w]`` is the order in which rows of window ``w`` are served.
    """

    windows: list[np.ndarray]
    orders: list[np.ndarray]

    @property
    def window_offsets(self) -> np.ndarray:
        """Position in the epoch's sample sequence where each window starts (plus the total)."""
        return np.concatenate([[0], np.cumsum([len(o) for o in self.orders])]).astype(np.int64)


def plan_epoch(
    chunk_rows: Sequence[int], *, window: int, shuffle: bool, seed: int, epoch: int
) -> EpochPlan:
    """Plan one epoch over chunks of ``chunk_rows[c]`` rows each, ``window`` chunks at a time."""
    if window < 1:
        raise ValueError(f"window must be >= 1 chunk, got {window}")
    rng = epoch_rng(seed, epoch)
    num_chunks = len(chunk_rows)
    chunks = rng.permutation(num_chunks) if shuffle else np.arange(num_chunks)
    windows = [chunks[i : i + window] for i in range(0, num_chunks, window)]
    orders = []
    for ids in windows:
        rows = int(sum(chunk_rows[c] for c in ids))
        orders.append(rng.permutation(rows) if shuffle else np.arange(rows))
    return EpochPlan(windows, orders)
