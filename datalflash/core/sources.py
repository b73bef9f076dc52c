"""Batch sources: what the loader's stages produce for each kind of dataset, on the CPU.

Each source turns an epoch's order into CPU batches of ``{field: tensor}``:

* :func:`memory_batches`: a :class:`FlashDataset`, one gather per field and batch.
* :func:`planned_chunk_batches`: a :class:`ChunkedDataset` in plan order, windows of whole chunks
  read ahead by a :class:`~datalflash.reading.WindowPrefetcher`.
* :func:`sampled_chunk_batches`: a :class:`ChunkedDataset` in the order of a user's sampler, the
  chunks each batch needs kept in a small LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from datalflash.batching import gather
from datalflash.core.chunked import ChunkedDataset
from datalflash.core.dataset import FlashDataset, checked_index
from datalflash.ordering import EpochPlan, batch_bounds
from datalflash.reading import WindowPrefetcher
from datalflash.store.dtypes import tensors_from_storage

Batch = dict[str, torch.Tensor]


def memory_batches(
    dataset: FlashDataset, batches: Iterable[Sequence[int] | torch.Tensor], pin_memory: bool, checked: bool = False
) -> Iterator[Batch]:
    """Gather each batch of indices from the in-memory tensors (``checked``: indices are known
    to be valid ``int64`` tensors, as the loader's own plans are)."""
    for indices in batches:
        index = indices if checked else checked_index(indices, len(dataset))
        yield gather([(dataset.fields, index)], pin_memory=pin_memory)


def planned_chunk_batches(
    dataset: ChunkedDataset,
    plan: EpochPlan,
    *,
    batch_size: int,
    drop_last: bool,
    ahead: int,
    threads: int,
    timeout: float,
    pin_memory: bool,
) -> Iterator[Batch]:
    """Batches of an epoch plan; a batch may take its rows from two or more windows."""
    store, fields = dataset.store, dataset.fields
    offsets = plan.window_offsets
    bounds = batch_bounds(int(offsets[-1]), batch_size, drop_last)
    if not bounds:
        return
    prefetcher = WindowPrefetcher(store, dataset.split, plan.windows, ahead=ahead, threads=threads, timeout=timeout)
    try:
        resident: dict[int, dict[str, torch.Tensor]] = {}
        for start, stop in bounds:
            segments = []
            w = int(np.searchsorted(offsets, start, side="right")) - 1
            while start < stop:
                end = min(stop, int(offsets[w + 1]))
                if w not in resident:
                    resident[w] = tensors_from_storage(prefetcher.get(w), fields)
                rows = torch.from_numpy(plan.orders[w][start - offsets[w] : end - offsets[w]])
                segments.append((resident[w], rows))
                start, w = end, w + 1
            batch = gather(segments, pin_memory=pin_memory)
            for done in [d for d in resident if offsets[d + 1] <= stop]:  # fully served windows
                del resident[done]
                prefetcher.release(done)
            yield batch
    finally:
        prefetcher.close()


def sampled_chunk_batches(
    dataset: ChunkedDataset, batches: Iterable[Sequence[int]], *, cache_bytes: int, pin_memory: bool
) -> Iterator[Batch]:
    """Batches in a sampler's order: each batch reads the chunks it needs (kept in an LRU cache)."""
    store = dataset.store
    chunk_bytes = store.chunk_size * sum(f.sample_nbytes for f in dataset.fields.values())
    capacity = max(1, cache_bytes // max(1, chunk_bytes))
    cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
    for indices in batches:
        index = checked_index(indices, len(dataset))
        chunk_of = index // store.chunk_size
        segments, positions = [], []
        for chunk in torch.unique(chunk_of).tolist():
            if chunk in cache:
                cache.move_to_end(chunk)
            else:
                cache[chunk] = dataset.chunk_tensors(chunk)
                if len(cache) > max(capacity, 1):
                    cache.popitem(last=False)
            where = torch.nonzero(chunk_of == chunk).flatten()
            segments.append((cache[chunk], index[where] - chunk * store.chunk_size))
            positions.append(where)
        grouped = gather(segments)
        yield gather([(grouped, torch.argsort(torch.cat(positions)))], pin_memory=pin_memory)
