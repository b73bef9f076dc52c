"""Load: datasets over RAM tensors or store splits, ``FlashDataLoader`` and ``get_dataloaders``.

The loader runs the stages below it: order (:mod:`datalflash.ordering`), read
(:mod:`datalflash.reading`), assemble (:mod:`datalflash.batching`), transfer
(:mod:`datalflash.transfer`).
"""

from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.loader import FlashDataLoader
from datalflash.loading.memory import FlashDataset
from datalflash.loading.splits import get_dataloaders

__all__ = ["ChunkedDataset", "FlashDataLoader", "FlashDataset", "get_dataloaders"]
