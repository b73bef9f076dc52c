"""The loading side: ``from datalflash.core import FlashDataset, FlashDataLoader, get_dataloaders``."""

from datalflash.core.dataset import FlashDataset

__all__ = ["FlashDataset"]
