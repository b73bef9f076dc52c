"""The original import path of the loading side, kept for good:
``from datalflash.core import FlashDataset, FlashDataLoader, get_dataloaders``.

The code lives in :mod:`datalflash.loading`.
"""

from datalflash.loading import ChunkedDataset, FlashDataLoader, FlashDataset, get_dataloaders

__all__ = ["ChunkedDataset", "FlashDataLoader", "FlashDataset", "get_dataloaders"]
