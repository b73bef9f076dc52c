"""DataLFlash: chunked on-disk stores and a fast loader, so PyTorch training stops waiting for data.

Importing this package touches no GPU and starts no thread.
"""

__version__ = "0.1.0"

from datalflash.core import FlashDataset  # noqa: E402
from datalflash.errors import (  # noqa: E402
    BackendError,
    ConversionError,
    DataLFlashError,
    StoreExistsError,
    StoreFormatError,
    StoreReadError,
)
from datalflash.ordering import ShuffleQuality, score_order, shuffle_quality  # noqa: E402
from datalflash.store import ChunkStore, open_store  # noqa: E402
from datalflash.utils import DatasetConverter  # noqa: E402

__all__ = [
    "BackendError",
    "ChunkStore",
    "ConversionError",
    "DataLFlashError",
    "DatasetConverter",
    "FlashDataset",
    "ShuffleQuality",
    "StoreExistsError",
    "StoreFormatError",
    "StoreReadError",
    "__version__",
    "open_store",
    "score_order",
    "shuffle_quality",
]
