"""``FlashDataLoader``: torch's DataLoader signature, five stages underneath.

store -> order -> read -> assemble -> transfer. For a :class:`FlashDataset` (RAM) or a
:class:`ChunkedDataset` (a split of a chunk store) the loader plans each epoch itself, reads
whole chunks ahead in background threads and gathers each batch in one vectorized call per field.
Any other dataset, or a custom ``collate_fn``, goes through ``torch.utils.data.DataLoader``
unchanged, so swapping the class in never changes what a training script gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from datalflash.distributed import resolve_ranks, shared_seed
from datalflash.format.structure import rebuild
from datalflash.loading.batches import (
    memory_batches,
    planned_chunk_batches,
    planned_memory_batches,
    sampled_chunk_batches,
)
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.memory import FlashDataset
from datalflash.loading.resume import fingerprint, make_state, resume_point
from datalflash.ordering import memory_plan, plan_epoch, schedule
from datalflash.ordering.ranges import Ranges, rank_share, share_size, take, total
from datalflash.reading import ThreadReader, make_reader
from datalflash.transfer import DeviceTransfer, resolve_device

DEFAULT_READ_AHEAD = 512 * 2**20


class FlashDataLoader:
    """A drop-in for ``torch.utils.data.DataLoader`` that makes FlashDataset and chunk-store
    splits fast.

    Arguments up to ``in_order`` are torch's and mean what they mean there. Extra keywords:

    * ``device``: move each batch there (``non_blocking`` copies from pinned memory, issued
      ahead on a side CUDA stream).
    * ``seed``: seed of the epoch orders (``None``: drawn from torch's RNG or ``generator``).
    * ``read_ahead_bytes``: memory for chunks read ahead of use (store splits).
    * ``window_chunks``: chunks whose samples are shuffled together (store splits); by default
      the whole split when it fits in ``read_ahead_bytes``, else as many as half of it holds
      (the window being served and the next one being read). Memory: up to two windows.
    * ``transform``: a function applied to each batch's features after the device transfer
      (the first element of tuple samples, the whole dict of dict samples).
    * ``rank``, ``world_size``: this process's share of each epoch; by default taken from
      ``torch.distributed`` when it is initialized. Every sample is served once per epoch across
      ranks (``drop_last=False`` pads with at most ``world_size - 1`` repeats, ``drop_last=True``
      leaves at most ``world_size - 1`` out before dropping each rank's short last batch), every
      rank yields the same number of batches, and each rank reads only the chunks it serves.

    For store splits, ``num_workers > 0`` reads and decodes chunks in that many worker processes
    (into shared memory; ``multiprocessing_context``, ``worker_init_fn`` and
    ``persistent_workers`` apply), ``0`` in two threads; the batches are the same either way. A
    FlashDataset is gathered in the calling thread. A user's ``sampler`` / ``batch_sampler`` is
    followed as given (it shards itself, e.g. ``DistributedSampler``).

    ``state_dict()`` / ``load_state_dict()`` resume an epoch exactly where it stopped, on any
    world size (see :mod:`datalflash.loading.resume`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | Iterable | None = None,
        batch_sampler: Sampler | Iterable | None = None,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        device: Any = None,
        seed: int | None = None,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD,
        window_chunks: int | None = None,
        transform: Callable | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.shuffle = bool(shuffle)
        self.num_workers = num_workers
        self.timeout = timeout
        self.transform = transform
        self.read_ahead_bytes = int(read_ahead_bytes)
        self.device, self.pin_memory = resolve_device(device, pin_memory)
        self._epoch = 0
        ours = isinstance(dataset, (FlashDataset, ChunkedDataset))
        self._torch: DataLoader | None = None
        if not ours or collate_fn is not None or (batch_size is None and batch_sampler is None):
            self._torch = DataLoader(
                dataset,
                batch_size,
                shuffle,
                sampler,
                batch_sampler,
                num_workers,
                collate_fn,
                self.pin_memory,
                drop_last,
                timeout,
                worker_init_fn,
                multiprocessing_context,
                generator,
                prefetch_factor=prefetch_factor,
                persistent_workers=persistent_workers,
                pin_memory_device=pin_memory_device,
                in_order=in_order,
            )
        else:
            _check_arguments(batch_size, shuffle, sampler, batch_sampler, drop_last)
        flash = self._torch is None
        self.rank, self.world_size = resolve_ranks(rank, world_size) if flash else (0, 1)
        # torch's path draws its own seed
        self.seed = shared_seed(seed, self.world_size, generator) if flash else seed
        self.window_chunks = self._window(window_chunks) if flash and isinstance(dataset, ChunkedDataset) else None
        self.multiprocessing_context, self.worker_init_fn = multiprocessing_context, worker_init_fn
        self.persistent_workers = persistent_workers and num_workers > 0
        self._reader: ThreadReader | None = None  # kept across epochs with persistent_workers
        self._spare: list = []  # chunk buffers kept across epochs (within read_ahead_bytes)
        self._resume: tuple[int, Ranges, int] | None = None  # (epoch, remaining, skip) from load_state_dict
        self._cursor: dict | None = None  # where the epoch being served stands

    def _window(self, window_chunks: int | None) -> int:
        store = self.dataset.store
        chunk_bytes = store.chunk_size * max(1, sum(f.sample_nbytes for f in store.fields.values()))
        num_chunks = max(1, store.num_chunks(self.dataset.split))
        if window_chunks is None:  # the whole split as one window if it fits, else two windows in budget
            if num_chunks * chunk_bytes <= self.read_ahead_bytes:
                return num_chunks
            return max(1, self.read_ahead_bytes // (2 * chunk_bytes))
        if not isinstance(window_chunks, int) or isinstance(window_chunks, bool) or window_chunks < 1:
            raise ValueError(f"window_chunks must be an int >= 1, got {window_chunks!r}")
        window = min(window_chunks, num_chunks)
        need = (1 if window == num_chunks else 2) * window * chunk_bytes
        if need > self.read_ahead_bytes:
            raise ValueError(
                f"window_chunks={window_chunks} needs {need / 2**20:.0f} MiB (this window and the next), "
                f"above read_ahead_bytes={self.read_ahead_bytes / 2**20:.0f} MiB"
            )
        return window

    # --------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (each iteration otherwise moves to the next)."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._epoch

    def _own_order(self) -> bool:
        return self._torch is None and self.sampler is None and self.batch_sampler is None

    def _segment(self, epoch: int) -> tuple[Ranges, int]:
        """``(remaining, skip)`` of ``epoch``: positions of its sequence to share out among the
        ranks, and how many of its share each rank has served already (all and 0, unless resumed)."""
        if self._resume is not None and self._resume[0] == epoch:
            return self._resume[1], self._resume[2]
        return [(0, len(self.dataset))], 0

    def __len__(self) -> int:
        if self._torch is not None:
            return len(self._torch)
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        if self.sampler is not None:
            n = len(self.sampler)
        else:
            remaining, skip = self._segment(self._epoch)
            n = max(0, share_size(total(remaining), self.world_size, self.drop_last) - skip)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --------------------------------------------------------------- state
    def _order_settings(self) -> dict:
        if not self._own_order():
            raise ValueError(
                "state_dict() needs the loader's own order over a FlashDataset or a store split; with a "
                "custom sampler, batch_sampler, collate_fn or another dataset, save that order yourself"
            )
        return {
            "data": fingerprint(self.dataset),
            "num_samples": len(self.dataset),
            "shuffle": self.shuffle,
            "window_chunks": self.window_chunks,
        }

    def state_dict(self) -> dict:
        """Where the loader stands, as a small JSON-serializable dict (any rank's describes all)."""
        order = self._order_settings()
        cursor = self._cursor or self._new_cursor(self._epoch)
        share = share_size(total(cursor["remaining"]), self.world_size, self.drop_last)
        served = min(share, cursor["skip"] + cursor["batches"] * self.batch_size)
        return make_state(
            order,
            seed=self.seed,
            epoch=cursor["epoch"],
            remaining=cursor["remaining"],
            world_size=self.world_size,
            drop_last=self.drop_last,
            served=served,
        )

    def _new_cursor(self, epoch: int) -> dict:
        remaining, skip = self._segment(epoch)
        return {"epoch": epoch, "remaining": remaining, "skip": skip, "batches": 0}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration serves the rest of its epoch, on this
        loader's world size; the seed is the saved one. Refuses a state of other data or settings."""
        seed, epoch, remaining, skip = resume_point(state, self._order_settings(), self.world_size, self.drop_last)
        self.seed, self._epoch, self._resume, self._cursor = seed, epoch, (epoch, remaining, skip), None

    # --------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Any]:
        epoch, self._epoch = self._epoch, self._epoch + 1
        if self._torch is not None:
            batches: Iterator[Any] = iter(self._torch)
        else:
            cursor = self._new_cursor(epoch)
            self._resume = None
            structure = self.dataset.structure
            batches = (
                rebuild(structure, b, list) for b in self._cpu_batches(epoch, cursor["remaining"], cursor["skip"])
            )
        if self.device is not None:
            batches = DeviceTransfer(self.device).stream(batches)
        if self.transform is not None:
            batches = (_apply_to_features(self.transform, b) for b in batches)
        if not self._own_order():
            return batches
        self._cursor = cursor
        return self._counted(batches, cursor)

    def _counted(self, batches: Iterator[Any], cursor: dict) -> Iterator[Any]:
        """Yield ``batches``, keeping :meth:`state_dict`'s ``cursor`` on the last one handed out."""
        for batch in batches:
            cursor["batches"] += 1
            yield batch
        if self._cursor is cursor:  # the epoch is over: a state now starts the next one
            self._cursor = None

    def _cpu_batches(self, epoch: int, remaining: Ranges, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        data, pin = self.dataset, self.pin_memory
        index_batches = self._sampler_batches()
        if index_batches is not None:
            if isinstance(data, FlashDataset):
                return memory_batches(data, index_batches, pin)
            return sampled_chunk_batches(data, index_batches, cache_bytes=self.read_ahead_bytes, pin_memory=pin)
        share = rank_share(remaining, self.rank, self.world_size, self.drop_last)
        share = take(share, skip, total(share))
        if isinstance(data, FlashDataset):
            plan = memory_plan(len(data), shuffle=self.shuffle, seed=self.seed, epoch=epoch)
            return planned_memory_batches(data, plan, schedule(plan, share, self.batch_size, self.drop_last), pin)
        store = data.store
        chunk_rows = [
            b - a for a, b in (store.chunk_bounds(data.split, c) for c in range(store.num_chunks(data.split)))
        ]
        plan = plan_epoch(chunk_rows, window=self.window_chunks, shuffle=self.shuffle, seed=self.seed, epoch=epoch)
        return self._with_reader(
            lambda reader: planned_chunk_batches(
                data,
                plan,
                schedule(plan, share, self.batch_size, self.drop_last),
                reader=reader,
                ahead=1,
                timeout=self.timeout,
                pin_memory=pin,
            )
        )

    def _with_reader(self, source: Callable[[ThreadReader], Iterator]) -> Iterator:
        """Run ``source`` with this epoch's reader: worker processes when ``num_workers > 0``
        (kept across epochs with ``persistent_workers``), else reading threads."""
        reader = self._reader or make_reader(
            self.dataset.store, self.num_workers, self.multiprocessing_context, self.worker_init_fn, self._spare
        )
        if self.persistent_workers:
            self._reader = reader
        try:
            yield from source(reader)
        finally:
            if not self.persistent_workers:
                reader.close()

    def _sampler_batches(self) -> Iterable[Sequence[int]] | None:
        """Batches of indices from a user's sampler or batch sampler; None: the loader's own order."""
        if self.batch_sampler is not None:
            return self.batch_sampler
        if self.sampler is not None:
            return BatchSampler(self.sampler, self.batch_size, self.drop_last)
        return None

    def close(self) -> None:
        """Stop persistent worker processes (iterators running now stop on their own)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._spare.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _apply_to_features(transform: Callable, batch: Any) -> Any:
    if isinstance(batch, list) and batch:
        return [transform(batch[0]), *batch[1:]]
    if isinstance(batch, tuple) and batch:
        return (transform(batch[0]), *batch[1:])
    return transform(batch)


def _check_arguments(batch_size, shuffle, sampler, batch_sampler, drop_last) -> None:
    """The argument rules of torch's DataLoader, with its messages."""
    if sampler is not None and shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    if batch_sampler is not None:
        if batch_size != 1 or shuffle or sampler is not None or drop_last:
            raise ValueError(
                "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last"
            )
    elif not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
