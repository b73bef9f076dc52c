"""Storage arrays as torch tensors and back (the torch side of the format's dtype rules).

Torch dtypes without a numpy twin (bfloat16, float8) are stored as raw bits in an unsigned
integer of the same width (see :mod:`datalflash.format.dtypes`); here they are reinterpreted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from datalflash.batching.ragged import RaggedTensors
from datalflash.errors import StoreFormatError
from datalflash.format.dtypes import RAW_BITS_DTYPES, STORAGE_NAMES, SUPPORTED_DTYPES, storage_dtype
from datalflash.format.manifest import FieldSpec
from datalflash.format.ragged import as_ragged


def torch_dtype_name(dtype: torch.dtype) -> str:
    """Name of a torch dtype as written in the manifest (``torch.float32`` -> ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def to_torch_dtype(dtype_name: str) -> torch.dtype:
    """The torch dtype named ``dtype_name`` (one of :data:`SUPPORTED_DTYPES`)."""
    if dtype_name not in SUPPORTED_DTYPES:
        raise StoreFormatError(f"unsupported dtype {dtype_name!r}")
    return getattr(torch, dtype_name)


def as_storage(array: np.ndarray | torch.Tensor, dtype_name: str) -> np.ndarray:
    """``array`` as its storage numpy array (raw bits for dtypes without a numpy twin)."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        if dtype_name in RAW_BITS_DTYPES:
            tensor = tensor.view(getattr(torch, STORAGE_NAMES[dtype_name].replace("uint", "int")))
            return tensor.numpy().view(storage_dtype(dtype_name))
        return tensor.numpy()
    return np.asarray(array)


def from_storage(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """Wrap a storage array as a tensor of the field's torch dtype, sharing memory."""
    if dtype_name in RAW_BITS_DTYPES:
        signed = np.dtype(STORAGE_NAMES[dtype_name].replace("uint", "int"))
        return torch.from_numpy(array.view(signed)).view(to_torch_dtype(dtype_name))
    return torch.from_numpy(array)


def tensors_from_storage(arrays: Mapping[str, Any], fields: Mapping[str, FieldSpec]) -> dict[str, Any]:
    """``{field: tensor}`` views of storage arrays, each in its field's torch dtype (a
    :class:`~datalflash.batching.ragged.RaggedTensors` for a ragged field)."""
    out: dict[str, Any] = {}
    for name, array in arrays.items():
        spec = fields[name]
        if spec.ragged:
            rows = as_ragged(array)
            out[name] = RaggedTensors.from_array(rows, to_torch_dtype(spec.dtype), spec)
        else:
            out[name] = from_storage(array, spec.dtype)
    return out
