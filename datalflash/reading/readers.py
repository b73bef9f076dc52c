"""Where chunk reads run: a pool of threads, or of worker processes writing into shared memory.

Both readers hand out buffers (``{field: array}`` in storage dtypes) and read a chunk into rows
of a buffer in the background, returning a ``Future``. Threads suit the codecs and ``preadv``,
which release the GIL; processes also run what holds it (h5py's global lock, zarr-python's
fallback path, a third-party backend in Python). A process reader's buffers live in shared
memory, so a chunk crosses no pipe: the worker decodes it straight into the buffer the batch is
gathered from.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from datalflash.store.base import ChunkStore

Buffer = dict[str, np.ndarray]


def _views(store: ChunkStore, raw: dict[str, torch.Tensor], offset: int, rows: int) -> Buffer:
    """Storage-typed views of rows ``offset..offset+rows`` of shared byte tensors."""
    out = {}
    for name, spec in store.fields.items():
        flat = raw[name].numpy()[: (offset + rows) * spec.sample_nbytes]
        out[name] = flat.view(spec.storage_dtype).reshape(offset + rows, *spec.shape)[offset:]
    return out


class ThreadReader:
    """Reads chunks in ``threads`` threads of this process."""

    def __init__(self, store: ChunkStore, threads: int = 2):
        self.store = store
        self._pool: Executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="datalflash-read")

    def allocate(self, rows: int) -> Any:
        """A buffer of ``rows`` samples (an opaque handle for :meth:`read` and :meth:`arrays`)."""
        return self.store.allocate(rows)

    def arrays(self, buffer: Any) -> Buffer:
        """``{field: array}`` of a buffer."""
        return buffer

    def read(self, split: str, chunk: int, buffer: Any, offset: int) -> Future:
        """Read ``chunk`` of ``split`` into the buffer's rows from ``offset`` on, in the background."""
        start, stop = self.store.chunk_bounds(split, chunk)
        out = {name: b[offset : offset + stop - start] for name, b in buffer.items()}
        return self._pool.submit(self.store.read_chunks, split, [chunk], out)

    def close(self) -> None:
        """Cancel queued reads and join the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_worker_store: ChunkStore | None = None


def _init_worker(store: ChunkStore, worker_init_fn: Any, worker_id_queue: Any) -> None:
    global _worker_store
    _worker_store = store
    torch.set_num_threads(1)
    if worker_init_fn is not None:
        worker_init_fn(worker_id_queue.get())


def _read_in_worker(split: str, chunk: int, raw: dict[str, torch.Tensor], offset: int) -> None:
    start, stop = _worker_store.chunk_bounds(split, chunk)
    _worker_store.read_chunks(split, [chunk], _views(_worker_store, raw, offset, stop - start))


class ProcessReader(ThreadReader):
    """Reads chunks in ``workers`` processes into shared-memory buffers.

    ``context`` is a multiprocessing context or start method name (``None``: the default);
    ``worker_init_fn(worker_id)`` runs once in each worker, as in torch's DataLoader.
    """

    def __init__(self, store: ChunkStore, workers: int, context: Any = None, worker_init_fn: Any = None):
        self.store = store
        if context is None or isinstance(context, str):
            context = multiprocessing.get_context(context)
        ids = context.Queue()
        for i in range(workers):
            ids.put(i)
        self._ids = ids
        self._pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(store, worker_init_fn, ids)
        )

    def allocate(self, rows: int) -> Any:
        raw = {
            name: torch.empty(max(1, rows * spec.sample_nbytes), dtype=torch.uint8).share_memory_()
            for name, spec in self.store.fields.items()
        }
        return rows, raw

    def arrays(self, buffer: Any) -> Buffer:
        rows, raw = buffer
        return _views(self.store, raw, 0, rows)

    def read(self, split: str, chunk: int, buffer: Any, offset: int) -> Future:
        return self._pool.submit(_read_in_worker, split, chunk, buffer[1], offset)

    def close(self) -> None:
        super().close()
        self._ids.close()
        self._ids.join_thread()


def make_reader(store: ChunkStore, num_workers: int, context: Any = None, worker_init_fn: Any = None) -> ThreadReader:
    """Worker processes when ``num_workers > 0``, else two reading threads."""
    if num_workers > 0:
        return ProcessReader(store, num_workers, context, worker_init_fn)
    return ThreadReader(store, threads=2)


