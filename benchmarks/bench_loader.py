"""Loader throughput, side by side in one run (samples/s and ratio to the in-RAM limit).

CIFAR-10-shaped data (50,000 x 3x32x32 uint8 + int64 label), batch 256, shuffled:

* limit: a bare ``torch.index_select(out=)`` loop over a random permutation (torch's intra-op
  threads: all cores), and the same gather in one thread (numpy's ``take``, as the loader makes
  it, keeping off those threads, which collapse under load; see ``bench_under_load.py``);
* torch's DataLoader over a per-item TensorDataset (0 workers);
* FlashDataLoader over a FlashDataset (RAM) and over a store split per backend (warm cache), in
  reading threads and (zarr, hdf5) in 2 worker processes: the first epoch of a new loader, and
  later epochs of one loader, shuffled and not, with the split kept decoded (it fits the default
  ``read_ahead_bytes``) and streamed in 32 MiB windows decoded every epoch (a 64 MiB budget);
* cold cache: memmap store after ``posix_fadvise(DONTNEED)``, against the disk's sequential read
  bandwidth measured on the same files;
* memory: peak RSS streaming a store much larger than the read-ahead budget;
* time to the first batch of a new loader, warm and cold, reading the whole split as one window
  (the default when it fits ``read_ahead_bytes``) or streamed in 32 MiB windows.

Usage: ``python benchmarks/bench_loader.py [--repeat 3] [--samples 50000]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cifar_like, save_results
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset
from datalflash.utils import DatasetConverter

BATCH = 256
STREAM_BUDGET = 64 * 2**20  # (32 MiB windows, read and decoded every epoch, as a split larger than the budget)


def limit_epoch(x: torch.Tensor, y: torch.Tensor) -> None:
    perm = torch.randperm(len(x))
    bx = torch.empty((BATCH, *x.shape[1:]), dtype=x.dtype)
    by = torch.empty(BATCH, dtype=y.dtype)
    for i in range(0, len(x) - BATCH + 1, BATCH):
        idx = perm[i : i + BATCH]
        torch.index_select(x, 0, idx, out=bx)
        torch.index_select(y, 0, idx, out=by)


def one_thread_limit_epoch(x: torch.Tensor, y: torch.Tensor, shuffle: bool = True) -> None:
    """The same gather in one thread, as the loader makes it (numpy's ``take``): the loader
    keeps its gathers off torch's intra-op threads, which collapse under load. Unshuffled, each
    batch is a copy of consecutive rows: what an unshuffled epoch can reach."""
    perm = torch.randperm(len(x)).numpy() if shuffle else np.arange(len(x))
    xs, ys = x.numpy(), y.numpy()
    bx = np.empty((BATCH, *x.shape[1:]), dtype=xs.dtype)
    by = np.empty(BATCH, dtype=ys.dtype)
    for i in range(0, len(x) - BATCH + 1, BATCH):
        idx = perm[i : i + BATCH]
        xs.take(idx, axis=0, out=bx, mode="clip")
        ys.take(idx, axis=0, out=by, mode="clip")


def loader_epoch(loader) -> None:
    for _ in loader:
        pass


def time_to_first_batch(loader) -> float:
    """Seconds from ``iter(loader)`` to its first batch (the iterator then closed)."""
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    return seconds


def evict(path: Path) -> None:
    """Drop the page cache of every file under ``path``."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sequential_read(path: Path) -> float:
    """Seconds to read every file under ``path`` sequentially in 8 MiB reads, cold."""
    evict(path)
    buf = bytearray(8 * 2**20)
    start = time.perf_counter()
    for f in sorted(path.rglob("*.npy")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - start


RSS_SCRIPT = """
import sys, torch

def peak_rss():  # VmHWM, in bytes: unlike ru_maxrss it is not inherited across fork + exec
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024

from datalflash.core import get_dataloaders
base = peak_rss()
loader = get_dataloaders(sys.argv[1], 256, read_ahead_bytes=int(sys.argv[2]))["train"]
for _ in loader:
    pass
print(peak_rss() - base)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.samples
    x, y = cifar_like(n)
    nbytes = x.numel() + y.numel() * 8
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        tmp = Path(tmp)
        stores = {}
        for backend in ("zarr", "memmap", "hdf5"):
            path = DatasetConverter.create_chunked_dataset(
                TensorDataset(x, y), tmp / backend, split_ratios={"train": 1.0}, backend=backend, progress=False
            )
            stores[backend] = ChunkedDataset(path, "train")
        runs = {
            "limit: index_select(out=) loop": lambda: limit_epoch(x, y),
            "limit, one thread: numpy take(out=) loop": lambda: one_thread_limit_epoch(x, y),
            "limit, one thread, unshuffled": lambda: one_thread_limit_epoch(x, y, shuffle=False),
            "torch DataLoader, TensorDataset": lambda: loader_epoch(
                DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
            ),
            "FlashDataLoader, FlashDataset (RAM)": lambda: loader_epoch(
                FlashDataLoader(FlashDataset(x, y), batch_size=BATCH, shuffle=True)
            ),
            "torch DataLoader, FlashDataset (__getitems__)": lambda: loader_epoch(
                DataLoader(FlashDataset(x, y), batch_size=BATCH, shuffle=True)
            ),
        }
        for backend, data in stores.items():
            runs[f"FlashDataLoader, {backend} store (warm)"] = lambda data=data: loader_epoch(
                FlashDataLoader(data, batch_size=BATCH, shuffle=True)
            )
        kept: dict[str, FlashDataLoader] = {}  # (built once, iterated epoch after epoch, as in training)
        for backend, data in stores.items():
            for shuffle in (True, False):
                order = "shuffled" if shuffle else "unshuffled"
                kept[f"{backend}, {order}, kept"] = FlashDataLoader(data, batch_size=BATCH, shuffle=shuffle)
                kept[f"{backend}, {order}, streamed"] = FlashDataLoader(
                    data, batch_size=BATCH, shuffle=shuffle, read_ahead_bytes=STREAM_BUDGET
                )
        for key, loader in kept.items():
            loader_epoch(loader)  # (the first epoch: reads the split; a kept one holds it from then on)
            backend, order, how = key.split(", ")
            name = f"FlashDataLoader, {backend} store (warm), later epochs, {how}, {order}"
            runs[name] = lambda loader=loader: loader_epoch(loader)
        workers = {}
        for backend in ("zarr", "hdf5"):  # processes started once (persistent_workers), as torch users run them
            workers[backend] = FlashDataLoader(
                stores[backend], batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True
            )
            runs[f"FlashDataLoader, {backend} store (warm), 2 worker processes"] = lambda loader=workers[backend]: (
                loader_epoch(loader)
            )
        times = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        for loader in workers.values():
            loader.close()

        cold, disk = [], []
        for _ in range(args.repeat):
            disk.append(sequential_read(tmp / "memmap"))
            evict(tmp / "memmap")
            start = time.perf_counter()
            loader_epoch(FlashDataLoader(stores["memmap"], batch_size=BATCH, shuffle=True))
            cold.append(time.perf_counter() - start)

        first_batch = {}  # seconds from iter() to the first batch of a new loader
        for backend in ("zarr", "memmap"):
            for cache in ("warm", "cold"):
                for how, budget_bytes in (("whole split", None), ("streamed", STREAM_BUDGET)):
                    seconds = []
                    for _ in range(args.repeat):
                        if cache == "cold":
                            evict(tmp / backend)
                        options = {} if budget_bytes is None else {"read_ahead_bytes": budget_bytes}
                        seconds.append(time_to_first_batch(FlashDataLoader(stores[backend], BATCH, True, **options)))
                    first_batch[f"{backend}, {cache}, {how}"] = statistics.median(seconds)

        budget = 64 * 2**20
        big = DatasetConverter.create_chunked_dataset(
            TensorDataset(x.repeat(4, 1, 1, 1), y.repeat(4)), tmp / "big", split_ratios={"train": 1.0}, progress=False
        )
        rss = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(big), str(budget)], capture_output=True, text=True, check=True
        )
        rss_growth = int(rss.stdout.strip())

    limit = n / statistics.median(times["limit: index_select(out=) loop"])
    one_thread = n / statistics.median(times["limit, one thread: numpy take(out=) loop"])
    rows = []
    for name, t in times.items():
        rate = n / statistics.median(t)
        rows.append(
            {
                "loader": name,
                "samples_per_s": round(rate),
                "ratio_to_limit": round(rate / limit, 3),
                "ratio_to_one_thread_limit": round(rate / one_thread, 3),
            }
        )
    disk_bw = nbytes / statistics.median(disk)
    cold_bw = nbytes / statistics.median(cold)
    rows.append(
        {
            "loader": "FlashDataLoader, memmap store (cold)",
            "samples_per_s": round(n / statistics.median(cold)),
            "ratio_to_limit": round(n / statistics.median(cold) / limit, 3),
            "ratio_to_one_thread_limit": round(n / statistics.median(cold) / one_thread, 3),
            "MB_per_s": round(cold_bw / 1e6),
            "ratio_to_disk": round(cold_bw / disk_bw, 3),
        }
    )
    torch_rate = next(r["samples_per_s"] for r in rows if r["loader"] == "torch DataLoader, TensorDataset")
    lines = [
        f"{n} CIFAR-shaped samples, batch {BATCH}, shuffled, median of {args.repeat}",
        "",
        "| loader | samples/s | x limit | x one-thread limit | x torch DataLoader |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['loader']} | {r['samples_per_s']:,} | {r['ratio_to_limit']:.2f} "
        f"| {r['ratio_to_one_thread_limit']:.2f} | {r['samples_per_s'] / torch_rate:.1f} |"
        for r in rows
    ]
    rate_of = {r["loader"]: r["samples_per_s"] for r in rows}
    bare = rate_of["limit, one thread: numpy take(out=) loop"] / rate_of["limit, one thread, unshuffled"]
    lines += ["", "Later epochs, shuffled / unshuffled (target: within 1.3x):", ""]
    lines.append(f"- the bare one-thread gather loop: {bare:.2f}")
    rows.append({"loader": "bare one-thread loop: shuffled / unshuffled", "ratio": round(bare, 3)})
    for backend in ("zarr", "memmap", "hdf5"):
        for how in ("kept", "streamed"):
            prefix = f"FlashDataLoader, {backend} store (warm), later epochs, {how}"
            ratio = rate_of[f"{prefix}, shuffled"] / rate_of[f"{prefix}, unshuffled"]
            lines.append(f"- {backend}, {how}: {ratio:.2f}")
            rows.append({"loader": f"{backend} {how}: shuffled / unshuffled", "ratio": round(ratio, 3)})
    lines += ["", "Time to the first batch of a new loader (median):", ""]
    for key, seconds in first_batch.items():
        lines.append(f"- {key}: {seconds * 1000:.0f} ms")
        rows.append({"loader": f"time to first batch, {key}", "seconds": round(seconds, 4)})
    lines += [
        "",
        (
            f"Cold cache: memmap epoch at {cold_bw / 1e6:.0f} MB/s = {cold_bw / disk_bw:.2f} x the disk's "
            f"sequential read ({disk_bw / 1e6:.0f} MB/s, same files, same run)."
        ),
        (
            f"Memory: streaming a {4 * nbytes / 2**20:.0f} MiB zarr store with a {budget / 2**20:.0f} MiB read-ahead "
            f"budget grew peak RSS by {rss_growth / 2**20:.0f} MiB (target: budget + 300 MiB)."
        ),
    ]
    rows.append(
        {
            "loader": "rss",
            "store_MiB": round(4 * nbytes / 2**20),
            "budget_MiB": budget // 2**20,
            "rss_growth_MiB": round(rss_growth / 2**20),
        }
    )
    table = "\n".join(lines)
    print(table)
    save_results("loader", rows, table)


if __name__ == "__main__":
    main()
