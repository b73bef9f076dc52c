"""``FlashDataLoader``: torch's DataLoader signature, five stages underneath.

store -> order -> read -> assemble -> transfer. For a :class:`FlashDataset` (RAM) or a
:class:`ChunkedDataset` (a split of a chunk store) the loader plans each epoch itself, reads
whole chunks ahead in background threads and gathers each batch in one vectorized call per field;
a ``collate_fn`` then gets the batch's samples as torch's DataLoader would hand them over. Any
other dataset goes through ``torch.utils.data.DataLoader`` unchanged, so swapping the class in
never changes what a training script gets.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_convert

from datalflash.batching.images import ImageDecode
from datalflash.batching.ragged import Collate, collate_policies
from datalflash.batching.samples import samples_of
from datalflash.distributed import agree_seed, check_seed_can_be_agreed, draw_seed, resolve_ranks
from datalflash.format.structure import image_sizes, rebuild
from datalflash.loading.checks import check_arguments, check_worker_arguments, overrides_sample_access
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.epochs import OwnEpochs, Reading
from datalflash.loading.frameworks import accelerate_running, told_to_accelerate
from datalflash.loading.images import decoded_batches, image_policies
from datalflash.loading.memory import FlashDataset
from datalflash.loading.resume import fingerprint, make_state, resume_point
from datalflash.ordering import window_size
from datalflash.ordering.ranges import Ranges, share_size, total
from datalflash.ordering.tokens import TokenBudget
from datalflash.transfer import DeviceTransfer, map_tensors, resolve_device
from datalflash.transforms import PerSample, is_per_sample, on_field

logger = logging.getLogger("datalflash")

DEFAULT_READ_AHEAD = 512 * 2**20


class FlashDataLoader:
    """A drop-in for ``torch.utils.data.DataLoader`` that makes FlashDataset and chunk-store
    splits fast.

    Arguments up to ``in_order`` are torch's and mean what they mean there. Extra keywords:

    * ``device``: move each batch there (``non_blocking`` copies from pinned memory, issued
      ahead on a side CUDA stream).
    * ``seed``: seed of the epoch orders, each epoch's from ``(seed, epoch)`` (``None``: one
      drawn from torch's RNG or ``generator`` as each epoch starts, as torch's sampler draws it).
    * ``read_ahead_bytes``: memory for chunks read ahead of use (store splits).
    * ``window_chunks``: chunks whose samples are shuffled together (store splits); by default
      the whole split when it fits in ``read_ahead_bytes``, else as many as half of it holds
      (the window being served and the next one being read). Memory: up to two windows. A
      window holding the whole split is read in the first epoch and kept decoded for the next;
      otherwise, when the next epoch's order is known (a given ``seed``, or no shuffle), its first
      window is read while the last one is served.
    * ``transform``: a function applied to each batch's features after the device transfer
      (the first element of tuple samples, the whole dict of dict samples: the
      :mod:`datalflash.transforms` take ``field=``). torchvision's transforms (v1, v2), written
      per sample, are applied to each sample on its own (:class:`~datalflash.transforms.PerSample`).
    * ``rank``, ``world_size``: this process's share of each epoch. For a store split, by
      default taken from ``torch.distributed`` as each epoch starts (so a loader built before
      the process group, as Lightning and Accelerate scripts build them, shards once it runs;
      logged once at INFO on the ``datalflash`` logger), as streaming loaders shard. A
      FlashDataset follows torch's DataLoader: every rank gets all of it unless ``rank`` /
      ``world_size`` (or a ``DistributedSampler``) say otherwise. Every sample is served once per epoch across
      ranks (``drop_last=False`` pads with at most ``world_size - 1`` repeats, ``drop_last=True``
      leaves at most ``world_size - 1`` out before dropping each rank's short last batch), every
      rank yields the same number of batches, and each rank reads only the chunks it serves.

    For store splits, ``num_workers > 0`` reads and decodes chunks in that many worker processes
    (into shared memory; ``multiprocessing_context``, ``worker_init_fn`` and
    ``persistent_workers`` apply), ``0`` in two threads; the batches are the same either way. A
    FlashDataset is gathered in the calling thread. A user's ``sampler`` / ``batch_sampler`` is
    followed as given (it shards itself, e.g. ``DistributedSampler``). Without one, ``sampler``
    and ``batch_sampler`` are the loader's own order (:class:`OwnSampler`, :class:`OwnBatchSampler`).

    ``state_dict()`` / ``load_state_dict()`` resume an epoch exactly where it stopped, on any
    world size (see :mod:`datalflash.loading.resume`).

    Ragged fields of a store (variable-length samples) are batched as ``collate`` says: a mode,
    ``"pad"`` (default: :class:`~datalflash.batching.ragged.Padded` ``(data, lengths, mask)``),
    ``"packed"`` (:class:`~datalflash.batching.ragged.Packed` ``(values, cu_seqlens,
    max_seqlen)``), ``"nested"`` (a ``torch.nested`` tensor) or ``"list"``; a
    :class:`~datalflash.batching.ragged.Collate` (or dict of its arguments: ``pad_value``,
    ``pad_to``, ``pad_multiple``, ``mask``); or ``{field: any of those}``. ``str`` fields come
    back as lists of ``str``, ``bytes`` fields as lists of uint8 tensors.

    ``max_tokens`` bounds batches by a token (element) budget of the ragged ``length_field``
    (default: the store's one ragged numeric field) instead of a sample count: a padded field's
    batch costs ``len(batch) * longest``, a packed one the sum of lengths; ``batch_size`` (or
    None) caps the samples. ``bucket_size`` sorts each shuffle window by length within groups of
    that many samples, so batches pad little. Every rank gets the same number of batches, and
    resume is exact (on the world size the state was saved with); see
    :mod:`datalflash.ordering.tokens`.
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
        collate: Any = None,
        max_tokens: int | None = None,
        bucket_size: int | None = None,
        length_field: str | None = None,
        image_size: int | tuple[int, int] | None = None,
    ):
        self.dataset = dataset
        self.batch_size = None if batch_sampler is not None else batch_size  # (as torch's: the sampler's)
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.collate_fn, self.generator, self.prefetch_factor = collate_fn, generator, prefetch_factor
        self.in_order, self.pin_memory_device = in_order, pin_memory_device
        self.shuffle = bool(shuffle)
        self.num_workers = num_workers
        self.timeout = timeout
        self.transform = PerSample(transform) if transform is not None and is_per_sample(transform) else transform
        self.read_ahead_bytes = int(read_ahead_bytes)
        self.multiprocessing_context, self.worker_init_fn = multiprocessing_context, worker_init_fn
        self.persistent_workers = persistent_workers and num_workers > 0
        self.device, self.pin_memory = resolve_device(device, pin_memory)
        self.rank, self.world_size = 0, 1  # torch's loader does not shard (a DistributedSampler does)
        self._ranks_given = True  # (else taken from torch.distributed again as each epoch starts)
        self._seed_given = seed is not None
        self._sharding_said = False
        self.window_chunks: int | None = None
        self._seed: int | None = None if seed is None else int(seed)
        self._seed_agreed = True
        self._seed_epoch: int | None = None  # the epoch a drawn seed was drawn for
        self._resumed: tuple[int, int, int] | None = None  # (epoch, seed, order epoch) of a loaded state
        self._epoch = 0
        self._resume: tuple[int, Ranges, int] | None = None  # (epoch, remaining, skip) from load_state_dict
        self._cursor: dict | None = None  # where the epoch being served stands
        self._torch: DataLoader | None = None  # torch's own loader, where this one hands over to it
        self._unbatched = False  # batch_size=None: samples one at a time, as torch gives them
        self._own: OwnEpochs | None = None  # else the loader's own stages
        self._images: dict[str, ImageDecode] = {}  # how image fields are decoded (own stages)
        if isinstance(dataset, (FlashDataset, ChunkedDataset)) and not overrides_sample_access(dataset):
            self._unbatched = batch_size is None and batch_sampler is None and max_tokens is None
            if self._unbatched and drop_last:
                raise ValueError(
                    "batch_size=None option disables auto-batching and is mutually exclusive with drop_last"
                )
            check_arguments(
                batch_size if batch_size is not None else 1,
                shuffle,
                sampler,
                batch_sampler,
                drop_last,
                num_workers,
            )
            check_worker_arguments(num_workers, timeout, prefetch_factor, persistent_workers, multiprocessing_context)
            if shuffle and sampler is None and batch_sampler is None and len(dataset) == 0:
                raise ValueError("num_samples should be a positive integer value, but got num_samples=0")
            if isinstance(dataset, FlashDataset) and num_workers > 0:
                raise ValueError(
                    f"num_workers={num_workers}: a FlashDataset's batches are one gather from memory in this "
                    "process; worker processes would only copy them between processes. Use num_workers=0 "
                    "(store splits, ChunkedDataset, read in workers)"
                )
            if collate_fn is not None and collate is not None:
                raise ValueError(
                    "collate= shapes the ragged fields of batches the loader collates itself; with a "
                    "collate_fn, collate_fn makes the batches (it gets each sample as the dataset gives it)"
                )
            if isinstance(dataset, ChunkedDataset):
                self._images, collate = image_policies(dataset, collate, image_size, self.shuffle)
            elif image_size is not None:
                raise ValueError("image_size= decodes the image fields of a store split; a FlashDataset has none")
            if self._images and (collate_fn is not None or self._unbatched) and image_size is not None:
                raise ValueError(
                    "image_size= decodes images into the batches the loader collates itself; with a collate_fn "
                    "(or batch_size=None) each sample's image comes as a PIL image, as torchvision's ImageFolder "
                    "gives it"
                )
            policies = collate_policies(collate, dataset.store.fields if isinstance(dataset, ChunkedDataset) else {})
            tokens, length_field = _token_budget(dataset, policies, max_tokens, batch_size, bucket_size, length_field)
            if tokens is not None and (sampler is not None or batch_sampler is not None):
                raise ValueError("max_tokens cuts the loader's own order; it does not apply to a sampler's batches")
            if isinstance(dataset, FlashDataset) and rank is None and world_size is None:
                pass  # as torch's loader: every rank everything, unless asked (or a DistributedSampler)
            else:
                self.rank, self.world_size = resolve_ranks(rank, world_size)
                self._ranks_given = rank is not None
            check_seed_can_be_agreed(seed if self.shuffle else 0, self.world_size)  # (unshuffled: none drawn)
            if isinstance(dataset, ChunkedDataset):
                store = dataset.store
                chunks, chunk_nbytes = store.num_chunks(dataset.split), store.manifest.chunk_nbytes
                self.window_chunks = window_size(chunks, chunk_nbytes, self.read_ahead_bytes, window_chunks)
                if self.window_chunks < chunks and 2 * chunk_nbytes > self.read_ahead_bytes:
                    warnings.warn(
                        f"{dataset.split!r}: a chunk holds {chunk_nbytes / 2**20:.0f} MiB, so a chunk and the next "
                        f"exceed read_ahead_bytes={self.read_ahead_bytes / 2**20:.0f} MiB; reading will hold "
                        f"{2 * chunk_nbytes / 2**20:.0f} MiB. Raise read_ahead_bytes, or convert with a smaller "
                        "chunk_size",
                        stacklevel=2,
                    )
            reading = Reading(
                num_workers,
                multiprocessing_context,
                worker_init_fn,
                self.persistent_workers,
                timeout,
                self.read_ahead_bytes,
            )
            self._own = OwnEpochs(
                dataset,
                batch_size or 1,
                self.shuffle,
                drop_last,
                sampler,
                batch_sampler,
                self.rank,
                self.world_size,
                self.window_chunks,
                reading,
                None if collate_fn is not None or self._unbatched else policies,  # (None: ragged rows kept)
                tokens,
                length_field,
                unbatched=self._unbatched,
            )
        else:
            if max_tokens is not None or bucket_size is not None:
                raise ValueError("max_tokens and bucket_size batch the ragged fields of a store split (no collate_fn)")
            if image_size is not None:
                raise ValueError(
                    "image_size= decodes the image fields of a store split read by the loader's own stages"
                )
            if collate is not None:
                raise ValueError(
                    "collate= batches the ragged fields of a store split read by the loader's own stages; "
                    "with a collate_fn (or another dataset) the batches are collate_fn's to make"
                )
            torch_options = {"in_order": in_order} if not in_order else {}  # (torch >= 2.6 knows in_order)
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
                **torch_options,
            )
            self.sampler, self.batch_sampler = self._torch.sampler, self._torch.batch_sampler  # (torch's own)
        if self._own is not None and self._own.own_order:
            self.sampler = OwnSampler(self)
            if not self._unbatched:
                self.batch_sampler = OwnBatchSampler(self)
        self._frozen = True

    FROZEN = ("batch_size", "batch_sampler", "sampler", "drop_last", "dataset", "persistent_workers")
    """Attributes torch's DataLoader refuses to have set after it is built; so does this loader."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.FROZEN and self.__dict__.get("_frozen", False):
            raise ValueError(f"{name} attribute should not be set after {type(self).__name__} is initialized")
        super().__setattr__(name, value)

    @property
    def seed(self) -> int | None:
        """The seed of the epoch being served (else of the next one): the one given, or one drawn
        for that epoch (see :meth:`_order`). ``None`` where the loader hands over to torch's
        DataLoader without a seed."""
        if self._own is None:
            return self._seed
        return self._order(self._cursor["epoch"] if self._cursor is not None else self._epoch)[0]

    def _order(self, epoch: int) -> tuple[int, int]:
        """``(seed, order epoch)`` that decide ``epoch``'s order (and image crops). With a given
        ``seed``: that seed and the epoch, so the same seed gives the same epochs anywhere. With
        ``seed=None``, as torch's sampler: a seed drawn from ``generator`` (or torch's RNG) when
        the epoch starts or is first asked about (never when the loader is built; nothing drawn
        without ``shuffle``), and order epoch 0, so re-seeding the generator before an epoch
        reproduces it; rank 0's on every rank (a broadcast). A loaded state's epoch keeps its own."""
        if self._resumed is not None and self._resumed[0] == epoch:
            return self._resumed[1], self._resumed[2]
        if self._seed_given:
            return int(self._seed), epoch  # type: ignore[arg-type]  # (given: an int)
        if self._seed is None or self._seed_epoch != epoch:
            self._seed = draw_seed(self.generator) if self.shuffle else 0
            self._seed_epoch, self._seed_agreed = epoch, not self.shuffle  # (nothing drawn: nothing to agree)
        if not self._seed_agreed:
            self._seed, self._seed_agreed = agree_seed(self._seed, self.world_size), True
        return self._seed, 0

    def _known_order(self, epoch: int) -> tuple[int, int] | None:
        """``(order epoch, seed)`` of ``epoch`` when known without drawing a seed (a given seed,
        or no shuffle); None when it is drawn as that epoch starts."""
        if self._seed_given:
            return epoch, int(self._seed)  # type: ignore[arg-type]  # (given: an int)
        return (0, 0) if not self.shuffle else None

    # --------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (each iteration otherwise moves to the next)."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._epoch

    def _segment(self, epoch: int) -> tuple[Ranges, int]:
        """``(remaining, skip)`` of ``epoch``: positions of its sequence to share out among the
        ranks, and how many of its share each rank has served already (all and 0, unless resumed)."""
        if self._resume is not None and self._resume[0] == epoch:
            return self._resume[1], self._resume[2]
        return [(0, len(self._own.data) if self._own is not None else 0)], 0

    def __len__(self) -> int:
        if self._own is None:
            return len(self._torch)  # type: ignore[arg-type]  # (one of the two is set)
        self._follow_ranks()
        remaining, skip = self._segment(self._epoch)
        if self._own.tokens is not None:
            seed, order_epoch = self._order(self._epoch)
            return self._own.num_batches(remaining, skip, order_epoch, seed)
        return self._own.num_batches(remaining, skip)

    # --------------------------------------------------------------- state
    def _planned(self) -> OwnEpochs:
        """The loader's own stages, when it serves its own order."""
        if self._own is None or not self._own.own_order:
            raise ValueError(
                "state_dict() needs the loader's own order over a FlashDataset or a store split; with a "
                "custom sampler, batch_sampler or another dataset, save that order yourself"
            )
        return self._own

    def _order_settings(self) -> dict:
        data = self._planned().data
        own = self._planned()
        tokens = own.tokens
        return {
            "data": fingerprint(data),
            "num_samples": len(data),
            "shuffle": self.shuffle,
            "window_chunks": self.window_chunks,
            "tokens": None if tokens is None else [tokens.max_tokens, tokens.padded, tokens.max_samples, tokens.bucket],
        }

    def state_dict(self) -> dict:
        """Where the loader stands, as a small JSON-serializable dict (any rank's describes all)."""
        self._follow_ranks()
        order = self._order_settings()
        cursor = self._cursor or self._new_cursor(self._epoch)
        share = share_size(total(cursor["remaining"]), self.world_size, self.drop_last)
        if self._planned().tokens is not None:  # (token budgets: batches served, not positions)
            served = cursor["skip"] + cursor["batches"]
        else:
            served = min(share, cursor["skip"] + cursor["batches"] * self._planned().batch_size)
        seed, order_epoch = self._order(cursor["epoch"])
        return make_state(
            order,
            seed=seed,
            seed_per_epoch=order_epoch != cursor["epoch"] or not self._seed_given,
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
        self._follow_ranks()
        settings = self._order_settings()
        if settings["tokens"] is not None and (state.get("world_size"), state.get("drop_last")) != (
            self.world_size,
            self.drop_last,
        ):
            raise ValueError(
                f"a token-budget state resumes on the world size and drop_last it was saved with "
                f"({state.get('world_size')}, {state.get('drop_last')}); this loader has "
                f"({self.world_size}, {self.drop_last})"
            )
        seed, per_epoch, epoch, remaining, skip = resume_point(state, settings, self.world_size, self.drop_last)
        self._resumed = (epoch, seed, 0 if per_epoch else epoch)
        if not per_epoch:  # (a loader's own seed: it orders the following epochs too)
            self._seed, self._seed_given = seed, True
        self._epoch, self._resume, self._cursor = epoch, (epoch, remaining, skip), None

    # --------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Any]:
        epoch, self._epoch = self._epoch, self._epoch + 1
        own, cursor = self._own, None
        remaining: Ranges = []
        skip = 0
        if own is None:
            batches: Iterator[Any] = iter(self._torch)  # type: ignore[arg-type]  # (one of the two is set)
        else:
            self._follow_ranks(starting=True)
            self._say_sharding()
            if own.own_order:
                cursor = self._new_cursor(epoch)
                remaining, skip = cursor["remaining"], cursor["skip"]
            self._resume = None
            if self._resumed is not None and self._resumed[0] != epoch:
                self._resumed = None  # (past the resumed epoch: epochs are ordered as usual)
            (seed, order_epoch), structure = self._order(epoch), own.data.structure
            upcoming = self._known_order(epoch + 1) if own.own_order else None
            if self.collate_fn is None and not self._unbatched:
                cpu = own.batches(order_epoch, seed, remaining, skip, self.pin_memory, upcoming)
                if self._images:
                    cpu = self._decoded(cpu, seed, order_epoch)
                batches = (rebuild(structure, b, list) for b in cpu)
            else:  # (samples sliced from the gathered rows, handed over as torch hands them over)
                cpu = own.batches(order_epoch, seed, remaining, skip, False, upcoming)
                convert: Callable = self.collate_fn or default_convert  # (default_convert: unbatched only)
                if self._unbatched:  # (each item converted as torch converts dataset[item])
                    batches = (convert(self._unbatched_item(b, structure)) for b in cpu)
                else:
                    batches = (convert(samples_of(b, structure)) for b in cpu)
                if self.pin_memory:
                    batches = (map_tensors(torch.Tensor.pin_memory, b) for b in batches)
        if self.device is not None:
            batches = DeviceTransfer(self.device).stream(batches)
        if self.transform is not None:
            transform = self.transform
            batches = (_apply_to_features(transform, b) for b in batches)
        if cursor is not None:
            self._cursor = cursor
            batches = self._counted(batches, cursor)
        count = self._epoch_batches(epoch, remaining, skip)
        if accelerate_running():
            batches = self._told_to_accelerate(batches, count, remaining, skip)
        return EpochIterator(batches, count)

    def _samples_this_epoch(self) -> int:
        """How many samples this rank serves of the next epoch (arithmetic, but for token budgets)."""
        own = self._planned()
        if own.tokens is not None:
            return sum(len(batch) for batch in self._index_batches())
        self._follow_ranks()
        remaining, skip = self._segment(self._epoch)
        n = max(0, share_size(total(remaining), self.world_size, self.drop_last) - skip)
        return n - n % own.batch_size if self.drop_last else n

    def _unbatched_item(self, batch: dict, structure: dict) -> Any:
        """``batch_size=None``: what ``dataset[item]`` gives for a sampler's item, one sample for
        an index; for a list of indices, the batch shaped as ``default_collate`` shapes it (as a
        FlashDataset indexed by a list gives it)."""
        if self._own is not None and self._own.items_are_batches:
            return rebuild(structure, batch, list)
        return samples_of(batch, structure)[0]

    def _index_batches(self) -> Iterator[list[int]]:
        """The sample indices of each batch of the next epoch (or the rest of a loaded state's)."""
        self._follow_ranks()
        remaining, skip = self._segment(self._epoch)
        seed, order_epoch = self._order(self._epoch)
        return self._planned().index_batches(order_epoch, seed, remaining, skip)

    def _decoded(self, cpu: Iterator[Any], seed: int, epoch: int) -> Iterator[Any]:
        """CPU batches with their image fields decoded (see :mod:`datalflash.loading.images`)."""
        dataset = self.dataset
        if not isinstance(dataset, ChunkedDataset):
            raise TypeError("only a store split has image fields")
        return decoded_batches(
            cpu,
            self._images,
            image_sizes(dataset.store.structure),
            seed=seed,
            epoch=epoch,
            where=f"{dataset.store.path}: split {dataset.split!r}",
            pin_memory=self.pin_memory,
            device=self.device,
            context=self.multiprocessing_context,
            timeout=self.timeout,
        )

    def _epoch_batches(self, epoch: int, remaining: Ranges, skip: int) -> int | None:
        """How many batches this rank serves of ``epoch`` from here (None: a sampler or dataset
        without a length)."""
        try:
            if self._own is None:
                return len(self._torch)  # type: ignore[arg-type]  # (one of the two is set)
            seed, order_epoch = self._order(epoch)
            return self._own.num_batches(remaining, skip, order_epoch, seed)
        except TypeError:
            return None

    def _told_to_accelerate(
        self, batches: Iterator[Any], count: int | None, remaining: Ranges, skip: int
    ) -> Iterator[Any]:
        """``batches`` registered with Accelerate's gradient state (see :mod:`.frameworks`)."""
        own = self._own
        samples = None  # (padding laid out as Accelerate's own loaders lay it out: the loader's own order)
        if own is not None and own.own_order and own.tokens is None and not self.drop_last:
            samples = max(0, total(remaining) - self.world_size * skip)  # (what the ranks serve from here)
        batch_size = own.batch_size if own is not None else (self.batch_size or 1)
        return told_to_accelerate(batches, count, samples, batch_size * self.world_size)

    @property
    def padded_repeats(self) -> int:
        """How many samples at the end of this rank's epoch (the one in progress, else the next)
        are padded repeats of samples other ranks serve: with several ranks and
        ``drop_last=False`` the ranks' shares are evened out so; drop them from the last batch
        to count each sample once in an evaluation. 0 on a single rank, with ``drop_last``, a
        sampler, or token budgets (Accelerate's ``gather_for_metrics`` is told on its own)."""
        own = self._own
        if own is None or not own.own_order or own.tokens is not None or self.drop_last:
            return 0
        self._follow_ranks()
        cursor = self._cursor or self._new_cursor(self._epoch)
        count = total(cursor["remaining"])
        share = share_size(count, self.world_size, False)
        return max(0, (self.rank + 1) * share - max(self.rank * share, count))

    def _follow_ranks(self, starting: bool = False) -> None:
        """Take rank and world size from ``torch.distributed`` again, where they were not given:
        a loader built before the process group starts (as Lightning and Accelerate users build
        them) shards once it has, rather than serving every rank everything. Not while an epoch
        is being served, unless a new one is ``starting``."""
        if self._own is None or self._ranks_given or (self._cursor is not None and not starting):
            return
        rank, world_size = resolve_ranks(None, None)
        if (rank, world_size) == (self.rank, self.world_size):
            return
        self.rank, self.world_size = rank, world_size
        self._own.set_ranks(rank, world_size)
        if not self._seed_given and self._resume is None and self.shuffle:  # (a drawn seed: rank 0's)
            self._seed_agreed = False

    def _say_sharding(self) -> None:
        """Log once that this loader serves one rank's share of each epoch."""
        if self.world_size > 1 and not self._sharding_said:
            self._sharding_said = True
            logger.info(
                "datalflash: rank %d of %d serves its share of each epoch (%s)",
                self.rank,
                self.world_size,
                "as given" if self._ranks_given else "from torch.distributed",
            )

    def _counted(self, batches: Iterator[Any], cursor: dict) -> Iterator[Any]:
        """Yield ``batches``, keeping :meth:`state_dict`'s ``cursor`` on the last one handed out."""
        for batch in batches:
            cursor["batches"] += 1
            yield batch
        if self._cursor is cursor:  # the epoch is over: a state now starts the next one
            self._cursor = None

    def close(self) -> None:
        """Stop persistent worker processes (iterators running now stop on their own)."""
        if self._own is not None:
            self._own.close()

    def __del__(self, _quietly: Callable[..., Any] = contextlib.suppress) -> None:
        with _quietly(Exception):  # (bound at definition: at interpreter exit module globals may be gone)
            self.close()


class EpochIterator(Iterator[Any]):
    """An epoch's batches, with ``len()`` as torch's loader iterators have it: the batches this
    rank serves in the epoch (a TypeError where a sampler or dataset has no length)."""

    def __init__(self, batches: Iterator[Any], count: int | None):
        self._batches, self._count = batches, count

    def __next__(self) -> Any:
        return next(self._batches)

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError("this epoch's length is not known (a sampler or dataset without len())")
        return self._count

    def close(self) -> None:
        """Stop the epoch early, releasing what it holds (as a generator's ``close``)."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def _token_budget(
    dataset: Dataset,
    policies: dict[str, Collate],
    max_tokens: int | None,
    batch_size: int | None,
    bucket_size: int | None,
    length_field: str | None,
) -> tuple[TokenBudget | None, str | None]:
    """The token budget of a loader's arguments (None without ``max_tokens``), and the field
    whose lengths count; ValueError when they do not fit the dataset."""
    if max_tokens is None:
        if bucket_size is not None or length_field is not None:
            raise ValueError("bucket_size and length_field go with max_tokens")
        return None, None
    fields = dataset.store.fields if isinstance(dataset, ChunkedDataset) else {}
    ragged = [name for name, spec in fields.items() if spec.kind == "ragged"]
    if length_field is None:
        if len(ragged) != 1:
            raise ValueError(
                f"max_tokens needs length_field= to name the field whose elements count (ragged fields: {ragged})"
            )
        length_field = ragged[0]
    if length_field not in fields or not fields[length_field].ragged:
        raise ValueError(f"length_field={length_field!r} is not a ragged field of the store (ragged: {ragged})")
    padded = policies[length_field].mode == "pad"
    return TokenBudget(max_tokens, padded, batch_size, bucket_size), length_field


def _apply_to_features(transform: Callable, batch: Any) -> Any:
    """``transform`` of a batch's features: the first item of a tuple/list batch (namedtuples
    stay namedtuples), the whole of a dict or tensor batch."""
    if isinstance(batch, (tuple, list)) and batch:
        return on_field(batch, 0, transform, "transform")
    return transform(batch)


class _OwnOrder:
    """What reads a loader's own order (held weakly: the loader owns its samplers)."""

    def __init__(self, loader: FlashDataLoader):
        self._loader = weakref.ref(loader)

    def _owner(self) -> FlashDataLoader:
        loader = self._loader()
        if loader is None:
            raise RuntimeError("the FlashDataLoader of this sampler is gone")
        return loader


class OwnSampler(_OwnOrder, Sampler[int]):
    """A loader's own order as torch's ``sampler`` (``loader.sampler``): the sample indices of
    the loader's next epoch (this rank's share), one by one, reading nothing."""

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self._owner()._index_batches() for i in batch)

    def __len__(self) -> int:
        return self._owner()._samples_this_epoch()


class OwnBatchSampler(_OwnOrder, Sampler[list[int]]):
    """A loader's own order as torch's ``batch_sampler`` (``loader.batch_sampler``): iterating it
    gives the sample indices of each batch of the loader's next epoch (this rank's share),
    reading nothing; ``len()`` is the loader's. What rebuilds a torch DataLoader from a loader's
    ``dataset`` and ``batch_sampler`` (Accelerate's ``skip_first_batches``) serves the same
    batches, at torch's DataLoader's speed and without the loader's device transfer."""

    def __iter__(self) -> Iterator[list[int]]:
        return self._owner()._index_batches()

    def __len__(self) -> int:
        return len(self._owner())
