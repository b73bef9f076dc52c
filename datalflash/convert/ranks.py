"""A conversion split across the ranks of a ``torch.distributed`` job.

Rank 0 checks ``output_dir``, lays out an empty store in a staging directory beside it and
broadcasts its name; every rank then writes the chunks it owns (chunk ``k`` of the store's chunk
list, counted over its splits in order, belongs to rank ``k % world_size``, see
:func:`~datalflash.convert.layout.owner`); the ranks gather their outcome (and, for backends that
keep per-chunk checksums in the manifest, those checksums); rank 0 writes the manifest and
renames the store into place. The result is the store a single process would write with the same
arguments, byte for byte; only ``created.at`` differs. A rank that dies leaves the staging
directory unpublished, and the next conversion into the same ``output_dir`` removes it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from datalflash.convert.layout import owner
from datalflash.distributed import is_initialized, resolve_ranks
from datalflash.errors import ConversionError
from datalflash.format.manifest import Manifest, checksum_keys
from datalflash.store.base import ChunkStore


def conversion_ranks(rank: int | None, world_size: int | None, backend_cls: type[ChunkStore]) -> tuple[int, int]:
    """``(rank, world_size)`` of a conversion: the arguments, else torch.distributed's, else one rank."""
    try:
        rank, world_size = resolve_ranks(rank, world_size)
    except (TypeError, ValueError) as e:
        raise ConversionError(str(e)) from None
    if world_size > 1:
        if not is_initialized():
            raise ConversionError(
                "a conversion split across ranks needs torch.distributed initialized (e.g. under torchrun): "
                "the ranks agree on the staging directory and wait for each other through it"
            )
        if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
            raise ConversionError(
                f"rank={rank}, world_size={world_size} disagree with torch.distributed "
                f"({dist.get_rank()} of {dist.get_world_size()})"
            )
        if not backend_cls.concurrent_writers:
            raise ConversionError(
                f"the {backend_cls.backend_id} backend cannot be written by several processes; use zarr or memmap"
            )
    return rank, world_size


def convert_across_ranks(
    backend_cls: type[ChunkStore],
    manifest: Manifest,
    prepare: Callable[[], Path],
    fill: Callable[[ChunkStore], None],
    publish: Callable[[Path], None],
    rank: int,
    world_size: int,
) -> None:
    """Run one conversion on every rank: ``prepare()`` (rank 0: check the output, return a new
    staging path), ``fill(store)`` (each rank: write its chunks), ``publish(staging)`` (rank 0)."""
    box: list[Any] = [None]
    prepared: Exception | None = None
    if rank == 0:
        try:
            staging = prepare()
            backend_cls.create(staging, manifest).close()
            box = [("ok", str(staging))]
        except Exception as e:  # every rank must hear of it, or they would wait forever
            prepared, box = e, [("error", f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        if prepared is not None:
            raise prepared
        raise ConversionError(f"rank 0 could not prepare the conversion: {value}")
    staging = Path(value)
    error, checksums = None, {}
    try:
        store = backend_cls(staging, manifest, writable=True)
        try:
            fill(store)
        except BaseException:
            store.discard()  # (the staging directory is removed; the first error is the one)
            raise
        store.close()
        checksums = store.written_manifest().checksums
    except Exception as e:
        error = f"rank {rank}: {type(e).__name__}: {e}"
    outcomes: list[Any] = [None] * world_size
    dist.all_gather_object(outcomes, (error, checksums))
    errors = [e for e, _ in outcomes if e]
    if errors:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError("the conversion failed: " + "; ".join(errors))
    if rank == 0:
        merged = dataclasses.replace(manifest, checksums=_merged_checksums(manifest, [s for _, s in outcomes]))
        backend_cls(staging, merged, writable=True).finish()
        publish(staging)
    dist.barrier()


def _merged_checksums(manifest: Manifest, per_rank: list[dict]) -> dict:
    """Each chunk's checksums, from the rank that wrote it (``{}`` when the backend keeps none)."""
    if not any(per_rank):
        return {}
    merged: dict[str, dict[str, list[int]]] = {}
    k = 0
    for split, info in manifest.splits.items():
        merged[split] = {key: [0] * info.num_chunks for key in checksum_keys(manifest.fields)}
        for chunk in range(info.num_chunks):
            sums = per_rank[owner(k, len(per_rank))].get(split, {})
            for key in merged[split]:
                merged[split][key][chunk] = sums[key][chunk]
            k += 1
    return merged
