"""Convert any map-style PyTorch dataset into a chunked store on disk, or into RAM.

Conversion streams: samples are read in blocks (in parallel with ``num_workers``), gathered into
one chunk buffer per field and written chunk by chunk, so memory stays at a few chunks whatever
the dataset's size. The store is written beside ``output_dir`` and renamed into place when
complete; a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from datalflash.convert.ranks import conversion_ranks, convert_across_ranks, owner
from datalflash.convert.samples import BlockReader, block_size, infer_schema
from datalflash.errors import BackendError, ConversionError, StoreExistsError
from datalflash.format.manifest import MANIFEST_NAME, Manifest, SplitInfo, allocate
from datalflash.format.structure import is_valid_field_name
from datalflash.store.registry import get_backend
from datalflash.store.verify import VerifyReport, verify_store
from datalflash.version import __version__

if TYPE_CHECKING:
    from datalflash.loading.memory import FlashDataset

DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_sizes(num_samples: int, split_ratios: Mapping[str, float]) -> dict[str, int]:
    """Samples per split: boundaries at ``round(cumulative ratio * n)``, so sizes sum to ``n``."""
    if not isinstance(split_ratios, Mapping) or not split_ratios:
        raise ConversionError(f"split_ratios must be a non-empty dict of name -> ratio, got {split_ratios!r}")
    for name, ratio in split_ratios.items():
        if not is_valid_field_name(name):
            raise ConversionError(f"split name {name!r} is not allowed (letters, digits, '_', '-', '.')")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
            raise ConversionError(f"split ratio of {name!r} must be a finite number >= 0, got {ratio!r}")
    total = sum(split_ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ConversionError(f"split ratios must sum to 1, got {total:g} from {dict(split_ratios)}")
    sizes, cumulative, previous = {}, 0.0, 0
    for name, ratio in split_ratios.items():
        cumulative += ratio
        boundary = min(num_samples, round(cumulative * num_samples))
        sizes[name] = boundary - previous
        previous = boundary
    sizes[name] += num_samples - previous  # float rounding never loses a sample
    return sizes


def _dataset_length(dataset: Any) -> int:
    try:
        n = len(dataset)
    except TypeError:
        raise ConversionError(
            f"{type(dataset).__name__} has no __len__; conversion needs a map-style dataset"
        ) from None
    if n == 0:
        raise ConversionError(f"{type(dataset).__name__} is empty: nothing to convert")
    return n


def _first_sample(dataset: Any, index: int) -> Any:
    try:
        return dataset[index]
    except Exception as e:
        raise ConversionError(f"reading sample {index} failed: {type(e).__name__}: {e}") from e


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists():
        return
    if not overwrite:
        raise StoreExistsError(f"{output_dir} already exists; pass overwrite=True to replace it")
    if not output_dir.is_dir() or not ((output_dir / MANIFEST_NAME).is_file() or not any(output_dir.iterdir())):
        raise StoreExistsError(f"{output_dir} exists and is not a datalflash store; refusing to overwrite it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_leftovers(output_dir: Path) -> None:
    """Clean what a killed conversion into ``output_dir`` left beside it, saying so: staging
    directories of dead processes are removed; an old store set aside for replacement is put
    back if the new one never arrived, else removed."""
    for leftover in sorted(output_dir.parent.glob(f".{output_dir.name}.*-*")):
        kind, _, rest = leftover.name[len(output_dir.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not output_dir.exists() and (leftover / MANIFEST_NAME).is_file():
            os.rename(leftover, output_dir)
            warnings.warn(f"restored the previous store {output_dir} from {leftover.name} (an interrupted conversion)")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            warnings.warn(f"removed {leftover}, left by an interrupted conversion into {output_dir}")


def _staging(output_dir: Path) -> Path:
    """A new staging directory name beside ``output_dir`` (its parent created)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _publish(staging: Path, output_dir: Path) -> None:
    """Rename the finished store into place, replacing an old store only once the new one is whole."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(output_dir, old)
    os.rename(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class DatasetConverter:
    """Turn a PyTorch dataset into a chunked store (:meth:`create_chunked_dataset`) or into an
    in-memory :class:`~datalflash.core.FlashDataset` (:meth:`from_pytorch_dataset`)."""

    @staticmethod
    def create_chunked_dataset(
        pytorch_dataset: Dataset,
        output_dir: str | os.PathLike,
        chunk_size: int = 10000,
        split_ratios: Mapping[str, float] | None = None,
        shuffle: bool = True,
        *,
        seed: int = 0,
        backend: str = "zarr",
        compression: Any = "default",
        num_workers: int = 0,
        overwrite: bool = False,
        progress: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Path:
        """Write ``pytorch_dataset`` as a chunked store at ``output_dir``; returns its path.

        Samples are permuted with ``seed`` when ``shuffle`` and cut into splits by
        ``split_ratios`` (default 80/10/10 train/val/test); each split is stored in chunks of
        ``chunk_size`` samples with ``backend`` (``"zarr"``, ``"hdf5"``, ``"memmap"`` or a
        registered third-party id) and its ``compression``: a name (zarr: ``"lz4"``, ``"zstd"``,
        ``"none"``; hdf5: ``"none"``, ``"gzip"``, ``"lzf"``) or the backend's options in full,
        as a store's manifest lists them (``{"compression": "zstd", "clevel": 1}``,
        ``{"compression": "gzip", "level": 6}``).

        Under ``torch.distributed`` (or with ``rank`` / ``world_size``), each rank writes its
        share of the chunks and rank 0 publishes the store, which is the one a single process
        would write (see :mod:`datalflash.convert.ranks`); every rank must call this. To convert
        on one process of a distributed job (``if rank == 0: ...``), pass ``rank=0, world_size=1``.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConversionError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConversionError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        n = _dataset_length(pytorch_dataset)
        sizes = split_sizes(n, DEFAULT_SPLITS if split_ratios is None else split_ratios)
        try:
            backend_cls = get_backend(backend)
            if isinstance(compression, Mapping):
                config = backend_cls.validate_config(compression)
            else:
                config = backend_cls.normalize_config(compression)
        except BackendError as e:
            raise ConversionError(str(e)) from None
        output_dir = Path(output_dir)
        rank, world = conversion_ranks(rank, world_size, backend)
        if world == 1:
            _recover_leftovers(output_dir)
            _check_output(output_dir, overwrite)

        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        structure, fields = infer_schema(_first_sample(pytorch_dataset, int(order[0])), int(order[0]))
        manifest = Manifest(
            backend_id=backend,
            backend_config=config,
            chunk_size=chunk_size,
            fields=fields,
            structure=structure,
            splits={name: SplitInfo(k, -(-k // chunk_size)) for name, k in sizes.items()},
            created={
                "by": f"datalflash {__version__}",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": type(pytorch_dataset).__name__,
                "num_source_samples": n,
                "shuffle": bool(shuffle),
                "seed": int(seed),
                "split_ratios": dict(DEFAULT_SPLITS if split_ratios is None else split_ratios),
            },
        )
        if world > 1:

            def prepare() -> Path:
                _recover_leftovers(output_dir)
                _check_output(output_dir, overwrite)
                return _staging(output_dir)

            convert_across_ranks(
                backend_cls,
                manifest,
                prepare,
                lambda store: _fill(store, pytorch_dataset, order, num_workers, progress and rank == 0, rank, world),
                lambda staging: _publish(staging, output_dir),
                rank,
                world,
            )
            return output_dir
        staging = _staging(output_dir)
        try:
            store = backend_cls.create(staging, manifest)
            try:
                _fill(store, pytorch_dataset, order, num_workers, progress)
            finally:
                store.close()
            store.finish()
            _publish(staging, output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return output_dir

    @staticmethod
    def verify(path: str | os.PathLike, *, progress: bool = True) -> VerifyReport:
        """Check every chunk of the store at ``path`` against its checksums (see
        :func:`datalflash.store.verify.verify_store`); the report names each bad chunk."""
        return verify_store(path, progress=progress)

    @staticmethod
    def from_pytorch_dataset(
        pytorch_dataset: Dataset, memory_optimized: bool = True, *, num_workers: int = 0
    ) -> FlashDataset:
        """Load every sample of ``pytorch_dataset`` into a :class:`~datalflash.core.FlashDataset`
        holding one contiguous tensor per field.

        With ``memory_optimized`` (the default) samples are written straight into preallocated
        tensors (peak memory = the data's size); without it, blocks are concatenated at the end
        (peak about twice that).
        """
        from datalflash.batching.tensors import tensors_from_storage
        from datalflash.loading.memory import FlashDataset

        n = _dataset_length(pytorch_dataset)
        structure, fields = infer_schema(_first_sample(pytorch_dataset, 0), 0)
        blocks = _blocks(np.arange(n), block_size(pytorch_dataset, fields, n), n)
        reader = BlockReader(pytorch_dataset, blocks, structure, fields, num_workers)
        if memory_optimized:
            storage, filled = allocate(fields, n), 0
            for block in blocks:
                filled += reader.read(block, storage, filled)
        else:
            parts = []
            for block in blocks:
                parts.append(allocate(fields, len(block)))
                reader.read(block, parts[-1])
            storage = {name: np.concatenate([p[name] for p in parts]) for name in fields}
        return FlashDataset.from_fields(tensors_from_storage(storage, fields), structure)


def _blocks(indices: np.ndarray, block: int, chunk_size: int) -> list[np.ndarray]:
    """Cut ``indices`` into read blocks of at most ``block`` samples that never straddle a chunk."""
    indices = np.asarray(indices, dtype=np.int64)
    return [
        indices[start : min(start + block, chunk_start + chunk_size)]
        for chunk_start in range(0, len(indices), chunk_size)
        for start in range(chunk_start, min(chunk_start + chunk_size, len(indices)), block)
    ]


WRITERS = 2  # chunks compressed and written at once, by threads (codecs and writes release the GIL)
PIECE_BYTES = 2 * 2**20  # rows handed to a streaming store at a time: they stay in cache from gather to write


def _fill(
    store, dataset: Dataset, order: np.ndarray, num_workers: int, progress: bool, rank: int = 0, world_size: int = 1
) -> None:
    """Read every sample in ``order`` and write each split chunk by chunk (of the chunk list,
    only those :func:`~datalflash.convert.ranks.owner` gives to ``rank``).

    Up to ``WRITERS`` threads compress and write chunks while the next one is read (a
    TensorDataset's chunks are also gathered by those threads); ``WRITERS + 1`` chunk buffers
    rotate, so a buffer is refilled only after its write finished. A store that
    :attr:`~datalflash.store.base.ChunkStore.streams_writes` gets a TensorDataset's chunks as
    small pieces instead, each gathered, checksummed and written while it is in cache.
    """
    chunk_size = store.chunk_size
    block = block_size(dataset, store.fields, chunk_size)
    chunks = []  # (split, chunk, its blocks), in the order the blocks are read
    offset = 0
    for split, info in store.splits.items():
        split_order = order[offset : offset + info.num_samples]
        offset += info.num_samples
        for chunk in range(info.num_chunks):
            rows = split_order[chunk * chunk_size : (chunk + 1) * chunk_size]
            chunks.append((split, chunk, _blocks(rows, block, chunk_size)))
    chunks = [c for k, c in enumerate(chunks) if owner(k, world_size) == rank]
    reader = BlockReader(
        dataset, [b for *_, blocks in chunks for b in blocks], store.structure, store.fields, num_workers
    )
    largest = min(chunk_size, max(info.num_samples for info in store.splits.values()))
    piece_rows = max(1, PIECE_BYTES // max(1, sum(spec.sample_nbytes for spec in store.fields.values())))
    buffers: list[dict[str, np.ndarray]] = []

    def fill(blocks: list[np.ndarray], buffer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        filled = 0
        for b in blocks:
            filled += reader.read(b, buffer, filled)
        return {name: values[:filled] for name, values in buffer.items()}

    def gather_and_write(split: str, chunk: int, blocks: list[np.ndarray], buffer: dict[str, np.ndarray]) -> None:
        store.write_chunk(split, chunk, fill(blocks, buffer))

    pending: deque = deque()
    with (
        ThreadPoolExecutor(WRITERS, thread_name_prefix="datalflash-writer") as writers,
        tqdm(
            total=sum(len(b) for *_, blocks in chunks for b in blocks),
            unit="sample",
            desc="converting",
            disable=not progress,
        ) as bar,
    ):

        def collect() -> None:  # the oldest write: its errors raise here, its samples count as done
            future, samples = pending.popleft()
            future.result()
            bar.update(samples)

        streamed = reader.vectorized and store.streams_writes
        try:
            for k, (split, chunk, blocks) in enumerate(chunks):
                while len(pending) >= WRITERS and not streamed:  # streamed writes share no buffer: all queue
                    collect()
                if streamed:
                    future = writers.submit(store.write_chunk_pieces, split, chunk, reader.pieces(blocks, piece_rows))
                elif len(blocks) == 1 and (view := reader.view(blocks[0])) is not None:
                    # an unshuffled TensorDataset chunk: written from the source
                    future = writers.submit(store.write_chunk, split, chunk, view)
                else:
                    if len(buffers) <= WRITERS:
                        buffers.append(store.allocate(largest))
                    buffer = buffers[k % (WRITERS + 1)]
                    if reader.vectorized:
                        future = writers.submit(gather_and_write, split, chunk, blocks, buffer)
                    else:  # blocks come in order from torch's DataLoader, in this thread
                        future = writers.submit(store.write_chunk, split, chunk, fill(blocks, buffer))
                pending.append((future, sum(map(len, blocks))))
            while pending:
                collect()
        finally:
            for future, _ in pending:
                future.cancel()
