"""Dtype rules of format v1: a field has a torch dtype and the numpy dtype its bytes are stored as.

Torch dtypes with a numpy twin are stored as that twin. Those without one (bfloat16, the float8
types) are stored as raw bits in an unsigned integer of the same width; the manifest names the
torch dtype, and readers reinterpret the bits with ``Tensor.view(dtype)``. Storage is always
little-endian. Object, string and void dtypes are refused.
"""

from __future__ import annotations

import numpy as np

from datalflash.errors import StoreFormatError

# torch dtype name -> numpy storage dtype name
STORAGE_NAMES: dict[str, str] = {
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
SUPPORTED_DTYPES = frozenset(STORAGE_NAMES)


def storage_dtype(dtype_name: str) -> np.dtype:
    """The numpy dtype a field of torch dtype ``dtype_name`` is stored as."""
    try:
        return np.dtype(STORAGE_NAMES[dtype_name]).newbyteorder("<")
    except KeyError:
        raise StoreFormatError(
            f"unsupported dtype {dtype_name!r}; supported: {', '.join(sorted(SUPPORTED_DTYPES))}"
        ) from None


def numpy_dtype_name(dtype: np.dtype) -> str | None:
    """Manifest name for a numpy dtype, or None when format v1 cannot store it."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or dtype.name not in SUPPORTED_DTYPES:
        return None
    return dtype.name
