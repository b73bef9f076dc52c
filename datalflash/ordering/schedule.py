"""From a plan and the positions one rank serves to what it reads and how it cuts batches.

A rank's positions run through the plan's windows; each maximal run inside one window is a
*visit* of that window, and only the chunks holding rows of the visit are read (a window is read
whole unless a rank boundary, a resumed epoch or padding cuts it). Batches are cut over the
positions as torch cuts them; each batch is a list of ``(visit, start, stop)`` pieces, positions
within that visit's window order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from datalflash.ordering.plan import EpochPlan, iter_batch_bounds
from datalflash.ordering.ranges import total


@dataclass
class Visit:
    """One stay of the served sequence in window ``window``: the window positions it serves and
    the chunks that must be read for them."""

    window: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    chunks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class Schedule:
    """What one rank reads (:meth:`iter_visits`, in order) and serves (:meth:`iter_batches`), for
    the positions ``ranges`` of ``plan``'s sequence, cut in batches of ``batch_size``.

    Both are generated as they are consumed, so a schedule costs nothing per window or batch up
    front, however large the split; :attr:`visits` and :attr:`batches` list them (small schedules).
    A batch is a list of ``(visit, start, stop)`` pieces: visit numbers count :meth:`iter_visits`.
    """

    def __init__(
        self,
        plan: EpochPlan,
        ranges: Sequence[tuple[int, int]],
        batch_size: int,
        drop_last: bool,
        cuts: Sequence[tuple[int, int]] | None = None,
    ):
        self.plan, self.ranges = plan, list(ranges)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.count = total(self.ranges)
        self.cuts = None if cuts is None else list(cuts)
        """Batch bounds over the positions, where they are not cut ``batch_size`` at a time
        (token budgets, see :mod:`datalflash.ordering.tokens`); they start at position 0 and
        follow each other."""

    def __bool__(self) -> bool:
        """Whether there is at least one batch."""
        if self.cuts is not None:
            return bool(self.cuts)
        return self.count >= (self.batch_size if self.drop_last else 1)

    def iter_spans(self) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """``(window, spans)`` of each visit: maximal runs of the sequence inside one window."""
        current: tuple[int, list[tuple[int, int]]] | None = None
        for w, lo, hi in window_pieces(self.plan.window_offsets, self.ranges):
            if current is not None and current[0] == w:
                spans = current[1]
                if spans[-1][1] == lo:
                    spans[-1] = (spans[-1][0], hi)
                else:
                    spans.append((lo, hi))
            else:
                if current is not None:
                    yield current
                current = (w, [(lo, hi)])
        if current is not None:
            yield current

    def iter_visits(self) -> Iterator[Visit]:
        """The visits, each with the chunks that must be read for it (only those holding its rows)."""
        plan = self.plan
        for w, spans in self.iter_spans():
            if spans == [(0, int(plan.window_rows[w]))]:
                chunks = np.sort(plan.window_chunks(w))
            else:
                order = plan.order(w)
                chunks = plan.chunks_of(w, np.concatenate([order[a:b] for a, b in spans]))
            yield Visit(w, spans, chunks)

    def iter_batches(self) -> Iterator[list[tuple[int, int, int]]]:
        """The batches, cut over the positions as torch cuts them."""
        pieces = ((v, a, b) for v, (_, spans) in enumerate(self.iter_spans()) for a, b in spans)
        piece, used = None, 0  # the piece being cut, of which `used` positions are already in batches
        bounds = self.cuts if self.cuts is not None else iter_batch_bounds(self.count, self.batch_size, self.drop_last)
        for start, stop in bounds:
            need, batch = stop - start, []
            while need:
                if piece is None:
                    piece, used = next(pieces), 0
                v, a, b = piece
                n = min(need, b - a - used)
                batch.append((v, a + used, a + used + n))
                need, used = need - n, used + n
                if used == b - a:
                    piece = None
            yield batch

    @property
    def visits(self) -> list[Visit]:
        """:meth:`iter_visits` as a list."""
        return list(self.iter_visits())

    @property
    def batches(self) -> list[list[tuple[int, int, int]]]:
        """:meth:`iter_batches` as a list."""
        return list(self.iter_batches())


def window_pieces(offsets: np.ndarray, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """``(window, start, stop)`` pieces, window positions, of the sequence positions in ``ranges``."""
    for a, b in ranges:
        w = int(np.searchsorted(offsets, a, side="right")) - 1
        while a < b:
            end = min(b, int(offsets[w + 1]))
            yield w, a - int(offsets[w]), end - int(offsets[w])
            a, w = end, w + 1


def schedule(
    plan: EpochPlan,
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    drop_last: bool,
    cuts: Sequence[tuple[int, int]] | None = None,
) -> Schedule:
    """The (lazy) :class:`Schedule` of a rank serving ``ranges`` of ``plan``'s sequence (cut
    ``batch_size`` at a time, or at ``cuts``)."""
    return Schedule(plan, ranges, batch_size, drop_last, cuts)
