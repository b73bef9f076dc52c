"""Where images are decoded: threads of this process, or worker processes.

Both decoders take a batch's encoded images and crops and return a function that waits for the
batch and gives it as an NCHW uint8 tensor (pinned when asked). Threads write straight into that
tensor; they share one process (its GIL, its allocator) and stopped scaling on 16 cores
(``benchmarks/decode_scaling.py``: 0.25-0.37 of 16x one thread).
Processes read the encoded images from a shared ring of buffers (one slot for each batch in
flight, reused) and decode into a new shared-memory tensor per batch, which is handed out as it
is (as torch's DataLoader workers hand out theirs): its pages are first touched by the workers,
in parallel, and the batch crosses no pipe and is not copied again (unless pinned).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from datalflash.batching.images import decode_full, decode_part, decode_rows
from datalflash.errors import DataLFlashError, LoaderTimeoutError
from datalflash.reading import readers
from datalflash.reading.pool import DaemonPool

Wait = Callable[[], Any]
"""Waits for a batch's images and returns them."""
PROCESS_CORES = 4  # more usable cores than this: decode in processes by default


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def wait_all(futures: Sequence[Future], timeout: float = 0, where: str = "") -> None:
    """Wait for every future, then raise the first error among them (no worker is left writing
    into a buffer the caller is about to reuse or drop). Longer than ``timeout`` seconds in all
    (0: no limit) raises :class:`~datalflash.errors.LoaderTimeoutError`, a worker process that
    died a :class:`~datalflash.errors.DataLFlashError`, each naming ``where``."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    errors = []
    for future in futures:
        try:
            errors.append(future.exception(None if deadline is None else max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            raise LoaderTimeoutError(timeout, f"{where}: decoding a batch's images") from None
    for error in errors:
        if isinstance(error, BrokenProcessPool):
            raise DataLFlashError(f"{where}: a decoding worker process died ({error})") from error
        if error is not None:
            raise error


def _parts(n: int, workers: int) -> list[range]:
    bounds = np.linspace(0, n, min(workers, max(1, n)) + 1).astype(int).tolist()
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class ThreadDecoder:
    """Decodes in ``threads`` threads of this process; a batch taking longer than ``timeout``
    seconds (0: no limit) raises an error naming ``where``."""

    def __init__(self, threads: int, timeout: float = 0, where: str = ""):
        self.threads = max(1, threads)
        self.timeout, self.where = timeout, where
        self._pool = DaemonPool(self.threads, "datalflash-decode")

    def start(
        self,
        field: str,
        rows: Sequence[torch.Tensor],
        boxes: np.ndarray,
        size: tuple[int, int],
        names: Sequence[str],
        pin_memory: bool,
    ) -> Wait:
        """Start decoding ``rows`` (encoded images of ``field``), each ``boxes`` region resized
        to ``size``; the returned function waits and gives the ``(n, 3, *size)`` uint8 batch."""
        pixels = torch.empty((len(rows), 3, *size), dtype=torch.uint8, pin_memory=pin_memory)
        out = pixels.numpy()
        futures = [
            self._pool.submit(
                decode_rows,
                rows[p.start : p.stop],
                boxes[p.start : p.stop],
                size,
                out[p.start : p.stop],
                names[p.start : p.stop],
            )
            for p in _parts(len(rows), self.threads)
        ]

        def wait() -> torch.Tensor:
            wait_all(futures, self.timeout, self.where)
            return pixels

        return wait

    def start_full(self, rows: Sequence[torch.Tensor], names: Sequence[str]) -> Wait:
        """Start decoding ``rows`` at their own sizes; the function waits and gives the list."""
        futures = [
            self._pool.submit(decode_full, rows[p.start : p.stop], names[p.start : p.stop])
            for p in _parts(len(rows), self.threads)
        ]

        def wait() -> list[torch.Tensor]:
            wait_all(futures, self.timeout, self.where)
            return [image for future in futures for image in future.result()]

        return wait

    def close(self) -> None:
        """Stop the threads (a decode in progress finishes first)."""
        self._pool.shutdown(readers.CLOSE_TIMEOUT)


class ProcessDecoder(ThreadDecoder):
    """Decodes in ``processes`` worker processes (``context``: a multiprocessing context or start
    method name, None for the default) into shared memory, ``slots`` batches of a field in flight
    at most; images decoded at their own sizes still use threads."""

    def __init__(
        self, processes: int, slots: int, context: Any = None, threads: int = 1, timeout: float = 0, where: str = ""
    ):
        super().__init__(threads, timeout, where)
        if context is None or isinstance(context, str):
            context = multiprocessing.get_context(context)
        self.processes = processes
        self._workers = ProcessPoolExecutor(
            processes, mp_context=context, initializer=_init_decoding_worker, initargs=(os.getpid(),)
        )
        self._slots: dict[str, list[torch.Tensor | None]] = {}
        self._turn: dict[str, int] = {}
        self._lock = threading.Lock()
        self._count = slots

    def _slot(self, field: str, nbytes: int) -> torch.Tensor:
        """The next shared buffer of ``field``'s ring for encoded images, grown to hold ``nbytes``
        (a slot comes round again only after its batch was decoded)."""
        with self._lock:
            ring = self._slots.setdefault(field, [None] * self._count)
            k = self._turn.get(field, 0)
            self._turn[field] = (k + 1) % self._count
            old = ring[k]
            if old is None or old.numel() < nbytes:
                ring[k] = old = _shared(max(nbytes, 2 * (0 if old is None else old.numel())))
            return old

    def start(
        self,
        field: str,
        rows: Sequence[torch.Tensor],
        boxes: np.ndarray,
        size: tuple[int, int],
        names: Sequence[str],
        pin_memory: bool,
    ) -> Wait:
        n = len(rows)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=offsets[1:])
        encoded = self._slot(field, int(offsets[-1]))
        if n:
            np.concatenate([row.numpy() for row in rows], out=encoded.numpy()[: offsets[-1]])
        decoded = _shared(n * 3 * size[0] * size[1])
        futures = [
            self._workers.submit(decode_part, encoded, decoded, offsets, boxes, size, names, part)
            for part in _parts(n, self.processes)
        ]

        def wait() -> torch.Tensor:
            wait_all(futures, self.timeout, self.where)
            pixels = decoded[: n * 3 * size[0] * size[1]].view(n, 3, *size)
            return pixels.pin_memory() if pin_memory else pixels

        return wait

    def close(self) -> None:
        """Stop the worker processes and the threads."""
        self._workers.shutdown(wait=True, cancel_futures=True)
        super().close()


def _init_decoding_worker(parent: int) -> None:
    """In a decoding worker process: one torch thread (the processes are the parallelism), Ctrl-C
    left to the parent, and an exit as soon as the parent is gone (killed by any signal too)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=readers.watch_parent, args=(parent,), name="datalflash-parent-watch", daemon=True).start()


def _shared(nbytes: int) -> torch.Tensor:
    """A new uint8 tensor of ``nbytes`` (at least 1) in shared memory, its pages untouched."""
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def make_decoder(
    processes: int | None, threads: int | None, slots: int, context: Any = None, timeout: float = 0, where: str = ""
) -> ThreadDecoder:
    """Worker processes (``processes``; None: one per core when there are more than
    :data:`PROCESS_CORES`), else ``threads`` threads (None: one per core); ``timeout`` and
    ``where`` as for :class:`ThreadDecoder`."""
    cores = usable_cores()
    if processes is None:
        processes = cores if cores > PROCESS_CORES else 0
    if processes > 0:
        return ProcessDecoder(processes, slots, context, threads or 1, timeout, where)
    return ThreadDecoder(threads or cores, timeout, where)
