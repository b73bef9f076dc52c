"""torch's DataLoader argument rules, with torch's messages, and the one check of a dataset the
loader makes before choosing its own stages (whether a subclass redefines how samples are read)."""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import Dataset

from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.memory import FlashDataset


def overrides_sample_access(dataset: Dataset) -> bool:
    """Whether ``dataset``'s class (a subclass of FlashDataset or ChunkedDataset) redefines how a
    sample is read (``__getitem__``, ``__getitems__``): then torch's DataLoader reads it through
    them, as the class asks, and a warning says the vectorized path is off."""
    base = FlashDataset if isinstance(dataset, FlashDataset) else ChunkedDataset
    overridden = [
        name
        for name in ("__getitem__", "__getitems__")
        if getattr(type(dataset), name, None) is not getattr(base, name, None)
    ]
    if overridden:
        warnings.warn(
            f"{type(dataset).__name__} overrides {' and '.join(overridden)}: its samples are read through "
            f"them by torch's DataLoader, one call at a time (the vectorized path of {base.__name__} reads "
            "the stored fields directly and would bypass them)",
            stacklevel=3,
        )
    return bool(overridden)


def check_worker_arguments(
    num_workers: int, timeout: float, prefetch_factor: int | None, persistent_workers: bool, context: Any
) -> None:
    """torch's DataLoader rules for the worker options, with its messages."""
    if timeout < 0:
        raise ValueError("timeout option should be non-negative")
    if num_workers == 0 and prefetch_factor is not None:
        raise ValueError(
            "prefetch_factor option could only be specified in multiprocessing."
            "let num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None."
        )
    if prefetch_factor is not None and prefetch_factor < 0:
        raise ValueError("prefetch_factor option should be non-negative")
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0")
    if context is not None and num_workers == 0:
        raise ValueError(
            "multiprocessing_context can only be used with multi-process loading (num_workers > 0), but got "
            f"num_workers={num_workers}"
        )


def check_arguments(
    batch_size: int | None, shuffle: bool | None, sampler: Any, batch_sampler: Any, drop_last: bool, num_workers: int
) -> None:
    """The argument rules of torch's DataLoader, with its messages."""
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable multiprocessing.")
    if sampler is not None and shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    if batch_sampler is not None:
        if batch_size != 1 or shuffle or sampler is not None or drop_last:
            raise ValueError(
                "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last"
            )
    elif not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
