"""In-memory datasets: one contiguous tensor per field, batches gathered vectorized."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datalflash.batching.samples import samples_of
from datalflash.format.structure import python_scalar_fields, rebuild, validate_structure


class FlashDataset(Dataset):
    """A dataset held in RAM as one tensor per field (first dimension = samples).

    ``FlashDataset(images, labels)`` gives ``(image, label)`` samples like ``TensorDataset``;
    ``FlashDataset({"image": images, "label": labels})`` gives dict samples. Batches come from
    :meth:`gather` (one ``index_select`` per field) and ``__getitems__``, so even torch's own
    DataLoader fetches a batch in one vectorized call.
    """

    def __init__(self, *tensors: torch.Tensor | Mapping[str, torch.Tensor]):
        structure: dict[str, Any]
        fields: dict[str, Any]
        if len(tensors) == 1 and isinstance(tensors[0], Mapping):
            fields = {str(k): v for k, v in tensors[0].items()}
            structure = {"kind": "dict", "items": {k: {"kind": "field", "name": k} for k in fields}}
        else:
            fields = {str(i): t for i, t in enumerate(tensors)}
            structure = {"kind": "tuple", "items": [{"kind": "field", "name": k} for k in fields]}
        self._init(fields, structure)

    @classmethod
    def from_fields(cls, fields: Mapping[str, torch.Tensor], structure: dict) -> FlashDataset:
        """Build from ``{field name: tensor}`` and a structure spec (see :mod:`datalflash.format.structure`)."""
        self = cls.__new__(cls)
        self._init(dict(fields), structure)
        return self

    def _init(self, fields: dict[str, torch.Tensor], structure: dict) -> None:
        if not fields:
            raise ValueError("FlashDataset needs at least one tensor")
        for name, tensor in fields.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"field {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
            if tensor.dim() == 0:
                raise ValueError(f"field {name!r} is a 0-d tensor; the first dimension indexes samples")
        lengths = {name: t.shape[0] for name, t in fields.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"fields have different numbers of samples: {lengths}")
        validate_structure(structure, fields)
        self.fields = {name: t.contiguous() for name, t in fields.items()}
        self.structure = structure
        self._scalars = python_scalar_fields(structure)  # (fields held as Python numbers, for __getitem__)
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> Any:
        """One sample for an integer index; for a sequence or 1-d tensor of indices, the whole
        batch from :meth:`gather` (so ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)``
        fetches each batch in one vectorized call)."""
        if isinstance(index, (Sequence, torch.Tensor, np.ndarray)) and np.ndim(index) == 1:
            return self.gather(index)
        i = operator.index(index)  # type: ignore[arg-type]  # (not a sequence: an integer, or a TypeError)
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} out of range for FlashDataset of {self._length} samples")
        leaves = {name: t[i].item() if name in self._scalars else t[i] for name, t in self.fields.items()}
        return rebuild(self.structure, leaves, tuple)

    def gather(self, indices: Sequence[int] | torch.Tensor) -> Any:
        """The batch of ``indices``, shaped as ``default_collate`` would give it (lists for tuples)."""
        index = checked_index(indices, self._length)
        batch = {name: t.index_select(0, index) for name, t in self.fields.items()}
        return rebuild(self.structure, batch, list)

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Samples of ``indices`` from one vectorized gather per field (torch's batched-fetch hook);
        through ``__getitem__`` where a subclass redefines it."""
        if type(self).__getitem__ is not FlashDataset.__getitem__:
            return [self[i] for i in indices]
        index = checked_index(indices, self._length)
        return samples_of({name: t.index_select(0, index) for name, t in self.fields.items()}, self.structure)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape[1:])} {v.dtype}" for k, v in self.fields.items())
        return f"FlashDataset({self._length} samples; {shapes})"


def checked_index(indices: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    """``indices`` as a 1-d int64 tensor in ``[0, length)``; negative ones count from the end."""
    index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < -length or int(index.max()) >= length):
        bad = index[(index < -length) | (index >= length)][0].item()
        raise IndexError(f"sample index {bad} out of range for a dataset of {length} samples")
    return torch.where(index < 0, index + length, index)
