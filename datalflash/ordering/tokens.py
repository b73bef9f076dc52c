"""Length-aware batching: batches bounded by a token (element) budget instead of a sample count.

Each sample's *length* is its number of elements in one ragged field (read once from the store's
shape table). A rank's positions are cut greedily into batches whose cost stays within
``max_tokens``: ``len(batch) * longest`` when the field is padded, the sum of lengths otherwise
(and at most ``max_samples`` samples); a sample above the budget is a batch of its own. Every rank
cuts every rank's share, so all ranks agree on the batch count: short ranks split their largest
batches (``drop_last=False``) or long ones drop their last (``drop_last=True``), and DDP never
waits on a rank with no batch left.

With ``bucket`` samples, each window's order is sorted by length within consecutive groups of
``bucket`` positions (:class:`BucketedPlan`), so a batch holds samples of similar length and pads
little; the groups themselves stay in shuffled order. Everything is a function of
``(seed, epoch)`` and the lengths, so a resumed epoch is cut exactly as the first run was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from datalflash.arguments import require_int
from datalflash.ordering.plan import EpochPlan
from datalflash.ordering.ranges import rank_share
from datalflash.ordering.schedule import window_pieces


@dataclass(frozen=True)
class TokenBudget:
    """Batches of at most ``max_tokens`` elements (``padded``: counted as ``len(batch) *
    longest``) and at most ``max_samples`` samples (None: no cap); ``bucket``: positions sorted
    by length together (None: no bucketing)."""

    max_tokens: int
    padded: bool = True
    max_samples: int | None = None
    bucket: int | None = None

    def __post_init__(self) -> None:
        require_int("max_tokens", self.max_tokens, 1)
        if self.max_samples is not None:
            require_int("batch_size", self.max_samples, 1)
        if self.bucket is not None:
            require_int("bucket_size", self.bucket, 1)


@dataclass(frozen=True)
class BucketedPlan(EpochPlan):
    """An :class:`EpochPlan` whose window orders are sorted by length within groups of
    ``bucket`` positions; ``lengths[row]`` is the length of each row of the split and
    ``chunk_size`` its chunks' size."""

    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), kw_only=True)
    chunk_size: int = field(default=1, kw_only=True)
    bucket: int = field(default=1, kw_only=True)

    def window_lengths(self, w: int) -> np.ndarray:
        """Lengths of window ``w``'s rows (its chunks' rows, concatenated in window order)."""
        return self.lengths[window_row_ids(self, w, self.chunk_size)]

    def order(self, w: int) -> np.ndarray:
        """The window's shuffled order, sorted by length within each group of ``bucket`` positions."""
        order = super().order(w)
        if self.bucket <= 1:
            return order
        lengths = self.window_lengths(w)[order]
        groups = np.arange(len(order)) // self.bucket
        return order[np.lexsort((lengths, groups))]


def bucketed(plan: EpochPlan, lengths: np.ndarray, chunk_size: int, bucket: int | None) -> EpochPlan:
    """``plan`` with its window orders bucketed by length (itself when ``bucket`` is None)."""
    if bucket is None:
        return plan
    return BucketedPlan(
        plan.chunks,
        plan.window,
        plan.chunk_rows,
        plan.shuffle,
        plan.seed,
        plan.epoch,
        lengths=lengths,
        chunk_size=chunk_size,
        bucket=bucket,
    )


def window_row_ids(plan: EpochPlan, w: int, chunk_size: int) -> np.ndarray:
    """Split row ids of window ``w``'s rows, in window order."""
    ids = plan.window_chunks(w)
    rows = plan.chunk_rows[ids]
    first = np.repeat(ids * chunk_size - (np.cumsum(rows) - rows), rows)
    return first + np.arange(int(rows.sum()))


def sequence_lengths(
    plan: EpochPlan, ranges: Sequence[tuple[int, int]], lengths: np.ndarray, chunk_size: int
) -> np.ndarray:
    """Lengths of the samples at the positions ``ranges`` of ``plan``'s sequence, in order."""
    parts, cache = [], {}
    for w, lo, hi in window_pieces(plan.window_offsets, ranges):
        if w not in cache:
            cache = {w: lengths[window_row_ids(plan, w, chunk_size)][plan.order(w)]}
        parts.append(cache[w][lo:hi])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def cut(lengths: np.ndarray, budget: TokenBudget) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch cut greedily from samples of ``lengths`` in order."""
    bounds: list[tuple[int, int]] = []
    n, i, guess = len(lengths), 0, 8
    cap = budget.max_samples or n
    costs = np.maximum(np.asarray(lengths, dtype=np.int64), 1)  # (an empty sample still takes a row)
    while i < n:
        span = min(n - i, cap, guess)
        while True:
            seg = costs[i : i + span]
            cost = np.maximum.accumulate(seg) * np.arange(1, len(seg) + 1) if budget.padded else np.cumsum(seg)
            if cost[-1] <= budget.max_tokens and span < min(n - i, cap):
                span = min(n - i, cap, span * 2)  # everything fit: look further
                continue
            break
        k = max(1, int(np.searchsorted(cost, budget.max_tokens, side="right")))
        bounds.append((i, i + k))
        i += k
        guess = 2 * k
    return bounds


def equalized(bounds: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """``bounds`` made ``count`` batches: the last ones dropped, or the largest split in two
    (first of the largest, repeatedly) until there are as many."""
    bounds = list(bounds[:count])
    while len(bounds) < count:
        sizes = [b - a for a, b in bounds]
        k = int(np.argmax(sizes))
        a, b = bounds[k]
        if b - a < 2:
            break  # (cannot happen: every rank's share has as many positions)
        bounds[k : k + 1] = [(a, a + (b - a) // 2), (a + (b - a) // 2, b)]
    return bounds


def token_cuts(
    plan: EpochPlan,
    remaining: Sequence[tuple[int, int]],
    rank: int,
    world_size: int,
    drop_last: bool,
    lengths: np.ndarray,
    chunk_size: int,
    budget: TokenBudget,
) -> list[tuple[int, int]]:
    """Batch bounds (over this rank's share of ``remaining``) of a token-budget epoch, the same
    number on every rank."""
    per_rank = [
        cut(sequence_lengths(plan, rank_share(remaining, r, world_size, drop_last), lengths, chunk_size), budget)
        for r in range(world_size)
    ]
    counts = [len(c) for c in per_rank]
    return equalized(per_rank[rank], min(counts) if drop_last else max(counts))
