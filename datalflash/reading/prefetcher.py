"""A bounded, ordered prefetcher of chunk windows.

Windows (groups of whole chunks, see :mod:`datalflash.ordering`) are read by a small pool of
threads into reused buffers, at most ``ahead`` windows beyond the one in use, so memory stays at
``(ahead + 1)`` window buffers. Codecs and ``preadv`` release the GIL, so threads read in
parallel. A failed read re-raises in the consumer as soon as it waits for that window; closing
cancels what is queued and joins the threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from datalflash.store.base import ChunkStore


class WindowPrefetcher:
    """Reads ``windows`` (lists of chunk ids of ``split``) in order, ``ahead`` windows ahead.

    ``get(w)`` blocks until window ``w`` is in memory and returns ``{field: array}`` views of its
    rows (chunks concatenated in window order); ``release(w)`` hands its buffer back for the
    windows ahead. Windows are taken in order. ``ahead + 1`` buffers exist, one more only while
    a single batch spans more windows than that.
    """

    def __init__(
        self,
        store: ChunkStore,
        split: str,
        windows: Sequence[Sequence[int]],
        *,
        ahead: int = 1,
        threads: int = 2,
        timeout: float = 0,
    ):
        self.store, self.split = store, split
        self.windows = [list(map(int, w)) for w in windows]
        self.timeout = timeout
        self._ahead = max(1, ahead)
        rows = [[store.chunk_bounds(split, c) for c in w] for w in self.windows]
        self._rows = [sum(b - a for a, b in r) for r in rows]
        self._buffers: list[dict[str, np.ndarray]] = []
        self._pending: dict[int, tuple[dict[str, np.ndarray], list[tuple[int, Future]]]] = {}
        self._next = 0  # next window to submit
        self._allocated = 0
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="datalflash-read")
        self._closed = False

    def _buffer(self, force: bool) -> dict[str, np.ndarray] | None:
        if self._buffers:
            return self._buffers.pop()
        if self._allocated > self._ahead and not force:
            return None
        self._allocated += 1
        return self.store.allocate(max(self._rows, default=0))

    def _submit(self, force: int | None = None) -> None:
        """Submit the next windows while a buffer is free; window ``force`` gets one regardless."""
        while self._next < len(self.windows):
            w = self._next
            buffer = self._buffer(force=w == force)
            if buffer is None:
                return
            self.store.will_need(self.split, self.windows[w])
            tasks, offset = [], 0
            for chunk in self.windows[w]:
                start, stop = self.store.chunk_bounds(self.split, chunk)
                out = {name: b[offset : offset + stop - start] for name, b in buffer.items()}
                tasks.append((chunk, self._pool.submit(self.store.read_chunks, self.split, [chunk], out)))
                offset += stop - start
            self._pending[w] = (buffer, tasks)
            self._next += 1

    def get(self, w: int) -> dict[str, np.ndarray]:
        """Window ``w``'s rows, waiting for its reads; re-raises a failed read."""
        if self._closed:
            raise RuntimeError("prefetcher is closed")
        self._submit(force=w)
        buffer, tasks = self._pending[w]
        for chunk, future in tasks:
            try:
                future.result(timeout=self.timeout or None)
            except FutureTimeout:
                raise TimeoutError(
                    f"{self.store.path}: reading split {self.split!r} chunk {chunk} took longer than "
                    f"timeout={self.timeout}s"
                ) from None
        return {name: b[: self._rows[w]] for name, b in buffer.items()}

    def release(self, w: int) -> None:
        """Window ``w`` is no longer needed: its buffer reads the windows ahead."""
        entry = self._pending.pop(w, None)
        if entry is None:
            return
        if self._allocated > self._ahead + 1:  # an extra buffer forced by a batch spanning windows
            self._allocated -= 1
        else:
            self._buffers.append(entry[0])
        self._submit()

    def close(self) -> None:
        """Cancel queued reads and join the reading threads."""
        if self._closed:
            return
        self._closed = True
        for _, tasks in self._pending.values():
            for _, future in tasks:
                future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._buffers.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
