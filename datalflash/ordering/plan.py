"""Epoch plans: the two-level shuffle of a chunked split (RAM data is one window of one chunk).

A chunked split is shuffled in two levels. The chunk order is permuted; consecutive groups of
``window`` chunks form *windows*; the samples of a window are permuted together. Each chunk is
read once per epoch, and a batch mixes samples of up to ``window`` chunks. Everything here is a
pure function of ``(seed, epoch)`` and sizes, so the plan of any epoch is known up front: the
reader knows what to fetch next, and resuming means recomputing the plan.

Positions ``0..N-1`` of an epoch's *sequence* are served in that order; position ``p`` falls in
window ``w`` with ``offsets[w] <= p < offsets[w + 1]`` and is row ``order(w)[p - offsets[w]]`` of
that window (its chunks' rows concatenated in window order). A window's order is drawn from its
own generator, so it is computed only when that window is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datalflash.arguments import require_int


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The random generator of ``epoch`` (and sub-stream ``stream``) for a loader seeded with ``seed``."""
    return np.random.default_rng([seed % 2**64, epoch % 2**64, *stream])


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

    ``windows[w]`` lists the chunk ids of window ``w`` in read order and ``chunk_rows[c]`` the
    rows of chunk ``c``; :meth:`order` gives the order in which a window's rows are served.
    """

    windows: list[np.ndarray]
    chunk_rows: np.ndarray
    shuffle: bool
    seed: int
    epoch: int

    @property
    def window_rows(self) -> np.ndarray:
        """Rows of each window."""
        return np.array([int(self.chunk_rows[ids].sum()) for ids in self.windows], dtype=np.int64)

    @property
    def window_offsets(self) -> np.ndarray:
        """Position in the epoch's sequence where each window starts (plus the total)."""
        return np.concatenate([[0], np.cumsum(self.window_rows)]).astype(np.int64)

    def order(self, w: int) -> np.ndarray:
        """Rows of window ``w`` in the order they are served (a permutation when shuffling)."""
        rows = int(self.chunk_rows[self.windows[w]].sum())
        if not self.shuffle:
            return np.arange(rows)
        if len(self.windows) == 1 and len(self.chunk_rows) == 1:  # RAM data: one permutation
            return sample_order(rows, shuffle=True, seed=self.seed, epoch=self.epoch)
        return epoch_rng(self.seed, self.epoch, w + 1).permutation(rows)

    def chunks_of(self, w: int, rows: np.ndarray) -> np.ndarray:
        """The chunks of window ``w`` that hold window rows ``rows`` (sorted, unique)."""
        starts = np.cumsum(self.chunk_rows[self.windows[w]])
        return np.unique(self.windows[w][np.searchsorted(starts, rows, side="right")])


def plan_epoch(chunk_rows: Sequence[int], *, window: int, shuffle: bool, seed: int, epoch: int) -> EpochPlan:
    """Plan one epoch over chunks of ``chunk_rows[c]`` rows each, ``window`` chunks at a time."""
    if window < 1:
        raise ValueError(f"window must be >= 1 chunk, got {window}")
    num_chunks = len(chunk_rows)
    chunks = epoch_rng(seed, epoch).permutation(num_chunks) if shuffle else np.arange(num_chunks)
    windows = [chunks[i : i + window] for i in range(0, num_chunks, window)]
    return EpochPlan(windows, np.asarray(chunk_rows, dtype=np.int64), shuffle, seed, epoch)


def memory_plan(n: int, *, shuffle: bool, seed: int, epoch: int) -> EpochPlan:
    """The plan of RAM data of ``n`` samples: one window, served in :func:`sample_order`."""
    return EpochPlan([np.zeros(1, dtype=np.int64)], np.array([n], dtype=np.int64), shuffle, seed, epoch)


def window_size(num_chunks: int, chunk_nbytes: int, read_ahead_bytes: int, requested: int | None = None) -> int:
    """Chunks per shuffle window of a split of ``num_chunks`` chunks of ``chunk_nbytes`` bytes:
    ``requested`` (checked against the budget: this window and the next must fit in
    ``read_ahead_bytes``), or by default the whole split when it fits, else as many as half of
    the budget holds."""
    chunk_nbytes, num_chunks = max(1, chunk_nbytes), max(1, num_chunks)
    if requested is None:
        if num_chunks * chunk_nbytes <= read_ahead_bytes:
            return num_chunks
        return max(1, read_ahead_bytes // (2 * chunk_nbytes))
    require_int("window_chunks", requested, 1)
    window = min(requested, num_chunks)
    need = (1 if window == num_chunks else 2) * window * chunk_nbytes
    if need > read_ahead_bytes:
        raise ValueError(
            f"window_chunks={requested} needs {need / 2**20:.0f} MiB (this window and the next), "
            f"above read_ahead_bytes={read_ahead_bytes / 2**20:.0f} MiB"
        )
    return window
