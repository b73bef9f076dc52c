"""Who serves which positions of an epoch's sequence: ranks, resumed epochs, batches.

Sets of positions are kept as *ranges*: lists of half-open ``(start, stop)`` position pairs, in
serving order. An epoch starts with all positions ``[(0, N)]`` remaining. Each of ``world_size``
ranks serves an equal, contiguous share of the remaining sequence: with ``drop_last`` the tail
that does not divide evenly is left out (at most ``world_size - 1`` positions), otherwise shares
are padded by wrapping to the start (at most ``world_size - 1`` repeats). Because every rank
serves the same number of positions, every rank yields the same number of batches.

Resuming is arithmetic on ranges: after each rank served ``done`` positions of its share, the
positions still to serve are the remaining ones minus those, whatever the next world size is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Ranges = list[tuple[int, int]]


def total(ranges: Sequence[tuple[int, int]]) -> int:
    """Number of positions in ``ranges``."""
    return sum(b - a for a, b in ranges)


def take(ranges: Sequence[tuple[int, int]], start: int, stop: int) -> Ranges:
    """Positions ``start..stop-1`` of the sequence ``ranges`` describes; indices past its end
    wrap around to its start (padding)."""
    size = total(ranges)
    out: Ranges = []
    if size == 0 or stop <= start:
        return out
    while start < stop:
        base = start - start % size  # the wrap this piece starts in
        lo, hi = start - base, min(stop - base, size)
        seen = 0
        for a, b in ranges:
            left, right = max(lo, seen), min(hi, seen + b - a)
            if left < right:
                out.append((a + left - seen, a + right - seen))
            seen += b - a
        start = base + hi
    return merge_adjacent(out)


def merge_adjacent(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """``ranges`` with neighbours that continue each other joined."""
    out: Ranges = []
    for a, b in ranges:
        if a == b:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def share_size(remaining: int, world_size: int, drop_last: bool) -> int:
    """Positions each rank serves out of ``remaining``."""
    return remaining // world_size if drop_last else math.ceil(remaining / world_size)


def rank_share(remaining: Sequence[tuple[int, int]], rank: int, world_size: int, drop_last: bool) -> Ranges:
    """The positions rank ``rank`` of ``world_size`` serves, in order."""
    size = share_size(total(remaining), world_size, drop_last)
    return take(remaining, rank * size, (rank + 1) * size)


def served(remaining: Sequence[tuple[int, int]], world_size: int, drop_last: bool, done: int) -> Ranges:
    """Positions served once every rank served the first ``done`` positions of its share,
    sorted and without repeats."""
    size = share_size(total(remaining), world_size, drop_last)
    done = min(done, size)
    pieces = [p for r in range(world_size) for p in take(remaining, r * size, r * size + done)]
    return normalize(pieces)


def normalize(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """The set of positions in ``ranges``, as sorted, disjoint, non-adjacent ranges."""
    out: Ranges = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(ranges: Sequence[tuple[int, int]], removed: Sequence[tuple[int, int]]) -> Ranges:
    """``ranges`` (kept in order) without the positions in ``removed``."""
    removed = normalize(removed)
    out: Ranges = []
    for a, b in ranges:
        cursor = a
        for c, d in removed:
            if d <= cursor or c >= b:
                continue
            if c > cursor:
                out.append((cursor, c))
            cursor = max(cursor, d)
        if cursor < b:
            out.append((cursor, b))
    return merge_adjacent(out)
