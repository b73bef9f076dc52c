"""From a plan and the positions one rank serves to what it reads and how it cuts batches.

A rank's positions run through the plan's windows; each maximal run inside one window is a
*visit* of that window, and only the chunks holding rows of the visit are read (a window is read
whole unless a rank boundary, a resumed epoch or padding cuts it). Batches are cut over the
positions as torch cuts them; each batch is a list of ``(visit, start, stop)`` pieces, positions
within that visit's window order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from datalflash.ordering.plan import EpochPlan, batch_bounds
from datalflash.ordering.ranges import total


@dataclass
class Visit:
    """One stay of the served sequence in window ``window``: the window positions it serves and
    the chunks that must be read for them."""

    window: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    chunks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Schedule:
    """What one rank reads (``visits``, in order) and serves (``batches``)."""

    visits: list[Visit]
    batches: list[list[tuple[int, int, int]]]


def _window_pieces(offsets: np.ndarray, ranges: Sequence[tuple[int, int]]):
    """``(window, start, stop)`` pieces, window positions, of the sequence positions in ``ranges``."""
    for a, b in ranges:
        w = int(np.searchsorted(offsets, a, side="right")) - 1
        while a < b:
            end = min(b, int(offsets[w + 1]))
            yield w, a - int(offsets[w]), end - int(offsets[w])
            a, w = end, w + 1


def schedule(plan: EpochPlan, ranges: Sequence[tuple[int, int]], batch_size: int, drop_last: bool) -> Schedule:
    """The visits and batches of a rank serving ``ranges`` of ``plan``'s sequence."""
    offsets = plan.window_offsets
    visits: list[Visit] = []
    for w, lo, hi in _window_pieces(offsets, ranges):
        if visits and visits[-1].window == w:
            spans = visits[-1].spans
            if spans[-1][1] == lo:
                spans[-1] = (spans[-1][0], hi)
            else:
                spans.append((lo, hi))
        else:
            visits.append(Visit(w, [(lo, hi)]))
    window_rows = plan.window_rows
    for visit in visits:
        if visit.spans == [(0, int(window_rows[visit.window]))]:
            visit.chunks = np.sort(plan.windows[visit.window])
        else:
            order = plan.order(visit.window)
            visit.chunks = plan.chunks_of(visit.window, np.concatenate([order[a:b] for a, b in visit.spans]))
    return Schedule(visits, _cut(visits, total(ranges), batch_size, drop_last))


def _cut(visits: list[Visit], count: int, batch_size: int, drop_last: bool) -> list[list[tuple[int, int, int]]]:
    pieces = [(v, a, b) for v, visit in enumerate(visits) for a, b in visit.spans]
    batches, p, used = [], 0, 0  # piece p, of which `used` positions are already in batches
    for start, stop in batch_bounds(count, batch_size, drop_last):
        need, batch = stop - start, []
        while need:
            v, a, b = pieces[p]
            n = min(need, b - a - used)
            batch.append((v, a + used, a + used + n))
            need, used = need - n, used + n
            if used == b - a:
                p, used = p + 1, 0
        batches.append(batch)
    return batches
