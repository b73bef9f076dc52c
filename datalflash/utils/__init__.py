"""Conversion utilities: ``from datalflash.utils import DatasetConverter``."""

from datalflash.utils.converter import DatasetConverter, split_sizes

__all__ = ["DatasetConverter", "split_sizes"]
