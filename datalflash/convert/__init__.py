"""Convert: any map-style PyTorch dataset into a chunked store (or into RAM)."""

from datalflash.convert.converter import DatasetConverter, split_sizes
from datalflash.convert.sources import load_source

__all__ = ["DatasetConverter", "load_source", "split_sizes"]
