"""DataLFlash: chunked on-disk stores and a fast loader, so PyTorch training stops waiting for data.

Importing this package touches no GPU and starts no thread. Its names are imported when first
used (``datalflash.FlashDataLoader``, ``from datalflash import ...``), so what needs no torch (the
``datalflash`` command's help, ``info``, ``verify``, the errors) starts without importing it.

The data flows through five stages, each a subpackage: :mod:`~datalflash.store` (at rest, over
the format in :mod:`~datalflash.format`), :mod:`~datalflash.ordering`, :mod:`~datalflash.reading`,
:mod:`~datalflash.batching`, :mod:`~datalflash.transfer`; :mod:`~datalflash.loading` runs them and
:mod:`~datalflash.convert` writes stores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from datalflash.errors import (
    BackendError,
    ChecksumError,
    ConversionError,
    DataLFlashError,
    ImageError,
    LoaderTimeoutError,
    StoreChangedError,
    StoreExistsError,
    StoreFormatError,
    StoreReadError,
    StoreWriteError,
)
from datalflash.version import __version__

if TYPE_CHECKING:
    from datalflash.batching.images import ImageDecode
    from datalflash.convert import DatasetConverter
    from datalflash.loading import ChunkedDataset, FlashDataLoader, FlashDataset, get_dataloaders
    from datalflash.ordering import ShuffleQuality, score_order, shuffle_quality
    from datalflash.store import ChunkStore, open_store, verify_store

_LAZY = {
    "ImageDecode": "datalflash.batching.images",
    "DatasetConverter": "datalflash.convert",
    "ChunkedDataset": "datalflash.loading",
    "FlashDataLoader": "datalflash.loading",
    "FlashDataset": "datalflash.loading",
    "get_dataloaders": "datalflash.loading",
    "ShuffleQuality": "datalflash.ordering",
    "score_order": "datalflash.ordering",
    "shuffle_quality": "datalflash.ordering",
    "ChunkStore": "datalflash.store",
    "open_store": "datalflash.store",
    "verify_store": "datalflash.store",
}
"""Public names imported on first use, and the module each comes from."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'datalflash' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # (found directly from now on)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BackendError",
    "ChecksumError",
    "ChunkStore",
    "ChunkedDataset",
    "ConversionError",
    "DataLFlashError",
    "DatasetConverter",
    "FlashDataLoader",
    "FlashDataset",
    "ImageDecode",
    "ImageError",
    "LoaderTimeoutError",
    "ShuffleQuality",
    "StoreChangedError",
    "StoreExistsError",
    "StoreFormatError",
    "StoreReadError",
    "StoreWriteError",
    "__version__",
    "get_dataloaders",
    "open_store",
    "score_order",
    "shuffle_quality",
    "verify_store",
]
