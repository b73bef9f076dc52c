"""Reading samples of a user's dataset into per-field blocks, with checks naming sample and field.

Parallel reading is torch's DataLoader's job: blocks of indices go out as batches, and
:class:`BlockCollator` (run inside the workers) turns each block of samples into one storage
array per field, checking every sample against the schema of the first.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from datalflash.errors import ConversionError
from datalflash.store.dtypes import as_storage, numpy_dtype_name, storage_dtype, torch_dtype_name
from datalflash.store.manifest import FieldSpec
from datalflash.structure import field_names, flatten, infer_structure


def leaf_signature(value: Any) -> tuple[str, tuple[int, ...]] | None:
    """``(dtype name, shape)`` of one leaf value, or None if format v1 cannot store it."""
    if isinstance(value, torch.Tensor):
        name = torch_dtype_name(value.dtype)
        return (name, tuple(value.shape)) if _storable(name) else None
    if isinstance(value, (np.ndarray, np.generic)):
        name = numpy_dtype_name(value.dtype)
        return (name, tuple(np.shape(value))) if name else None
    if isinstance(value, bool):
        return ("bool", ())
    if isinstance(value, numbers.Integral):
        return ("int64", ())
    if isinstance(value, numbers.Real):
        return ("float64", ())
    return None


def _storable(name: str) -> bool:
    try:
        storage_dtype(name)
    except ValueError:
        return False
    return True


def infer_schema(sample: Any, index: int) -> tuple[dict, dict[str, FieldSpec]]:
    """Structure spec and field specs from one sample (the first one read)."""
    try:
        structure = infer_structure(sample)
    except ValueError as e:
        raise ConversionError(f"sample {index}: {e}") from None
    fields = {}
    for name, leaf in zip(field_names(structure), flatten(sample, structure)):
        signature = leaf_signature(leaf)
        if signature is None:
            raise ConversionError(
                f"sample {index} field {name!r}: unsupported type {_describe(leaf)}; "
                "use tensors, numpy arrays or Python numbers"
            )
        fields[name] = FieldSpec(name, *signature)
    return structure, fields


def _describe(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of dtype {dtype}" if dtype is not None else type(value).__name__


class IndexedDataset(Dataset):
    """Yields ``(index, sample)``, and turns a failing ``__getitem__`` into a ConversionError."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            return index, self.dataset[index]
        except Exception as e:
            raise ConversionError(f"reading sample {index} failed: {type(e).__name__}: {e}") from e


class BlockCollator:
    """Collate ``[(index, sample), ...]`` into ``{field: storage array}``, checking each sample."""

    def __init__(self, structure: dict, fields: dict[str, FieldSpec]):
        self.structure = structure
        self.fields = fields

    def __call__(self, items: Sequence[tuple[int, Any]]) -> dict[str, np.ndarray]:
        arrays = {
            name: np.empty((len(items), *f.shape), dtype=f.storage_dtype) for name, f in self.fields.items()
        }
        for row, (index, sample) in enumerate(items):
            try:
                leaves = flatten(sample, self.structure)
            except ValueError as e:
                raise ConversionError(f"sample {index}: {e}") from None
            for (name, spec), leaf in zip(self.fields.items(), leaves):
                signature = leaf_signature(leaf)
                if signature != (spec.dtype, spec.shape):
                    found = f"{signature[0]} {signature[1]}" if signature else _describe(leaf)
                    raise ConversionError(
                        f"sample {index} field {name!r}: got {found}, but the first sample had "
                        f"{spec.dtype} {spec.shape}; every sample must have the same dtype and shape"
                    )
                arrays[name][row] = as_storage(leaf, spec.dtype)
        return arrays


def read_blocks(
    dataset: Dataset,
    blocks: Sequence[Sequence[int]],
    structure: dict,
    fields: dict[str, FieldSpec],
    num_workers: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{field: array}`` for each block of indices, in order; ``num_workers`` processes read."""
    if isinstance(dataset, TensorDataset) and _tensor_dataset_matches(dataset, structure, fields):
        yield from _gather_tensor_blocks(dataset, blocks, fields)
        return
    loader = DataLoader(
        IndexedDataset(dataset),
        batch_sampler=blocks,
        num_workers=num_workers,
        collate_fn=BlockCollator(structure, fields),
        prefetch_factor=2 if num_workers > 0 else None,
    )
    yield from loader


def _tensor_dataset_matches(dataset: TensorDataset, structure: dict, fields: dict[str, FieldSpec]) -> bool:
    specs = list(fields.values())
    return (
        structure["kind"] == "tuple"
        and all(item["kind"] == "field" for item in structure["items"])
        and len(specs) == len(dataset.tensors)
        and all(
            torch_dtype_name(t.dtype) == s.dtype and tuple(t.shape[1:]) == s.shape
            for t, s in zip(dataset.tensors, specs)
        )
    )


def _gather_tensor_blocks(
    dataset: TensorDataset, blocks: Sequence[Sequence[int]], fields: dict[str, FieldSpec]
) -> Iterator[dict[str, np.ndarray]]:
    """A TensorDataset is read with one vectorized gather per field and block."""
    for block in blocks:
        index = torch.as_tensor(np.asarray(block, dtype=np.int64))
        yield {
            name: as_storage(tensor.index_select(0, index), spec.dtype)
            for (name, spec), tensor in zip(fields.items(), dataset.tensors)
        }
