"""``get_dataloaders``: one FlashDataLoader per split of a store."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.loader import FlashDataLoader
from datalflash.store.registry import open_store


def get_dataloaders(
    chunks_dir: str | os.PathLike,
    batch_size: int,
    augmentations: Mapping[str, Callable] | None = None,
    *,
    shuffle: bool | Mapping[str, bool] | None = None,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    device: Any = None,
    verify: str = "first",
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    **loader_kwargs: Any,
) -> dict[str, FlashDataLoader]:
    """``{split: FlashDataLoader}`` for every split of the store at ``chunks_dir``.

    ``train`` shuffles by default, other splits do not (``shuffle`` overrides: a bool for all, or
    a dict per split). ``augmentations={"train": fn}`` applies ``fn`` to each batch's features
    after the device transfer. ``verify``: when chunk checksums are checked (``"first"`` read of
    each chunk per process, ``"always"``, ``"never"``). ``chunks_dir`` may be a URL of a Zarr store
    (``storage_options`` for fsspec; ``cache_dir`` keeps its chunks locally, see
    :func:`~datalflash.store.open_store`). Further keywords go to :class:`FlashDataLoader`.
    """
    store = open_store(
        chunks_dir, verify=verify, storage_options=dict(storage_options or {}) or None, cache_dir=cache_dir
    )
    augmentations = dict(augmentations or {})
    unknown = set(augmentations) - set(store.splits)
    if unknown:
        raise ValueError(f"augmentations for unknown splits {sorted(unknown)}; splits are {sorted(store.splits)}")
    loaders = {}
    for split in store.splits:
        if isinstance(shuffle, Mapping):
            split_shuffle = bool(shuffle.get(split, split == "train"))
        else:
            split_shuffle = split == "train" if shuffle is None else bool(shuffle)
        loaders[split] = FlashDataLoader(
            ChunkedDataset(store, split),
            batch_size=batch_size,
            shuffle=split_shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            device=device,
            seed=seed,
            transform=augmentations.get(split),
            **loader_kwargs,
        )
    return loaders
