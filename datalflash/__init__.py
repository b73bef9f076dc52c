"""DataLFlash: chunked on-disk stores and a fast loader, so PyTorch training stops waiting for data.

Importing this package touches no GPU and starts no thread.

The data flows through five stages, each a subpackage: :mod:`~datalflash.store` (at rest, over
the format in :mod:`~datalflash.format`), :mod:`~datalflash.ordering`, :mod:`~datalflash.reading`,
:mod:`~datalflash.batching`, :mod:`~datalflash.transfer`; :mod:`~datalflash.loading` runs them and
:mod:`~datalflash.convert` writes stores.
"""

from datalflash.batching.images import ImageDecode
from datalflash.convert import DatasetConverter
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
from datalflash.loading import ChunkedDataset, FlashDataLoader, FlashDataset, get_dataloaders
from datalflash.ordering import ShuffleQuality, score_order, shuffle_quality
from datalflash.store import ChunkStore, open_store, verify_store
from datalflash.version import __version__

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
