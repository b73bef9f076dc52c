"""The original import path of conversion, kept for good: ``from datalflash.utils import DatasetConverter``.

The code lives in :mod:`datalflash.convert`.
"""

from datalflash.convert import DatasetConverter, split_sizes

__all__ = ["DatasetConverter", "split_sizes"]
