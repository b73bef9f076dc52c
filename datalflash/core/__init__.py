"""The loading side: ``from datalflash.core import FlashDataset, FlashDataLoader, get_dataloaders``."""

from datalflash.core.chunked import ChunkedDataset
from datalflash.core.dataset import FlashDataset
from datalflash.core.loader import FlashDataLoader
from datalflash.core.splits import get_dataloaders

__all__ = ["ChunkedDataset", "FlashDataLoader", "FlashDataset", "get_dataloaders"]
