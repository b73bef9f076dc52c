"""Epoch throughput on one store: FlashDataLoader against torch's DataLoader (``datalflash bench``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, TensorDataset

from datalflash.loading import ChunkedDataset, FlashDataLoader
from datalflash.store.registry import open_store


def timed_rate(loader: Iterable, max_seconds: float) -> tuple[float, int]:
    """``(samples/s, samples)`` over one pass of ``loader``, stopping after ``max_seconds``."""
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())))
        if time.perf_counter() - start > max_seconds:
            break
    return n / max(time.perf_counter() - start, 1e-9), n


def bench_store(
    path: str | os.PathLike,
    split: str = "train",
    batch_size: int = 256,
    epochs: int = 3,
    num_workers: int = 0,
    max_seconds: float = 20.0,
) -> list[dict]:
    """Samples/s of: torch's DataLoader over the split loaded into RAM (``TensorDataset``, the
    1.0x of ``datalflash bench`` and of the README); FlashDataLoader on the split; torch's
    DataLoader reading items from the store (``ChunkedDataset``, what a per-item pipeline would
    do). Shuffled; the best of ``epochs`` passes each."""
    store = open_store(path)
    data = ChunkedDataset(store, split)
    flash = FlashDataLoader(
        data, batch_size=batch_size, shuffle=True, num_workers=num_workers, persistent_workers=num_workers > 0
    )
    per_item = DataLoader(ChunkedDataset(path, split), batch_size=batch_size, shuffle=True, num_workers=num_workers)
    arrays = store.read_chunks(split, range(store.num_chunks(split)))
    in_ram = DataLoader(
        TensorDataset(*[torch.from_numpy(a) for a in arrays.values()]),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
    )
    rows = []
    loaders: list[tuple[str, Iterable]] = [
        ("torch DataLoader, split in RAM (TensorDataset)", in_ram),
        ("FlashDataLoader (store)", flash),
        ("torch DataLoader, items from the store", per_item),
    ]
    for name, loader in loaders:
        runs = [timed_rate(loader, max_seconds) for _ in range(epochs)]
        rate, n = max(runs)
        rows.append({"loader": name, "samples_per_s": round(rate), "samples": n, "full_epoch": n >= len(data)})
    flash.close()
    return rows
