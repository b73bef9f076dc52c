"""The loader's own stages over a FlashDataset or a store split: one epoch's CPU batches.

order (plan, rank share, schedule) -> read (a window prefetcher over reading threads or worker
processes) -> assemble (one gather per field). :class:`OwnEpochs` knows what it serves and how it
reads; :class:`~datalflash.loading.FlashDataLoader` adds the device transfer, the transform,
state and resume around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from datalflash.batching.ragged import Collate
from datalflash.loading.batches import (
    Batch,
    memory_batches,
    planned_chunk_batches,
    planned_memory_batches,
    sampled_chunk_batches,
)
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.memory import FlashDataset
from datalflash.ordering import EpochPlan, Schedule, memory_plan, plan_epoch, schedule
from datalflash.ordering.plan import split_chunk_rows
from datalflash.ordering.ranges import Ranges, rank_share, share_size, take, total
from datalflash.ordering.tokens import TokenBudget, bucketed, token_cuts
from datalflash.reading import SpareBuffers, ThreadReader, make_reader


@dataclass
class Reading:
    """How a store split's chunks are read: ``workers`` processes (0: threads), their start
    method, init function and persistence (torch's ``num_workers`` family of arguments)."""

    workers: int = 0
    context: Any = None
    worker_init_fn: Callable | None = None
    persistent: bool = False
    timeout: float = 0
    read_ahead_bytes: int = 512 * 2**20


EpochKey = tuple[int, int, tuple[tuple[int, int], ...], int]
"""``(epoch, seed, remaining, skip)``: what decides an epoch's order on a rank."""


@dataclass
class OwnEpochs:
    """Epochs of ``data`` served ``batch_size`` samples at a time, in the loader's own order
    (``sampler`` and ``batch_sampler`` None) or a user's, by rank ``rank`` of ``world_size``."""

    data: FlashDataset | ChunkedDataset
    batch_size: int
    shuffle: bool
    drop_last: bool
    sampler: Sampler | Iterable | None = None
    batch_sampler: Sampler | Iterable | None = None
    rank: int = 0
    world_size: int = 1
    window_chunks: int | None = None
    reading: Reading = field(default_factory=Reading)
    collate: dict[str, Collate] | None = field(default_factory=dict)  # how ragged fields batch (None: rows)
    tokens: TokenBudget | None = None  # batches bounded by a token budget instead of batch_size
    length_field: str | None = None  # the ragged field whose elements count as tokens
    unbatched: bool = False  # batch_size=None: a sampler's items are fetched as they are
    items_are_batches: bool | None = None  # (unbatched: whether the sampler gives lists of indices)
    _token_cache: tuple[Any, Any] | None = None
    _reader: ThreadReader | None = None  # kept across epochs with persistent workers
    _spare: SpareBuffers = field(default_factory=SpareBuffers)  # chunk buffers kept across epochs

    @property
    def own_order(self) -> bool:
        """Whether the order is the loader's own (plannable, resumable) one."""
        return self.sampler is None and self.batch_sampler is None

    def set_ranks(self, rank: int, world_size: int) -> None:
        """Serve rank ``rank``'s share of ``world_size`` from the next epoch on."""
        self.rank, self.world_size, self._token_cache = rank, world_size, None

    def num_batches(self, remaining: Ranges, skip: int, epoch: int = 0, seed: int = 0) -> int:
        """Batches of an epoch whose positions ``remaining`` are shared out, ``skip`` of this
        rank's share already served (in token-budget mode: ``skip`` batches)."""
        if self.tokens is not None:
            return max(0, len(self._token_plan(epoch, seed, remaining)[2]) - skip)
        if self.batch_sampler is not None:
            return len(self.batch_sampler)  # type: ignore[arg-type]  # (a sized sampler, as torch requires)
        if self.sampler is not None:
            n = len(self.sampler)  # type: ignore[arg-type]
        else:
            n = max(0, share_size(total(remaining), self.world_size, self.drop_last) - skip)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(
        self,
        epoch: int,
        seed: int,
        remaining: Ranges,
        skip: int,
        pin_memory: bool,
        upcoming: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """The CPU batches (``{field: tensor}``) of ``epoch``: this rank's share of ``remaining``
        from position ``skip`` on, or a user's sampler's batches. ``upcoming``: ``(epoch, seed)``
        of the next epoch when it is known now (its first window is then read as this one ends)."""
        data = self.data
        index_batches = self._sampler_batches()
        if index_batches is not None:
            if isinstance(data, FlashDataset):
                return memory_batches(data, index_batches, pin_memory)
            return sampled_chunk_batches(
                data,
                index_batches,
                cache_bytes=self.reading.read_ahead_bytes,
                pin_memory=pin_memory,
                timeout=self.reading.timeout,
                collate=self.collate,
            )
        if isinstance(data, FlashDataset):
            return planned_memory_batches(data, *self._memory_schedule(epoch, seed, remaining, skip), pin_memory)
        return self._planned_chunks(data, (epoch, seed, tuple(remaining), skip), pin_memory, upcoming)

    def index_batches(self, epoch: int, seed: int, remaining: Ranges, skip: int) -> Iterator[list[int]]:
        """The sample indices of each batch :meth:`batches` serves in the loader's own order, for
        what rebuilds a loader from its ``batch_sampler`` (Accelerate's ``skip_first_batches``)."""
        data = self.data
        if isinstance(data, FlashDataset):
            plan, sched = self._memory_schedule(epoch, seed, remaining, skip)
            window_samples: Callable[[int], np.ndarray] = lambda w: np.arange(len(data))  # noqa: E731
        else:
            plan, sched = self._chunk_schedule(data, (epoch, seed, tuple(remaining), skip))
            window_samples = lambda w: np.concatenate(  # noqa: E731  (its chunks' samples, in read order)
                [np.arange(*data.store.chunk_bounds(data.split, int(c))) for c in plan.window_chunks(w)]
            )
        windows = [window for window, _ in sched.iter_spans()]
        served: dict[int, np.ndarray] = {}  # a window's samples in the order served (the last one met)
        for pieces in sched.iter_batches():
            batch: list[int] = []
            for v, a, b in pieces:
                w = windows[v]
                if w not in served:
                    served = {w: window_samples(w)[plan.order(w)]}
                batch.extend(served[w][a:b].tolist())
            yield batch

    def _memory_schedule(self, epoch: int, seed: int, remaining: Ranges, skip: int) -> tuple[EpochPlan, Schedule]:
        """The plan of an epoch of a FlashDataset and this rank's schedule of it."""
        share = rank_share(remaining, self.rank, self.world_size, self.drop_last)
        share = take(share, skip, total(share))
        plan = memory_plan(len(self.data), shuffle=self.shuffle, seed=seed, epoch=epoch)
        return plan, schedule(plan, share, self.batch_size, self.drop_last)

    def _chunk_schedule(self, data: ChunkedDataset, key: EpochKey) -> tuple[EpochPlan, Schedule]:
        """The plan of an epoch of a store split and this rank's schedule of it, ``key`` being
        ``(epoch, seed, remaining, skip)``."""
        epoch, seed, remaining, skip = key
        if self.tokens is not None:
            plan, share, cuts = self._token_plan(epoch, seed, list(remaining))
            start = cuts[skip][0] if skip < len(cuts) else total(share)
            rest = [(a - start, b - start) for a, b in cuts[skip:]]
            return plan, schedule(plan, take(share, start, total(share)), 1, False, rest)
        share = rank_share(list(remaining), self.rank, self.world_size, self.drop_last)
        share = take(share, skip, total(share))
        chunk_rows = split_chunk_rows(len(data), data.store.chunk_size)
        window = self.window_chunks or max(1, len(chunk_rows))
        plan = plan_epoch(chunk_rows, window=window, shuffle=self.shuffle, seed=seed, epoch=epoch)
        return plan, schedule(plan, share, self.batch_size, self.drop_last)

    def _planned_chunks(
        self, data: ChunkedDataset, key: EpochKey, pin_memory: bool, upcoming: tuple[int, int] | None = None
    ) -> Iterator[Batch]:
        """Batches of an epoch of a store split in the loader's own order, read by this epoch's
        reader: worker processes when ``reading.workers > 0`` (kept across epochs when
        persistent), else reading threads."""
        r = self.reading
        plan, sched = self._chunk_schedule(data, key)
        then = None
        if upcoming is not None:  # (the next epoch's plan, made only when its first window is read)
            following: EpochKey = (upcoming[0], upcoming[1], ((0, len(data)),), 0)
            then = lambda: self._chunk_schedule(data, following)  # noqa: E731
        reader = self._reader or make_reader(data.store, r.workers, r.context, r.worker_init_fn, self._spare)
        if r.persistent:
            self._reader = reader
        try:
            yield from planned_chunk_batches(
                data,
                plan,
                sched,
                reader=reader,
                ahead=1,
                timeout=r.timeout,
                pin_memory=pin_memory,
                collate=self.collate,
                then=then,
            )
        finally:
            if not r.persistent:
                reader.close()

    def _token_plan(self, epoch: int, seed: int, remaining: Ranges) -> tuple[EpochPlan, Ranges, list[tuple[int, int]]]:
        """``(plan, this rank's share, batch bounds over it)`` of a token-budget epoch (cached)."""
        key = (epoch, seed, tuple(remaining))
        if self._token_cache is not None and self._token_cache[0] == key:
            return self._token_cache[1]
        data, tokens = self.data, self.tokens
        if not isinstance(data, ChunkedDataset) or tokens is None or self.length_field is None:
            raise TypeError("token budgets batch a store split's own order")
        chunk_size = data.store.chunk_size
        chunk_rows = split_chunk_rows(len(data), chunk_size)
        window = self.window_chunks or max(1, len(chunk_rows))
        lengths = data.lengths(self.length_field)
        plan = plan_epoch(chunk_rows, window=window, shuffle=self.shuffle, seed=seed, epoch=epoch)
        plan = bucketed(plan, lengths, chunk_size, tokens.bucket)
        share = rank_share(remaining, self.rank, self.world_size, self.drop_last)
        cuts = token_cuts(plan, remaining, self.rank, self.world_size, self.drop_last, lengths, chunk_size, tokens)
        self._token_cache = (key, (plan, share, cuts))
        return plan, share, cuts

    def _sampler_batches(self) -> Iterable[Sequence[int]] | None:
        """Batches of indices from a user's sampler or batch sampler; None: the loader's own order."""
        if self.batch_sampler is not None:
            return self.batch_sampler
        if self.sampler is not None and self.unbatched:
            return self._sampler_items(self.sampler)
        if self.sampler is not None:
            return BatchSampler(self.sampler, self.batch_size, self.drop_last)
        return None

    def _sampler_items(self, sampler: Sampler | Iterable) -> Iterator[list[int]]:
        """``batch_size=None``: each of the sampler's items fetched as torch fetches it,
        ``dataset[item]``: an index is one sample, a list of indices a batch
        (:attr:`items_are_batches`, decided by the first item)."""
        for item in sampler:
            many = isinstance(item, (Sequence, torch.Tensor, np.ndarray))
            if self.items_are_batches is None:
                self.items_are_batches = many
            yield [int(i) for i in item] if many else [int(item)]

    def close(self) -> None:
        """Stop persistent worker processes and drop the kept chunk buffers."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._spare.clear()
