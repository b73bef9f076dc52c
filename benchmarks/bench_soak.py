"""Soak: many early ``break``s and many epochs with worker processes must leave open files,
threads, child processes, shared memory (``/dev/shm``) and memory flat.

    python benchmarks/bench_soak.py [--breaks 1000] [--epochs 50]

Per backend: CIFAR-shaped samples, early breaks and epochs with 2 reading worker processes; then
an image store (JPEGs cut from scikit-learn's photographs) decoded by 2 decoding worker processes
(shared-memory batches), with early breaks and epochs. Prints the counts before and after and the
RSS growth (a markdown table).
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
        "shm": len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0,
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


def make_image_store(root: Path, n: int = 512) -> Path:
    """``n`` JPEGs of 64-256 pixels a side, cut from scikit-learn's photographs, as a store."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder, rng = root / "jpegs", np.random.default_rng(0)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    for k in range(n):
        h, w = (int(v) for v in rng.integers(64, 257, 2))
        y, x = int(rng.integers(0, 427 - h)), int(rng.integers(0, 640 - w))
        (folder / str(k % 2)).mkdir(parents=True, exist_ok=True)
        photos[k % 2].crop((x, y, x + w, y + h)).save(folder / str(k % 2) / f"{k:04d}.jpg", quality=90)
    return DatasetConverter.create_chunked_dataset(
        folder, root / "images", chunk_size=64, split_ratios={"train": 1.0}, progress=False
    )


def image_loader(path: Path) -> FlashDataLoader:
    from datalflash import ImageDecode

    decode = ImageDecode(size=64, processes=2)
    return FlashDataLoader(ChunkedDataset(path), batch_size=32, shuffle=True, seed=0, collate={"0": decode})


def image_breaks(path: Path, times: int) -> None:
    loader = image_loader(path)
    for i in range(times):
        for k, _ in enumerate(loader):
            if k == i % 3:
                break


def image_epochs(path: Path, epochs: int) -> None:
    loader = image_loader(path)
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
        path = make_image_store(Path(tmp))
        for name, run, times in (
            (f"{args.breaks // 10} early breaks, decoding processes", image_breaks, args.breaks // 10),
            (f"{args.epochs} epochs, 2 decoding processes", image_epochs, args.epochs),
        ):
            run(path, 1)
            before = counts()
            run(path, times)
            after = counts()
            rows.append(("zarr, JPEG", name, before, after))
    print("| backend | phase | open files | threads | child processes | /dev/shm entries | RSS growth |")
    print("|---|---|---|---|---|---|---|")
    for backend, name, before, after in rows:
        cells = [f"{before[k]} -> {after[k]}" for k in ("fds", "threads", "children", "shm")]
        growth = (after["rss"] - before["rss"]) / 2**20
        print(f"| {backend} | {name} | {' | '.join(cells)} | {growth:+.1f} MiB |")


if __name__ == "__main__":
    main()
