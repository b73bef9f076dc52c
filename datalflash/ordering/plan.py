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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from datalflash.arguments import require_int


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The random generator of ``epoch`` (and sub-stream ``stream``) for a loader seeded with ``seed``."""
    return np.random.default_rng([seed % 2**64, epoch % 2**64, *stream])


def sample_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Sample indices ``0..n-1`` in epoch order (a permutation when ``shuffle``)."""
    return epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)


def iter_batch_bounds(total: int, batch_size: int, drop_last: bool) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` positions of each batch over ``total`` samples, as torch cuts them."""
    stop = total - total % batch_size if drop_last else total
    return ((i, min(i + batch_size, total)) for i in range(0, stop, batch_size))


def batch_bounds(total: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """:func:`iter_batch_bounds` as a list."""
    return list(iter_batch_bounds(total, batch_size, drop_last))


@dataclass(frozen=True)
class EpochPlan:
    """The read and sample order of one epoch of a chunked split.

    ``chunks`` lists the chunk ids in read order; consecutive groups of ``window`` of them are the
    windows (:meth:`window_chunks`); ``chunk_rows[c]`` is the rows of chunk ``c``; :meth:`order`
    gives the order in which a window's rows are served. Everything is an array: the plan of a
    split of millions of chunks costs a few bytes per chunk, and nothing per window or batch.
    """

    chunks: np.ndarray
    window: int
    chunk_rows: np.ndarray
    shuffle: bool
    seed: int
    epoch: int
    window_rows: np.ndarray = field(init=False, repr=False)
    """Rows of each window."""
    window_offsets: np.ndarray = field(init=False, repr=False)
    """Position in the epoch's sequence where each window starts (plus the total)."""

    def __post_init__(self) -> None:
        rows = self.chunk_rows[self.chunks]
        starts = np.arange(0, len(self.chunks), self.window)
        window_rows = np.add.reduceat(rows, starts).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        object.__setattr__(self, "window_rows", window_rows)
        object.__setattr__(self, "window_offsets", np.concatenate([[0], np.cumsum(window_rows)]).astype(np.int64))

    @property
    def num_windows(self) -> int:
        """Windows in the epoch."""
        return len(self.window_rows)

    def window_chunks(self, w: int) -> np.ndarray:
        """Chunk ids of window ``w``, in read order."""
        return self.chunks[w * self.window : (w + 1) * self.window]

    @property
    def windows(self) -> list[np.ndarray]:
        """Every window's chunk ids (a list per window: for small plans and tests)."""
        return [self.window_chunks(w) for w in range(self.num_windows)]

    @property
    def max_window_rows(self) -> int:
        """Rows of the largest window (what a window buffer must hold)."""
        return int(self.window_rows.max()) if len(self.window_rows) else 0

    def order(self, w: int) -> np.ndarray:
        """Rows of window ``w`` in the order they are served (a permutation when shuffling)."""
        rows = int(self.window_rows[w])
        if not self.shuffle:
            return np.arange(rows)
        if self.num_windows == 1 and len(self.chunk_rows) == 1:  # RAM data: one permutation
            return sample_order(rows, shuffle=True, seed=self.seed, epoch=self.epoch)
        return epoch_rng(self.seed, self.epoch, w + 1).permutation(rows)

    def chunks_of(self, w: int, rows: np.ndarray) -> np.ndarray:
        """The chunks of window ``w`` that hold window rows ``rows`` (sorted, unique)."""
        ids = self.window_chunks(w)
        starts = np.cumsum(self.chunk_rows[ids])
        return np.unique(ids[np.searchsorted(starts, rows, side="right")])


def plan_epoch(
    chunk_rows: Sequence[int] | np.ndarray, *, window: int, shuffle: bool, seed: int, epoch: int
) -> EpochPlan:
    """Plan one epoch over chunks of ``chunk_rows[c]`` rows each, ``window`` chunks at a time."""
    if window < 1:
        raise ValueError(f"window must be >= 1 chunk, got {window}")
    rows = np.asarray(chunk_rows, dtype=np.int64)
    chunks = epoch_rng(seed, epoch).permutation(len(rows)) if shuffle else np.arange(len(rows))
    return EpochPlan(chunks, window, rows, shuffle, seed, epoch)


def split_chunk_rows(num_samples: int, chunk_size: int) -> np.ndarray:
    """Rows of each chunk of a split of ``num_samples`` samples in chunks of ``chunk_size``."""
    num_chunks = -(-num_samples // chunk_size)
    rows = np.full(num_chunks, chunk_size, dtype=np.int64)
    if num_chunks:
        rows[-1] = num_samples - (num_chunks - 1) * chunk_size
    return rows


def memory_plan(n: int, *, shuffle: bool, seed: int, epoch: int) -> EpochPlan:
    """The plan of RAM data of ``n`` samples: one window, served in :func:`sample_order`."""
    return EpochPlan(np.zeros(1, dtype=np.int64), 1, np.array([n], dtype=np.int64), shuffle, seed, epoch)


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
