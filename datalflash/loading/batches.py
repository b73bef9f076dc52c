"""Batch sources: what the loader's stages produce for each kind of dataset, on the CPU.

Each source turns an epoch's order into CPU batches of ``{field: tensor}``:

* :func:`planned_memory_batches` / :func:`memory_batches`: a :class:`FlashDataset` in the
  loader's own order / a sampler's order, one gather per field and batch.
* :func:`planned_chunk_batches`: a :class:`ChunkedDataset` in plan order, windows of whole chunks
  read ahead by a :class:`~datalflash.reading.WindowPrefetcher`.
* :func:`sampled_chunk_batches`: a :class:`ChunkedDataset` in the order of a user's sampler, the
  chunks each batch needs kept in a small LRU cache.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
import torch

from datalflash.batching import gather
from datalflash.batching.assemble import gather_run
from datalflash.batching.ragged import Collate
from datalflash.batching.tensors import tensors_from_storage
from datalflash.errors import LoaderTimeoutError
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.memory import FlashDataset, checked_index
from datalflash.ordering import EpochPlan, Schedule
from datalflash.reading import ThreadReader, WindowPrefetcher, readers
from datalflash.reading.pool import DaemonPool

Batch = dict[str, Any]


def memory_batches(
    dataset: FlashDataset, batches: Iterable[Sequence[int] | torch.Tensor], pin_memory: bool
) -> Iterator[Batch]:
    """Gather each batch of indices (a user's sampler) from the in-memory tensors."""
    for indices in batches:
        yield gather([(dataset.fields, checked_index(indices, len(dataset)))], pin_memory=pin_memory)


def planned_memory_batches(
    dataset: FlashDataset, plan: EpochPlan, sched: Schedule, pin_memory: bool
) -> Iterator[Batch]:
    """Batches of a RAM dataset's own plan (one window holding every sample)."""
    if not sched:
        return
    order = torch.from_numpy(plan.order(0))
    for batch in sched.iter_batches():
        index = order[batch[0][1] : batch[0][2]] if len(batch) == 1 else torch.cat([order[a:b] for _, a, b in batch])
        yield gather([(dataset.fields, index)], pin_memory=pin_memory)


def planned_chunk_batches(
    dataset: ChunkedDataset,
    plan: EpochPlan,
    sched: Schedule,
    *,
    reader: ThreadReader | None,
    ahead: int,
    timeout: float,
    pin_memory: bool,
    collate: Mapping[str, Collate] | None = None,
    then: Callable[[], tuple[EpochPlan, Schedule]] | None = None,
) -> Iterator[Batch]:
    """Batches of a store split's plan, as ``sched`` cuts them for this rank; a batch may take
    its rows from two or more visits. Visits and batches are generated as they are served, so
    nothing is built per window or batch up front. Ragged fields are batched as ``collate``
    says (None: kept as rows, for a ``collate_fn`` to batch their samples). ``then`` gives the
    next epoch's plan and schedule when they are known (a given seed, or no shuffle): once the
    last window is being served, the next epoch's first window is read too, in threads of its
    own, and handed to ``reader``'s spare buffers as the epoch ends, so that epoch's first batch
    does not wait for it (see :func:`_read_first_window`)."""
    if not sched:
        return
    ragged = [name for name, spec in dataset.fields.items() if spec.ragged]
    images = any(spec.kind == "image" for spec in dataset.fields.values())
    lengths = {name: dataset.lengths(name) for name in ragged}  # (ragged values read to their place)
    prefetcher = WindowPrefetcher(
        dataset.store,
        dataset.split,
        (plan.window_chunks(window) for window, _ in sched.iter_spans()),  # (cheap: no window orders)
        (visit.chunks for visit in sched.iter_visits()),
        rows=plan.max_window_rows,
        reader=reader,
        ahead=ahead,
        timeout=timeout,
        lengths=lengths,
    )
    upcoming: tuple[WindowPrefetcher, ThreadReader] | None = None
    if then is None or plan.num_windows < 2 or reader is None or type(reader) is not ThreadReader:
        then = None  # (one window: kept whole anyway; worker processes: not read in this process)
    spans = enumerate(sched.iter_spans())
    run_rows = RUN_BYTES // max(1, dataset.store.manifest.sample_nbytes) if ragged and collate is not None else 0
    try:
        left: dict[int, tuple[int, int]] = {}  # visit -> (window, positions it still serves), as met
        resident: dict[int, tuple[dict[str, Any], torch.Tensor]] = {}
        for run in _runs(sched.iter_batches(), run_rows):
            for v, a, b in (piece for pieces in run for piece in pieces):
                while v not in left:
                    seen, (window, visit_spans) = next(spans)
                    left[seen] = (window, sum(hi - lo for lo, hi in visit_spans))
                if v not in resident:
                    window = left[v][0]
                    tensors = tensors_from_storage(prefetcher.get(v), dataset.fields)
                    layout, rows = prefetcher.layout(v), plan.order(window)
                    if images:  # (each row's sample index: images are cropped by it)
                        tensors[SAMPLE_INDEX] = _window_indices(dataset, layout)
                    if not np.array_equal(layout, plan.window_chunks(window)):  # (a buffer kept from before)
                        rows = relaid(rows, plan.window_chunks(window).tolist(), layout, dataset)
                    resident[v] = (tensors, torch.from_numpy(rows))
                left[v] = (left[v][0], left[v][1] - (b - a))
            if len(run) == 1:
                segments = [(resident[v][0], resident[v][1][a:b]) for v, a, b in run[0]]
                batches = [gather(segments, pin_memory=pin_memory, collate=collate)]
            else:  # consecutive rows of one visit
                (v, start, _), (_, _, stop) = run[0][0], run[-1][0]
                tensors, order = resident[v]
                sizes = [pieces[0][2] - pieces[0][1] for pieces in run]
                batches = gather_run(tensors, order[start:stop], sizes, pin_memory=pin_memory, collate=collate)
            for v in {v for pieces in run for v, _, _ in pieces}:
                if v in left and left[v][1] == 0 and v in resident:
                    del resident[v], left[v]
                    prefetcher.release(v)
            if then is not None and upcoming is None and prefetcher.on_last_visit and reader is not None:
                upcoming = _read_first_window(dataset, *then(), reader, lengths)
            yield from batches
        if upcoming is not None:  # (served to the end: the next epoch's first window is read whole)
            with contextlib.suppress(Exception):  # (a failed read is the next epoch's to raise, reading again)
                upcoming[0].get(0)
    finally:
        prefetcher.close()
        if upcoming is not None:  # (the reader first: a window whose reads are all done is kept)
            upcoming[1].close()
            upcoming[0].close()


def _read_first_window(
    dataset: ChunkedDataset, plan: EpochPlan, sched: Schedule, reader: ThreadReader, lengths: Mapping[str, Any]
) -> tuple[WindowPrefetcher, ThreadReader] | None:
    """Start reading the first window of an epoch of ``plan`` / ``sched`` whole, in a reader of
    its own sharing ``reader``'s spare buffers (closing both keeps the window there, marked with
    what it holds, for the epoch's own reads to find; see :meth:`ThreadReader.reuse`)."""
    first = next(iter(sched.iter_spans()), None)
    if first is None:
        return None
    store = dataset.store
    own = ThreadReader(store, threads=store.read_threads, spare=reader.spare)
    chunks = plan.window_chunks(first[0])
    window = WindowPrefetcher(
        store, dataset.split, [chunks], rows=plan.max_window_rows, reader=own, ahead=1, lengths=lengths
    )
    window.start()
    return window, own


SAMPLE_INDEX = "#index"
"""The key of each row's sample index in the batches of a split with image fields (not a field
name: ``#`` cannot start one)."""


def relaid(order: np.ndarray, chunks: Sequence[int], layout: Sequence[int], dataset: ChunkedDataset) -> np.ndarray:
    """Rows ``order`` of a window whose rows are its ``chunks``' concatenated, as the same rows of
    a buffer holding those chunks concatenated in the order ``layout``."""
    bounds = {int(c): dataset.store.chunk_bounds(dataset.split, int(c)) for c in layout}
    sizes = np.array([b - a for a, b in bounds.values()], dtype=np.int64)
    at = dict(zip(bounds, np.cumsum(sizes) - sizes))  # where each chunk's rows start in the buffer
    counts = np.array([bounds[int(c)][1] - bounds[int(c)][0] for c in chunks], dtype=np.int64)
    shift = np.array([at[int(c)] for c in chunks], dtype=np.int64) - (np.cumsum(counts) - counts)
    return (np.repeat(shift, counts) + np.arange(int(counts.sum()), dtype=np.int64))[order]


def _window_indices(dataset: ChunkedDataset, chunks: Iterable[int]) -> torch.Tensor:
    """The sample index of each row of a window of ``chunks`` (their rows, in chunk order)."""
    bounds = [dataset.store.chunk_bounds(dataset.split, int(c)) for c in chunks]
    return torch.from_numpy(np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in bounds]))


RUN_BYTES = 4 << 20
"""Consecutive batches of one visit are assembled together up to about this many bytes of rows,
when the dataset has ragged fields (one set of calls per run rather than per batch)."""


def _runs(batches: Iterable[list[tuple[int, int, int]]], max_rows: int) -> Iterator[list[list[tuple[int, int, int]]]]:
    """``batches`` (each a list of ``(visit, start, stop)`` pieces) grouped into runs: consecutive
    batches that each take one piece of the same visit, each piece starting where the last one
    stopped, up to ``max_rows`` rows in all (0: every batch a run of its own)."""
    run: list[list[tuple[int, int, int]]] = []
    rows = 0
    for pieces in batches:
        size = sum(b - a for _, a, b in pieces)
        last = run[-1] if run else None
        joins = (
            last is not None
            and len(last) == 1
            and len(pieces) == 1
            and last[0][0] == pieces[0][0]
            and last[0][2] == pieces[0][1]
            and rows + size <= max_rows
        )
        if not joins and run:
            yield run
            run, rows = [], 0
        run.append(pieces)
        rows += size
    if run:
        yield run


def sampled_chunk_batches(
    dataset: ChunkedDataset,
    batches: Iterable[Sequence[int]],
    *,
    cache_bytes: int,
    pin_memory: bool,
    timeout: float = 0,
    collate: Mapping[str, Collate] | None = None,
) -> Iterator[Batch]:
    """Batches in a sampler's order: each batch reads the chunks it needs (kept in an LRU cache),
    in a reading thread waited on for at most ``timeout`` seconds (0: no limit); ``collate`` as
    for :func:`planned_chunk_batches`."""
    store = dataset.store
    capacity = max(1, cache_bytes // max(1, store.manifest.chunk_nbytes))
    cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
    pool = DaemonPool(1, "datalflash-read")

    def read(chunk: int) -> dict[str, torch.Tensor]:
        try:
            return pool.submit(dataset.chunk_tensors, chunk).result(timeout=timeout or None)
        except FutureTimeout:
            raise LoaderTimeoutError(timeout, f"{store.path}: reading split {dataset.split!r} chunk {chunk}") from None

    try:
        yield from _sampled(dataset, batches, cache, capacity, read, pin_memory, collate)
    finally:
        pool.shutdown(readers.CLOSE_TIMEOUT)


def _sampled(
    dataset: ChunkedDataset,
    batches: Iterable[Sequence[int]],
    cache: OrderedDict[int, dict[str, torch.Tensor]],
    capacity: int,
    read: Callable[[int], dict[str, torch.Tensor]],
    pin_memory: bool,
    collate: Mapping[str, Collate] | None,
) -> Iterator[Batch]:
    store = dataset.store
    images = any(spec.kind == "image" for spec in dataset.fields.values())
    for indices in batches:
        index = checked_index(indices, len(dataset))
        chunk_of = index // store.chunk_size
        segments, positions = [], []
        for chunk in torch.unique(chunk_of).tolist():
            if chunk in cache:
                cache.move_to_end(chunk)
            else:
                cache[chunk] = read(chunk)
                if len(cache) > max(capacity, 1):
                    cache.popitem(last=False)
            where = torch.nonzero(chunk_of == chunk).flatten()
            segments.append((cache[chunk], index[where] - chunk * store.chunk_size))
            positions.append(where)
        grouped = gather(segments)  # (ragged fields: rows, ordered and batched by the next gather)
        batch = gather([(grouped, torch.argsort(torch.cat(positions)))], pin_memory=pin_memory, collate=collate)
        if images:  # (each row's sample index: images are cropped by it)
            batch[SAMPLE_INDEX] = index
        yield batch
