"""``DatasetConverter``: any map-style PyTorch dataset into a chunked store on disk, or into RAM.

Conversion streams: samples are read in blocks (in parallel with ``num_workers``), gathered into
one chunk buffer per field and written chunk by chunk, so memory stays at a few chunks whatever
the dataset's size (:mod:`~datalflash.convert.pipeline`). The store is written beside
``output_dir`` and renamed into place when complete (:mod:`~datalflash.convert.publish`); a failed
conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from datalflash.arguments import require_int
from datalflash.batching.tensors import tensors_from_storage
from datalflash.convert import publish as publishing
from datalflash.convert.images import ImageFiles, image_source
from datalflash.convert.layout import DEFAULT_SPLITS, default_chunk_size, read_blocks, source_order, split_sizes
from datalflash.convert.pipeline import fill_store
from datalflash.convert.ranks import conversion_ranks, convert_across_ranks
from datalflash.convert.samples import PROBES, BlockReader, ShapeVariesError, block_size, infer_schema, with_classes
from datalflash.convert.sources import as_dataset
from datalflash.errors import BackendError, ConversionError, DataLFlashError, StoreWriteError
from datalflash.format.manifest import MAX_CHUNKS, FieldSpec, Manifest, SplitInfo, allocate, sample_nbytes
from datalflash.loading.memory import FlashDataset
from datalflash.store.base import ChunkStore
from datalflash.store.registry import get_backend
from datalflash.store.verify import VerifyReport, verify_store
from datalflash.version import __version__

__all__ = ["DEFAULT_SPLITS", "DatasetConverter", "split_sizes"]


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


def _sample(dataset: Any, index: int) -> Any:
    try:
        return dataset[index]
    except Exception as e:
        raise ConversionError(f"reading sample {index} failed: {type(e).__name__}: {e}") from e


def _probe(dataset: Any, order: np.ndarray) -> list[tuple[int, Any]]:
    """The first sample in store order and up to :data:`PROBES` - 1 more spread over the rest,
    as ``(index, sample)``: what the schema is inferred from."""
    positions = np.unique(np.linspace(0, len(order) - 1, min(PROBES, len(order))).astype(np.int64))
    return [(int(order[p]), _sample(dataset, int(order[p]))) for p in positions]


def _announce_ragged(fields: Mapping[str, FieldSpec], progress: bool) -> None:
    """Say which fields are stored with a shape per sample (progress output)."""
    if progress:
        for name, spec in fields.items():
            if spec.kind == "image":
                how = f", decoded ones encoded as {spec.encoding}" if spec.encoding else ", files' bytes verbatim"
                tqdm.write(f"datalflash: field {name!r} holds images: stored encoded{how}; sizes in {name}.size")
            elif spec.ragged:
                shown = "(" + ", ".join("*" if d is None else str(d) for d in spec.shape) + ")"
                what = f"{spec.kind} ({spec.dtype} {shown}, * varies)" if spec.kind == "ragged" else spec.kind
                tqdm.write(f"datalflash: field {name!r} is {what}: stored as values + a shape per sample")


MAX_SKIPPED_LISTED = 1000  # files left out (on_error="skip") the manifest lists by name


def _announce_skipped(images: ImageFiles | None, progress: bool) -> dict:
    """Say which image files were left out (on_error="skip"); the manifest's record of them."""
    if images is None or not images.skipped:
        return {}
    if progress:
        shown = "; ".join(why for _, why in images.skipped[:5])
        more = f" (and {len(images.skipped) - 5} more)" if len(images.skipped) > 5 else ""
        tqdm.write(f"datalflash: left out {len(images.skipped)} unreadable image file(s): {shown}{more}")
    return {
        "num_skipped": len(images.skipped),
        "skipped": [list(item) for item in images.skipped[:MAX_SKIPPED_LISTED]],
    }


def _backend(backend: str, compression: Any) -> tuple[type[ChunkStore], dict]:
    """The backend class and its config for the user's ``compression`` (a name or options)."""
    try:
        backend_cls = get_backend(backend)
        if isinstance(compression, Mapping):
            return backend_cls, backend_cls.config_from_manifest(compression)
        return backend_cls, backend_cls.normalize_config(compression)
    except BackendError as e:
        raise ConversionError(str(e)) from None


class DatasetConverter:
    """Turn a PyTorch dataset into a chunked store (:meth:`create_chunked_dataset`) or into an
    in-memory :class:`~datalflash.loading.FlashDataset` (:meth:`from_pytorch_dataset`)."""

    @staticmethod
    def create_chunked_dataset(
        pytorch_dataset: Dataset | str | os.PathLike | Sequence[tuple[str | os.PathLike, int]],
        output_dir: str | os.PathLike,
        chunk_size: int | None = None,
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
        fields: Mapping[str, Any] | None = None,
        on_error: str = "raise",
    ) -> Path:
        """Write ``pytorch_dataset`` (any map-style dataset, a Hugging Face ``datasets.Dataset``
        included, an image folder or a list of ``(image path, label)`` pairs) as a chunked store
        at ``output_dir``; returns its path.

        Samples are permuted with ``seed`` when ``shuffle`` and cut into splits by
        ``split_ratios`` (default 80/10/10 train/val/test); each split is stored in chunks of
        ``chunk_size`` samples (by default 10,000, or fewer where samples are large, so that a
        chunk holds about 64 MiB: see :func:`~datalflash.convert.layout.default_chunk_size`) with
        ``backend`` (``"zarr"``, ``"hdf5"``, ``"memmap"`` or a registered third-party id) and its
        ``compression``: a name (zarr: ``"lz4"``, ``"zstd"``, ``"none"``; hdf5: ``"none"``,
        ``"gzip"``, ``"lzf"``) or the backend's options in full, as a store's manifest lists them
        (``{"compression": "zstd", "clevel": 1}``, ``{"compression": "gzip", "level": 6}``).

        Under ``torch.distributed`` (or with ``rank`` / ``world_size``), each rank writes its
        share of the chunks and rank 0 publishes the store, which is the one a single process
        would write (see :mod:`datalflash.convert.ranks`); every rank must call this. To convert
        on one process of a distributed job (``if rank == 0: ...``), pass ``rank=0, world_size=1``.

        Field kinds are inferred from the samples: tensors, arrays and numbers of one shape are
        fixed-shape fields; a field whose shape varies between samples is stored *ragged* (its
        values plus a shape per sample; the progress output says so); ``str`` and ``bytes``
        values are text and byte fields. ``fields`` overrides the inference per field, with a
        kind (``"array"``, ``"ragged"``, ``"str"``, ``"bytes"``) or a dict (``{"kind": "ragged",
        "shape": [3, None, None]}``): ``"array"`` makes a sample of another shape an error.

        Images (``PIL.Image`` values, and the files of an image folder) become ``image`` fields:
        files are stored as their bytes, verbatim; decoded images are encoded as PNG, or as
        ``fields={name: {"kind": "image", "encoding": "jpeg:90"}}`` says; ``fields={name:
        "ragged"}`` keeps decoded RGB pixels instead. An image folder (``root/<class>/*.jpg``,
        see :func:`~datalflash.convert.images.image_folder`) gives samples ``(image, class id)``,
        the class names kept in the manifest. A file that is not a readable image raises an error
        naming it; with ``on_error="skip"`` it is left out, and the files left out are listed in
        the progress output and in the manifest's ``created["skipped"]``.
        """
        if chunk_size is not None:
            require_int("chunk_size", chunk_size, 1, ConversionError)
        require_int("num_workers", num_workers, 0, ConversionError)
        source_name = type(pytorch_dataset).__name__
        if isinstance(pytorch_dataset, (str, os.PathLike)):
            source_name = f"image folder {os.fspath(pytorch_dataset)}"
        elif isinstance(pytorch_dataset, (list, tuple)):
            source_name = "(path, label) list"
        images = image_source(pytorch_dataset, on_error)
        if images is None and on_error != "raise":
            raise ConversionError("on_error='skip' applies to image folders and (path, label) lists")
        pytorch_dataset = as_dataset(pytorch_dataset) if images is None else images
        n = _dataset_length(pytorch_dataset)
        ratios = DEFAULT_SPLITS if split_ratios is None else split_ratios
        sizes = split_sizes(n, ratios)
        backend_cls, config = _backend(backend, compression)
        output_dir = Path(output_dir)
        rank, world = conversion_ranks(rank, world_size, backend_cls)
        if world == 1:
            publishing.recover_leftovers(output_dir)
            publishing.check_output(output_dir, overwrite)

        order = source_order(n, shuffle, seed)
        structure, specs = with_classes(*infer_schema(_probe(pytorch_dataset, order), fields), pytorch_dataset)
        if chunk_size is None:
            chunk_size = default_chunk_size(sample_nbytes(specs))
        if max(-(-k // chunk_size) for k in sizes.values()) > MAX_CHUNKS:
            raise ConversionError(
                f"chunk_size={chunk_size} cuts a split of {max(sizes.values())} samples into more than "
                f"{MAX_CHUNKS} chunks; use a larger chunk_size"
            )
        _announce_ragged(specs, progress and rank == 0)
        skipped = _announce_skipped(images, progress and rank == 0)
        manifest = Manifest(
            backend_id=backend,
            backend_config=config,
            chunk_size=chunk_size,
            fields=specs,
            structure=structure,
            splits={name: SplitInfo(k, -(-k // chunk_size)) for name, k in sizes.items()},
            generation=uuid.uuid4().hex,
            created={
                "by": f"datalflash {__version__}",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": source_name,
                "num_source_samples": n,
                "shuffle": bool(shuffle),
                "seed": int(seed),
                "split_ratios": dict(ratios),
                **skipped,
            },
        )
        if world > 1:

            def prepare() -> Path:
                publishing.recover_leftovers(output_dir)
                publishing.check_output(output_dir, overwrite)
                return publishing.staging_dir(output_dir)

            def fill(store: ChunkStore) -> None:
                fill_store(store, pytorch_dataset, order, num_workers, progress and rank == 0, rank, world)

            convert_across_ranks(
                backend_cls,
                manifest,
                prepare,
                fill,
                lambda staging: publishing.publish_store(staging, output_dir, overwrite),
                rank,
                world,
            )
            return output_dir
        while True:
            try:
                _convert_here(
                    backend_cls, manifest, pytorch_dataset, order, output_dir, num_workers, progress, overwrite
                )
                return output_dir
            except ShapeVariesError as e:
                field = e.field
                if field is None or field not in manifest.fields or (fields and field in fields):
                    raise
                declared = {**(fields or {}), field: "ragged"}
                if progress:
                    tqdm.write(f"datalflash: {e}; converting again with field {field!r} ragged")
                fields = declared
                structure, specs = with_classes(*infer_schema(_probe(pytorch_dataset, order), fields), pytorch_dataset)
                manifest = dataclasses.replace(manifest, fields=specs, structure=structure)

    @staticmethod
    def verify(path: str | os.PathLike, *, progress: bool = True) -> VerifyReport:
        """Check every chunk of the store at ``path`` against its checksums (see
        :func:`datalflash.store.verify_store`); the report names each bad chunk."""
        return verify_store(path, progress=progress)

    @staticmethod
    def from_pytorch_dataset(
        pytorch_dataset: Dataset, memory_optimized: bool = True, *, num_workers: int = 0
    ) -> FlashDataset:
        """Load every sample of ``pytorch_dataset`` into a :class:`~datalflash.loading.FlashDataset`
        holding one contiguous tensor per field.

        With ``memory_optimized`` (the default) samples are written straight into preallocated
        tensors (peak memory = the data's size); without it, blocks are concatenated at the end
        (peak about twice that).
        """
        pytorch_dataset = as_dataset(pytorch_dataset)
        n = _dataset_length(pytorch_dataset)
        structure, fields = infer_schema(_probe(pytorch_dataset, np.arange(n)))
        ragged = [name for name, spec in fields.items() if spec.ragged]
        if ragged:
            raise ConversionError(
                f"fields {ragged} vary in shape or hold text, bytes or images; a FlashDataset holds one tensor "
                "per field. Convert to a store (create_chunked_dataset) and load it with FlashDataLoader"
            )
        blocks = read_blocks(np.arange(n), block_size(pytorch_dataset, fields, n), n)
        reader = BlockReader(pytorch_dataset, blocks, structure, fields, num_workers)
        try:
            storage = _read_all(reader, blocks, fields, n, memory_optimized)
        finally:
            reader.close()
        return FlashDataset.from_fields(tensors_from_storage(storage, fields), structure)


def _convert_here(
    backend_cls: type[ChunkStore],
    manifest: Manifest,
    dataset: Dataset,
    order: np.ndarray,
    output_dir: Path,
    num_workers: int,
    progress: bool,
    overwrite: bool,
) -> None:
    """Write the store in a staging directory in this process and publish it at ``output_dir``
    (nothing is left behind when it fails)."""
    staging = publishing.staging_dir(output_dir)
    try:
        with _writing(output_dir, "creating the store"):
            store = backend_cls.create(staging, manifest)
        try:
            with _writing(output_dir, "writing the store"):
                fill_store(store, dataset, order, num_workers, progress)
        except BaseException:
            store.discard()  # (its files go with the staging directory; the first error is the one)
            raise
        with _writing(output_dir, "finishing the store"):
            store.finish()
        publishing.publish_store(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _writing(output_dir: Path, step: str) -> Iterator[None]:
    """Raise the operating system's errors of ``step`` (a full disk, a permission) as
    StoreWriteError naming ``output_dir``."""
    try:
        yield
    except StoreWriteError as e:  # (from the pipeline, naming split and chunk)
        cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
        raise StoreWriteError.caused_by(
            cause, f"{step} {output_dir} failed at {e}; nothing was written there"
        ) from cause
    except OSError as e:
        if isinstance(e, DataLFlashError):
            raise
        raise StoreWriteError.caused_by(e, f"{step} {output_dir} failed: {e}; nothing was written there") from e


def _read_all(
    reader: BlockReader, blocks: list[np.ndarray], fields: dict, n: int, memory_optimized: bool
) -> dict[str, np.ndarray]:
    """Every block of the source, into one storage array per field."""
    if memory_optimized:
        storage, filled = allocate(fields, n), 0
        for block in blocks:
            filled += reader.read(block, storage, filled)
        return storage
    parts = []
    for block in blocks:
        parts.append(allocate(fields, len(block)))
        reader.read(block, parts[-1])
    return {name: np.concatenate([p[name] for p in parts]) for name in fields}
