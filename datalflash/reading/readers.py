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
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from datalflash.errors import StoreReadError
from datalflash.format.ragged import RaggedBuffer
from datalflash.reading.pool import DaemonPool
from datalflash.store.base import ChunkStore

Buffer = dict[str, Any]
"""``{field: rows}``: an array, or a :class:`~datalflash.format.ragged.RaggedBuffer` for a ragged field."""
CLOSE_TIMEOUT = 10.0  # seconds closing a reader waits for reads in progress before abandoning them
Handle = tuple[int, Any]
"""A reader's buffer: ``(rows it holds, payload)``; :meth:`ThreadReader.arrays` gives its arrays."""


Holds = tuple[str, tuple[int, ...]]
"""What a kept buffer holds: ``(split, chunk ids)``, every one of those chunks read, in that order."""


class SpareBuffers:
    """Buffers whose reads are over, kept for reuse (at most ``keep``, the most recent).

    A loader keeps one across epochs and hands it to each epoch's reader, so a window buffer is
    allocated and page-faulted once, not every epoch. A buffer given with what it ``holds`` can be
    taken back with its contents (:meth:`holding`): a window read whole is not read again."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._buffers: list[tuple[Handle, Holds | None]] = []

    def take(self, rows: int) -> Handle | None:
        """A kept buffer of at least ``rows`` rows (no longer kept; its contents forgotten), or None."""
        for i, ((capacity, payload), _) in enumerate(self._buffers):
            if capacity >= rows:
                del self._buffers[i]
                return capacity, payload
        return None

    def holding(self, split: str, chunks: Iterable[int]) -> tuple[Handle, tuple[int, ...]] | None:
        """The kept buffer holding exactly the chunks ``chunks`` of ``split`` (in any order; no
        longer kept) and the order they lie in, or None."""
        wanted = sorted(int(c) for c in chunks)
        for i, (buffer, holds) in enumerate(self._buffers):
            if holds is not None and holds[0] == split and sorted(holds[1]) == wanted:
                del self._buffers[i]
                return buffer, holds[1]
        return None

    def give(self, buffer: Handle, holds: Holds | None = None) -> None:
        """Keep ``buffer`` (no read may still be writing it), holding ``holds`` if given."""
        self._buffers.append((buffer, holds))
        del self._buffers[: -self.keep]

    def clear(self) -> None:
        """Drop every kept buffer."""
        self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


def _views(store: ChunkStore, raw: dict[str, torch.Tensor], offset: int, rows: int) -> dict[str, np.ndarray]:
    """Storage-typed views of rows ``offset..offset+rows`` of shared byte tensors, one per
    stored array (:attr:`~datalflash.store.ChunkStore.arrays`: a ragged field's shape table)."""
    out = {}
    for name, spec in store.arrays.items():
        flat = raw[name].numpy()[: (offset + rows) * spec.sample_nbytes]
        out[name] = flat.view(spec.storage_dtype).reshape(offset + rows, *spec.fixed_shape)[offset:]
    return out


def _fields(store: ChunkStore, arrays: dict[str, np.ndarray]) -> Buffer:
    """``{field: rows}`` from the stored arrays' views: a ragged field gets a RaggedBuffer over
    its shape table (its values are kept by the buffer as they are read)."""
    out: Buffer = {}
    for name, spec in store.fields.items():
        if spec.ragged:
            table = arrays[spec.shapes_array.name]
            out[name] = RaggedBuffer(len(table), len(spec.shape), spec.storage_dtype, table)
        else:
            out[name] = arrays[name]
    return out


class ThreadReader:
    """Reads chunks in ``threads`` threads of this process.

    Buffers are :data:`Handle` s. :meth:`allocate` takes one from ``spare`` when one is large
    enough, :meth:`recycle` gives a buffer whose reads are over back to it.
    """

    def __init__(self, store: ChunkStore, threads: int = 2, spare: SpareBuffers | None = None):
        self.store = store
        self.spare = spare if spare is not None else SpareBuffers()
        self._pool = DaemonPool(threads, "datalflash-read")

    def _new(self, rows: int) -> Any:
        return self.store.allocate(rows)

    def allocate(self, rows: int) -> Handle:
        """A buffer of at least ``rows`` samples (a spare one when one is large enough)."""
        buffer = self.spare.take(rows) or (rows, self._new(rows))
        for array in self.arrays(buffer).values():
            if isinstance(array, RaggedBuffer):
                array.clear()  # (a ragged field's values of an earlier visit are let go)
        return buffer

    def recycle(self, buffer: Handle, holds: Holds | None = None) -> None:
        """Keep ``buffer`` (no read may still be writing it) for a later :meth:`allocate`, or,
        given what it ``holds``, for :meth:`reuse`."""
        self.spare.give(buffer, holds)

    def reuse(self, split: str, chunks: Iterable[int]) -> tuple[Handle, tuple[int, ...]] | None:
        """A kept buffer already holding the chunks ``chunks`` of ``split`` and the order they
        lie in (see :meth:`SpareBuffers.holding`), its contents kept; None if there is none."""
        return self.spare.holding(split, chunks)

    def arrays(self, buffer: Handle) -> Buffer:
        """``{field: array}`` of all rows of a buffer."""
        return buffer[1]

    def read(self, split: str, chunk: int, buffer: Handle, offset: int) -> Future:
        """Read ``chunk`` of ``split`` into the buffer's rows from ``offset`` on, in the background."""
        start, stop = self.store.chunk_bounds(split, chunk)
        out = {name: b[offset : offset + stop - start] for name, b in buffer[1].items()}
        return self._pool.submit(self.store.read_chunks, split, [chunk], out)

    def close(self) -> None:
        """Cancel queued reads and join the threads."""
        self._pool.shutdown(CLOSE_TIMEOUT)


_worker_store: ChunkStore | None = None


PARENT_CHECK_SECONDS = 0.5  # how often a worker looks whether its parent is still there


def watch_parent(parent: int) -> None:
    """Exit this worker as soon as its parent is gone (killed by any signal included)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


_init_error: Exception | None = None  # what this worker's worker_init_fn raised, raised by its reads


def _init_worker(
    store: ChunkStore, worker_init_fn: Any, worker_id_queue: Any, parent: int, pids: Any, workers: int, base_seed: int
) -> None:
    global _worker_store, _init_error
    _worker_store = store
    pids.put(os.getpid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker
    threading.Thread(target=watch_parent, args=(parent,), name="datalflash-parent-watch", daemon=True).start()
    torch.set_num_threads(1)
    worker_id = worker_id_queue.get()
    _seed_as_torch_does(worker_id, workers, base_seed, store)
    if worker_init_fn is not None:
        try:
            worker_init_fn(worker_id)
        except Exception as e:  # (raised by this worker's reads, so the loader raises it, as torch does)
            _init_error = e


def _seed_as_torch_does(worker_id: int, workers: int, base_seed: int, store: ChunkStore) -> None:
    """Seed ``random``, torch and numpy in a worker and set what ``get_worker_info()`` returns, as
    torch's DataLoader does in its workers (``seed = base_seed + worker_id``; ``dataset`` is the
    store)."""
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    from torch.utils.data._utils import worker  # (torch keeps these in its private module)

    generate = getattr(worker, "_generate_state", None)
    np.random.seed(generate(base_seed, worker_id) if generate is not None else seed % 2**32)
    info = getattr(worker, "WorkerInfo", None)
    if info is not None:
        worker._worker_info = info(id=worker_id, num_workers=workers, seed=seed, dataset=store)


_worker_buffers: dict[int, dict[str, torch.Tensor]] = {}


def _read_in_worker(
    split: str, chunk: int, key: int, raw: dict[str, torch.Tensor], offset: int
) -> dict[str, np.ndarray]:
    # Holding the buffer keeps its mapping: torch's unpickler then finds the same storage again
    # instead of mapping (and page-faulting) the shared memory anew for every chunk.
    _worker_buffers[key] = raw
    while len(_worker_buffers) > 8:
        del _worker_buffers[next(iter(_worker_buffers))]
    store = _worker_store
    if store is None:
        raise RuntimeError("a reading worker was not initialized with its store")
    if _init_error is not None:
        raise _init_error
    start, stop = store.chunk_bounds(split, chunk)
    out = _fields(store, _views(store, raw, offset, stop - start))
    store.read_chunks(split, [chunk], out)
    # A ragged field's values go back through the pipe (their size is known only once read).
    return {name: rows.values_of(0) for name, rows in out.items() if isinstance(rows, RaggedBuffer)}


def _base_seed() -> int:
    """A base seed for a pool of workers, drawn from torch's RNG as torch's loader draws one."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class ProcessReader(ThreadReader):
    """Reads chunks in ``workers`` processes into shared-memory buffers.

    ``context`` is a multiprocessing context or start method name (``None``: the default);
    ``worker_init_fn(worker_id)`` runs once in each worker, as in torch's DataLoader (what it
    raises, that worker's reads raise); each worker is seeded and sees ``get_worker_info()`` as
    torch's workers do.
    """

    def __init__(
        self,
        store: ChunkStore,
        workers: int,
        context: Any = None,
        worker_init_fn: Any = None,
        spare: SpareBuffers | None = None,
    ):
        self.store = store
        self.spare = spare if spare is not None else SpareBuffers()
        if context is None or isinstance(context, str):
            context = multiprocessing.get_context(context)
        ids = context.Queue()
        for i in range(workers):
            ids.put(i)
        self._ids, self._pids = ids, context.SimpleQueue()
        self._processes = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(store, worker_init_fn, ids, os.getpid(), self._pids, workers, _base_seed()),
        )

    def _new(self, rows: int) -> Any:
        raw = {
            name: torch.empty(max(1, rows * spec.sample_nbytes), dtype=torch.uint8).share_memory_()
            for name, spec in self.store.arrays.items()
        }
        return raw, _fields(self.store, _views(self.store, raw, 0, rows))

    def arrays(self, buffer: Handle) -> Buffer:
        """``{field: array}`` views of a shared buffer's bytes (RaggedBuffers for ragged fields)."""
        return buffer[1][1]

    def read(self, split: str, chunk: int, buffer: Handle, offset: int) -> Future:
        """Read ``chunk`` into the shared buffer in a worker process (a ragged field's values
        come back through the pipe and are put into the buffer before the read counts as done)."""
        raw, fields = buffer[1]
        try:
            inner = self._processes.submit(_read_in_worker, split, chunk, id(raw), raw, offset)
        except BrokenProcessPool as e:
            raise StoreReadError(
                f"{self.store.path}: split {split!r} chunk {chunk}: a reading worker process died ({e})"
            ) from e
        if not any(isinstance(rows, RaggedBuffer) for rows in fields.values()):
            return inner
        rows = self.store.chunk_bounds(split, chunk)
        outer: Future = Future()

        def done(future: Future) -> None:
            if future.cancelled():
                outer.cancel()
                return
            if not outer.set_running_or_notify_cancel():  # (the outer one was cancelled meanwhile)
                return
            error = future.exception()
            if error is not None:
                outer.set_exception(error)
                return
            for name, values in future.result().items():
                fields[name].put(offset, rows[1] - rows[0], values)
            outer.set_result(None)

        inner.add_done_callback(done)
        return outer

    def close(self) -> None:
        """Cancel queued reads and stop the worker processes; a worker still in a read after
        :data:`CLOSE_TIMEOUT` seconds is killed, with a warning."""
        pids = []
        while not self._pids.empty():
            pids.append(self._pids.get())
        closer = threading.Thread(
            target=self._processes.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
        )
        closer.start()  # (shutting down joins the workers, without a deadline of its own)
        closer.join(CLOSE_TIMEOUT)
        if closer.is_alive():
            stuck = [pid for pid in pids if _running(pid)]
            for pid in stuck:
                os.kill(pid, signal.SIGKILL)
            warnings.warn(
                f"killed {len(stuck)} reading worker process(es) still in a read after {CLOSE_TIMEOUT:g} s "
                f"(pids {stuck}): the storage is not answering",
                stacklevel=2,
            )
            closer.join(CLOSE_TIMEOUT)
        self._ids.close()
        self._ids.join_thread()
        self._pids.close()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:  # no /proc here: it exists
        return True


def make_reader(
    store: ChunkStore,
    num_workers: int,
    context: Any = None,
    worker_init_fn: Any = None,
    spare: SpareBuffers | None = None,
) -> ThreadReader:
    """Worker processes when ``num_workers > 0``, else as many reading threads as the store
    declares it suits (:attr:`~datalflash.store.ChunkStore.read_threads`)."""
    if num_workers > 0:
        return ProcessReader(store, num_workers, context, worker_init_fn, spare)
    return ThreadReader(store, threads=store.read_threads, spare=spare)
