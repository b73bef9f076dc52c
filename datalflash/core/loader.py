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

from datalflash.core.chunked import ChunkedDataset
from datalflash.core.dataset import FlashDataset
from datalflash.core.sources import memory_batches, planned_chunk_batches, sampled_chunk_batches
from datalflash.ordering import batch_bounds, plan_epoch, sample_order
from datalflash.structure import rebuild
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
      as many as half the read-ahead budget holds.
    * ``transform``: a function applied to each batch's features after the device transfer
      (the first element of tuple samples, the whole dict of dict samples).

    For store splits ``num_workers`` sets the number of background reading threads (at least 2);
    a FlashDataset is gathered in the calling thread, so ``num_workers``, ``prefetch_factor``,
    ``persistent_workers``, ``worker_init_fn`` and ``multiprocessing_context`` only act on the
    datasets handed to torch's DataLoader.
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
                dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn,
                self.pin_memory, drop_last, timeout, worker_init_fn,
                multiprocessing_context, generator, prefetch_factor=prefetch_factor,
                persistent_workers=persistent_workers, pin_memory_device=pin_memory_device,
                in_order=in_order,
            )
        else:
            _check_arguments(batch_size, shuffle, sampler, batch_sampler, drop_last)
        flash = self._torch is None
        if seed is None and flash:  # drawn as torch draws its base seed; torch's path draws its own
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
        self.seed = seed
        self.window_chunks = self._window(window_chunks) if flash and isinstance(dataset, ChunkedDataset) else None

    def _window(self, window_chunks: int | None) -> int:
        store = self.dataset.store
        chunk_bytes = store.chunk_size * max(1, sum(f.sample_nbytes for f in store.fields.values()))
        if window_chunks is None:
            return max(1, self.read_ahead_bytes // (2 * chunk_bytes))
        if window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1, got {window_chunks}")
        if 2 * window_chunks * chunk_bytes > self.read_ahead_bytes:
            raise ValueError(
                f"window_chunks={window_chunks} needs {2 * window_chunks * chunk_bytes / 2**20:.0f} MiB "
                f"(this window and the next), above read_ahead_bytes={self.read_ahead_bytes / 2**20:.0f} MiB"
            )
        return window_chunks

    # --------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (each iteration otherwise moves to the next)."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._epoch

    def __len__(self) -> int:
        if self._torch is not None:
            return len(self._torch)
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Any]:
        epoch, self._epoch = self._epoch, self._epoch + 1
        if self._torch is not None:
            batches: Iterator[Any] = iter(self._torch)
        else:
            structure = self.dataset.structure
            batches = (rebuild(structure, b, list) for b in self._cpu_batches(epoch))
        if self.device is not None:
            batches = DeviceTransfer(self.device).stream(batches)
        if self.transform is not None:
            batches = (_apply_to_features(self.transform, b) for b in batches)
        return batches

    def _cpu_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        data, pin = self.dataset, self.pin_memory
        index_batches = self._index_batches(epoch)
        if isinstance(data, FlashDataset):
            own_plan = self.sampler is None and self.batch_sampler is None
            return memory_batches(data, index_batches, pin, checked=own_plan)
        if index_batches is not None:
            return sampled_chunk_batches(data, index_batches, cache_bytes=self.read_ahead_bytes, pin_memory=pin)
        store = data.store
        chunk_rows = [b - a for a, b in (store.chunk_bounds(data.split, c) for c in range(store.num_chunks(data.split)))]
        plan = plan_epoch(chunk_rows, window=self.window_chunks, shuffle=self.shuffle, seed=self.seed, epoch=epoch)
        return planned_chunk_batches(
            data, plan, batch_size=self.batch_size, drop_last=self.drop_last, ahead=1,
            threads=max(2, self.num_workers), timeout=self.timeout, pin_memory=pin,
        )

    def _index_batches(self, epoch: int) -> Iterable[Sequence[int]] | None:
        """Batches of indices from a sampler, or for RAM data; None: a store split's own plan."""
        if self.batch_sampler is not None:
            return self.batch_sampler
        if self.sampler is not None:
            return BatchSampler(self.sampler, self.batch_size, self.drop_last)
        if isinstance(self.dataset, FlashDataset):
            order = torch.from_numpy(sample_order(len(self.dataset), shuffle=self.shuffle, seed=self.seed, epoch=epoch))
            return (order[a:b] for a, b in batch_bounds(len(order), self.batch_size, self.drop_last))
        return None


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
