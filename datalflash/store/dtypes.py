"""Dtype rules of format v1: a field has a torch dtype and the numpy dtype its bytes are stored as.

Torch dtypes with a numpy twin are stored as that twin. Those without one (bfloat16, the float8
types) are stored as raw bits in an unsigned integer of the same width; the manifest names the
torch dtype, and readers reinterpret the bits with ``Tensor.view(dtype)``. Storage is always
little-endian. Object, string and void dtypes are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from datalflash.errors import StoreFormatError

# torch dtype name -> numpy storage dtype name
_STORAGE: dict[str, str] = {
    "bool": "bool",
    "uint8": "uint8",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "complex64": "complex64",
    "complex128": "complex128",
    # no numpy twin: raw bits
    "bfloat16": "uint16",
    "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8",
}
RAW_BITS_DTYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})
SUPPORTED_DTYPES = frozenset(_STORAGE)


def torch_dtype_name(dtype: torch.dtype) -> str:
    """Name of a torch dtype as written in the manifest (``torch.float32`` -> ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def storage_dtype(dtype_name: str) -> np.dtype:
    """The numpy dtype a field of torch dtype ``dtype_name`` is stored as."""
    try:
        return np.dtype(_STORAGE[dtype_name]).newbyteorder("<")
    except KeyError:
        raise StoreFormatError(
            f"unsupported dtype {dtype_name!r}; supported: {', '.join(sorted(SUPPORTED_DTYPES))}"
        ) from None


def to_torch_dtype(dtype_name: str) -> torch.dtype:
    """The torch dtype named ``dtype_name`` (one of :data:`SUPPORTED_DTYPES`)."""
    if dtype_name not in SUPPORTED_DTYPES:
        raise StoreFormatError(f"unsupported dtype {dtype_name!r}")
    return getattr(torch, dtype_name)


def numpy_dtype_name(dtype: np.dtype) -> str | None:
    """Manifest name for a numpy dtype, or None when format v1 cannot store it."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or dtype.name not in SUPPORTED_DTYPES:
        return None
    return dtype.name


def as_storage(array: np.ndarray | torch.Tensor, dtype_name: str) -> np.ndarray:
    """``array`` as its storage numpy array (raw bits for dtypes without a numpy twin)."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        if dtype_name in RAW_BITS_DTYPES:
            tensor = tensor.view(getattr(torch, _STORAGE[dtype_name].replace("uint", "int")))
            return tensor.numpy().view(storage_dtype(dtype_name))
        return tensor.numpy()
    return np.asarray(array)


def from_storage(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """Wrap a storage array as a tensor of the field's torch dtype, sharing memory."""
    if dtype_name in RAW_BITS_DTYPES:
        signed = np.dtype(_STORAGE[dtype_name].replace("uint", "int"))
        return torch.from_numpy(array.view(signed)).view(to_torch_dtype(dtype_name))
    return torch.from_numpy(array)


def tensors_from_storage(arrays: Mapping[str, np.ndarray], fields: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{field: tensor}`` views of storage arrays, each in its field's torch dtype."""
    return {name: from_storage(array, fields[name].dtype) for name, array in arrays.items()}
