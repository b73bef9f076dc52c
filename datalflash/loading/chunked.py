"""A split of a chunk store as a torch ``Dataset``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from datalflash.batching.ragged import RaggedTensors
from datalflash.batching.tensors import tensors_from_storage
from datalflash.format.structure import python_scalar_fields, rebuild
from datalflash.store.base import ChunkStore
from datalflash.store.registry import open_store


class ChunkedDataset(Dataset):
    """Split ``split`` of a store. :class:`~datalflash.loading.FlashDataLoader` reads it in whole
    chunks, ahead of use; item access (``ds[i]``, ``__getitems__``) also works, for torch's
    DataLoader and for inspection, reading whole chunks and keeping the last one. ``verify``
    (when given a path): when chunk checksums are checked, see :func:`~datalflash.store.open_store`."""

    def __init__(self, store: ChunkStore | str | os.PathLike, split: str = "train", *, verify: str = "first"):
        self.store = store if isinstance(store, ChunkStore) else open_store(store, verify=verify)
        self.split = split
        self._length = self.store.num_samples(split)
        self._scalars = python_scalar_fields(self.store.structure)  # (fields held as Python numbers)
        self._cached: tuple[int, dict[str, torch.Tensor]] | None = None
        self._lengths: dict[str, np.ndarray] = {}

    @property
    def fields(self):
        """``{name: FieldSpec}`` of the store."""
        return self.store.fields

    @property
    def structure(self) -> dict:
        """How fields form a sample (see :mod:`datalflash.format.structure`)."""
        return self.store.structure

    def __len__(self) -> int:
        return self._length

    def chunk_tensors(self, chunk: int, out: dict[str, Any] | None = None) -> dict[str, Any]:
        """Chunk ``chunk`` as ``{field: tensor}`` in the fields' torch dtypes (a ragged field's
        rows as :class:`~datalflash.batching.ragged.RaggedTensors`)."""
        return tensors_from_storage(self.store.read_chunks(self.split, [chunk], out), self.fields)

    def lengths(self, field: str) -> np.ndarray:
        """Elements of each sample of the ragged ``field`` (read once, from its shape table)."""
        if field not in self._lengths:
            self._lengths[field] = self.store.read_lengths(self.split, field)
        return self._lengths[field]

    def _row(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for split {self.split!r} of {self._length} samples")
        index %= self._length
        chunk = index // self.store.chunk_size
        if self._cached is None or self._cached[0] != chunk:
            self._cached = (chunk, self.chunk_tensors(chunk))
        return self._cached[1], index - chunk * self.store.chunk_size

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> Any:
        """One sample for an integer index; for a sequence or 1-d tensor of indices, their batch
        as ``default_collate`` makes it (as a FlashDataset indexed so gives it)."""
        if isinstance(index, (Sequence, torch.Tensor, np.ndarray)) and np.ndim(index) == 1:
            return default_collate(self.__getitems__([int(i) for i in index]))
        tensors, row = self._row(int(index))  # type: ignore[arg-type]  # (not a sequence: an integer)
        leaves: dict[str, Any] = {}
        for name, t in tensors.items():
            if isinstance(t, RaggedTensors):
                leaves[name] = t.item(row)
            else:
                leaves[name] = t[row].item() if name in self._scalars else t[row].clone()
        return rebuild(self.structure, leaves, tuple)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Samples of ``indices`` (torch's batched-fetch hook), reading each chunk they fall in
        once: they are read in chunk order, and each chunk is kept while it serves."""
        per_chunk = self.store.chunk_size
        order = sorted(range(len(indices)), key=lambda k: int(indices[k]) % max(self._length, 1) // per_chunk)
        samples: list[Any] = [None] * len(indices)
        for k in order:
            samples[k] = self[int(indices[k])]
        return samples

    def __reduce__(self) -> tuple[Any, tuple]:
        """Pickle the store (by path) and the split name, not the cached chunk."""
        return ChunkedDataset, (self.store, self.split)

    def __repr__(self) -> str:
        return f"ChunkedDataset({str(self.store.path)!r}, split={self.split!r}, {self._length} samples)"
