"""Batch transforms: augmentations applied to a whole batch at once, on its device, with
per-sample randomness drawn vectorized (no per-sample Python)."""

from datalflash.transforms.batch import Compose, ConvertDtype, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["Compose", "ConvertDtype", "Normalize", "RandomCrop", "RandomHorizontalFlip"]
