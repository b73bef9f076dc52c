"""Soak: many early ``break``s and many epochs with worker processes must leave open files,
threads, child processes and memory flat.

    python benchmarks/bench_soak.py [--breaks 1000] [--epochs 50]

Prints, per phase and backend, the counts before and after and the RSS growth (a markdown table).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import tempfile
import threading
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from datalflash.convert import DatasetConverter
from datalflash.loading import ChunkedDataset, FlashDataLoader


def counts() -> dict[str, int]:
    gc.collect()
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "children": len(multiprocessing.active_children()),
        "rss": rss,
    }


def make_store(root: Path, backend: str, n: int = 20_000) -> Path:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n))
    return DatasetConverter.create_chunked_dataset(
        data, root / backend, chunk_size=1000, split_ratios={"train": 1.0}, backend=backend, progress=False
    )


def early_breaks(path: Path, times: int) -> None:
    loader = FlashDataLoader(ChunkedDataset(path), batch_size=64, shuffle=True, seed=0, window_chunks=2)
    for i in range(times):
        for k, _ in enumerate(loader):
            if k == i % 3:
                break


def epochs_with_workers(path: Path, epochs: int) -> None:
    loader = FlashDataLoader(ChunkedDataset(path), batch_size=256, shuffle=True, seed=0, num_workers=2)
    for _ in range(epochs):
        for _ in loader:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--breaks", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("zarr", "memmap", "hdf5"):
            path = make_store(Path(tmp), backend)
            for name, run, times in (
                (f"{args.breaks} early breaks", early_breaks, args.breaks),
                (f"{args.epochs} epochs, 2 workers", epochs_with_workers, args.epochs),
            ):
                run(path, 1)  # warm: buffers, imports, caches
                before = counts()
                run(path, times)
                after = counts()
                rows.append((backend, name, before, after))
    print("| backend | phase | open files | threads | child processes | RSS growth |")
    print("|---|---|---|---|---|---|")
    for backend, name, before, after in rows:
        cells = [f"{before[k]} -> {after[k]}" for k in ("fds", "threads", "children")]
        growth = (after["rss"] - before["rss"]) / 2**20
        print(f"| {backend} | {name} | {' | '.join(cells)} | {growth:+.1f} MiB |")


if __name__ == "__main__":
    main()
