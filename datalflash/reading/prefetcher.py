"""A bounded, ordered prefetcher of window visits.

A visit (see :mod:`datalflash.ordering.schedule`) is a window of whole chunks of which some are
read. Visits are read by a reader (threads or worker processes, see
:mod:`datalflash.reading.readers`) into reused buffers, at most ``ahead`` visits beyond the one
in use, so memory stays at ``(ahead + 1)`` window buffers. A failed read re-raises in the
consumer as soon as it waits for that visit; closing cancels what is queued and joins the
reader's threads or processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import numpy as np

from datalflash.errors import LoaderTimeoutError, StoreReadError
from datalflash.format.ragged import RaggedBuffer
from datalflash.reading.readers import Handle, ThreadReader
from datalflash.store.base import ChunkStore


class _Visit(NamedTuple):
    """A submitted visit: its buffer, its reads (``(chunk, future)``), its rows, the chunks the
    buffer holds in order, and whether they are all read (not only the needed ones)."""

    buffer: Handle
    reads: list[tuple[int, Future]]
    rows: int
    chunks: list[int]
    whole: bool


class WindowPrefetcher:
    """Reads visits of ``split`` in order, ``ahead`` visits ahead.

    ``windows`` gives, visit by visit, the chunk ids of the visit's window (its rows are those
    chunks concatenated) and ``needed`` the chunks of it to read (default: all); both may be
    iterators, taken only as far as the reads ahead need (a split of millions of windows costs
    nothing up front). ``rows`` is the most rows of a window (default: counted from ``windows``,
    which must then be a sequence). ``lengths`` (``{ragged field: elements of each row of the
    split}``) lets each ragged field's values be read straight into one window buffer.
    ``get(v)`` blocks until visit ``v``'s chunks are in memory
    and returns ``{field: array}`` of the window's rows (rows of chunks not read are undefined);
    ``release(v)`` hands its buffer back for the visits ahead. Visits are taken in order.
    ``ahead + 1`` buffers exist, one more only while a single batch spans more visits than that.
    """

    def __init__(
        self,
        store: ChunkStore,
        split: str,
        windows: Iterable[Iterable[int]],
        needed: Iterable[Iterable[int]] | None = None,
        *,
        rows: int | None = None,
        reader: ThreadReader | None = None,
        ahead: int = 1,
        timeout: float = 0,
        lengths: Mapping[str, np.ndarray] | None = None,
    ):
        self.store, self.split = store, split
        self._lengths = dict(lengths or {})
        if rows is None:
            windows = [list(w) for w in windows]
            rows = max((self._window_rows(w) for w in windows), default=0)
        self._rows = rows
        self._visits = iter(zip(windows, needed) if needed is not None else ((w, None) for w in windows))
        self.timeout = timeout
        self._ahead = max(1, ahead)
        self._own_reader = reader is None
        self._reader = reader if reader is not None else ThreadReader(store)
        self._pending: dict[int, _Visit] = {}
        self._next = 0  # next visit to submit
        self._gotten = -1  # the last visit asked for
        self._exhausted = False
        self._in_use = 0  # buffers of visits submitted and not released
        self._closed = False

    def _window_rows(self, window: Iterable[int]) -> int:
        return sum(b - a for a, b in (self.store.chunk_bounds(self.split, int(c)) for c in window))

    def _free(self, force: bool) -> bool:
        """Whether the next visit may take a buffer: not while ``ahead + 1`` are in use, unless ``force``."""
        return self._in_use <= self._ahead or force

    def _submit(self, force: int | None = None) -> None:
        """Submit the next visits while a buffer is free; visit ``force`` gets one regardless."""
        while not self._exhausted and self._free(force=self._next == force):
            visit = next(self._visits, None)
            if visit is None:
                self._exhausted = True
                return
            self._in_use += 1
            window = [int(c) for c in visit[0]]
            needed = set(window) if visit[1] is None else {int(c) for c in visit[1]}
            kept = self._reader.reuse(self.split, window)
            if kept is not None:  # (read whole before: its rows are where they were)
                self._pending[self._next] = _Visit(kept[0], [], self._window_rows(window), list(kept[1]), True)
                self._next += 1
                continue
            buffer = self._reader.allocate(self._rows)
            if self._lengths:
                self._place(buffer, window)
            self.store.will_need(self.split, [c for c in window if c in needed])
            tasks, offset = [], 0
            for chunk in window:
                start, stop = self.store.chunk_bounds(self.split, chunk)
                if chunk in needed:
                    tasks.append((chunk, self._reader.read(self.split, chunk, buffer, offset)))
                offset += stop - start
            self._pending[self._next] = _Visit(buffer, tasks, offset, window, needed == set(window))
            self._next += 1

    def _place(self, buffer: Handle, window: list[int]) -> None:
        """Give each ragged field's buffer the placement of this window's rows (their values are
        then read straight to their place in one window buffer)."""
        bounds = np.array([self.store.chunk_bounds(self.split, c) for c in window], dtype=np.int64).reshape(-1, 2)
        counts = bounds[:, 1] - bounds[:, 0]
        rows = np.repeat(bounds[:, 0] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        for name, rows_buffer in self._reader.arrays(buffer).items():
            if name in self._lengths and isinstance(rows_buffer, RaggedBuffer):
                rows_buffer.place(self._lengths[name][rows])

    def get(self, v: int) -> dict[str, Any]:
        """Visit ``v``'s window rows, waiting for its reads; re-raises a failed read."""
        if self._closed:
            raise RuntimeError("prefetcher is closed")
        self._submit(force=v)
        buffer, tasks, rows, _, _ = self._pending[v]
        self._gotten = max(self._gotten, v)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        for chunk, future in tasks:
            try:
                future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                where = f"{self.store.path}: reading split {self.split!r} chunk {chunk}"
                raise LoaderTimeoutError(self.timeout, where) from None
            except BrokenProcessPool as e:
                raise StoreReadError(
                    f"{self.store.path}: split {self.split!r} chunk {chunk}: the worker process reading it died ({e})"
                ) from e
        return {
            name: b.placed(rows) if isinstance(b, RaggedBuffer) and b.placement is not None else b[:rows]
            for name, b in self._reader.arrays(buffer).items()
        }

    def start(self) -> None:
        """Submit the reads of the visits ahead now, rather than at the first :meth:`get`."""
        self._submit()

    @property
    def on_last_visit(self) -> bool:
        """Whether the last visit is the one in use: every visit submitted, the last one's reads
        waited for, and no other buffer in use."""
        return self._exhausted and self._gotten == self._next - 1 and self._in_use <= 1

    def layout(self, v: int) -> list[int]:
        """The chunks whose rows visit ``v``'s buffer holds, in order: its window's, or, for a
        buffer kept from an earlier read of the same chunks, the order they were read in."""
        return self._pending[v].chunks

    def release(self, v: int) -> None:
        """Visit ``v`` is no longer needed: its buffer reads the visits ahead (kept with its
        contents when its whole window was read, for a later visit of the same chunks)."""
        visit = self._pending.pop(v, None)
        if visit is None:
            return
        self._in_use -= 1
        self._give_back(visit)
        self._submit()

    def _give_back(self, visit: _Visit) -> None:
        """Hand a visit's buffer back to the reader, with what it holds when its whole window
        was read without error."""
        whole = visit.whole and all(f.done() and not f.cancelled() and f.exception() is None for _, f in visit.reads)
        self._reader.recycle(visit.buffer, (self.split, tuple(visit.chunks)) if whole else None)

    def close(self) -> None:
        """Cancel queued reads; join the reader's threads or processes unless it was passed in."""
        if self._closed:
            return
        self._closed = True
        for visit in self._pending.values():
            for _, future in visit.reads:
                future.cancel()
        if self._own_reader:
            self._reader.close()
        for visit in self._pending.values():  # a read still running may write it: drop it
            if all(future.done() for _, future in visit.reads):
                self._give_back(visit)
        self._pending.clear()

    def __del__(self, _quietly: Callable[..., Any] = contextlib.suppress) -> None:
        with _quietly(Exception):  # (bound at definition: at interpreter exit module globals may be gone)
            self.close()
