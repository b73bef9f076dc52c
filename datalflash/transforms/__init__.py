"""Batch transforms: augmentations applied to a whole batch at once, on its device, with
per-sample randomness drawn vectorized (no per-sample Python); :class:`PerSample` runs a transform
written per sample (torchvision's) on each sample of a batch."""

from datalflash.transforms.batch import (
    BatchTransform,
    Compose,
    ConvertDtype,
    Normalize,
    PerSample,
    RandomCrop,
    RandomHorizontalFlip,
    is_per_sample,
    on_field,
)
from datalflash.transforms.color import ColorJitter, RandomGrayscale
from datalflash.transforms.geometry import RandomResizedCrop

__all__ = [
    "BatchTransform",
    "ColorJitter",
    "Compose",
    "ConvertDtype",
    "Normalize",
    "PerSample",
    "RandomCrop",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "is_per_sample",
    "on_field",
]
