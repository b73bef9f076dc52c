"""A store larger than RAM, read cold: one shuffled epoch against a sequential read of the same files.

For each backend (memmap and zarr by default) a store of incompressible samples about 1.5x the
machine's RAM is converted, then, in the same run:

* the disk's sequential read bandwidth: every file of the store read in order, in 8 MiB reads,
  after dropping its pages from the cache (``dd``-style);
* one shuffled epoch of ``get_dataloaders(store, ...)["train"]`` in a fresh process, the cache
  dropped first: its rate against the sequential read, the time to its first batch, its peak RSS
  above the start (target: within ``read_ahead_bytes`` + 300 MB), and how much the page cache
  grew (pages of a store that cannot stay cached crowd out everything else that is);
* whether memory a model holds stays resident: a block of anonymous memory touched before the
  epoch, its resident share read from ``/proc/self/smaps_rollup`` after it.

The store is deleted after each backend (both together would need 3x RAM of disk).

Usage: ``python benchmarks/bench_larger_than_ram.py [--gib 35] [--backends memmap zarr] [--dir ~]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_loader import evict
from common import save_results
from torch.utils.data import Dataset

from datalflash.utils import DatasetConverter

SAMPLE = (4, 128, 128)  # uint8, 64 KiB: an image-sized sample
BATCH = 256
BUDGET = 512 * 2**20  # the default read_ahead_bytes


class Noise(Dataset):
    """``n`` incompressible uint8 samples of :data:`SAMPLE` with int64 labels, made on the fly
    (a batch at a time, so conversion measures the store, not the source)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        rng = np.random.default_rng(indices[0])
        block = rng.integers(0, 256, (len(indices), *SAMPLE), dtype=np.uint8)
        return [(block[k], int(i) % 10) for k, i in enumerate(indices)]


def mem_info(key: str) -> int:
    """A ``/proc/meminfo`` figure, in bytes."""
    with open("/proc/meminfo") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def sequential_read(path: Path) -> tuple[float, int]:
    """Seconds and bytes to read every file under ``path`` in order, in 8 MiB reads, cold."""
    os.sync()  # (pages not yet written back cannot be dropped)
    evict(path)
    buf = bytearray(8 * 2**20)
    total = 0
    start = time.perf_counter()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return time.perf_counter() - start, total


EPOCH_SCRIPT = """
import json, sys, time
import numpy as np

def status(key):  # VmHWM / VmRSS, in bytes
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1]) * 1024

def cached():
    line = next(l for l in open("/proc/meminfo") if l.startswith("Cached:"))
    return int(line.split()[1]) * 1024

def anon_resident(block):  # resident share of the block (/proc/self/smaps_rollup has no per-range figure)
    import mmap, ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (block.nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    addr = block.ctypes.data - block.ctypes.data % mmap.PAGESIZE
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(block.nbytes), vec) != 0:
        return float("nan")
    return sum(v & 1 for v in vec) / pages

from datalflash.core import get_dataloaders
model = np.ones(int(sys.argv[2]), dtype=np.uint8)  # (memory a model holds, touched)
base, cache0 = status("VmRSS"), cached()
loader = get_dataloaders(sys.argv[1], int(sys.argv[3]), read_ahead_bytes=int(sys.argv[4]))["train"]
start = time.perf_counter()
it = iter(loader)
next(it)
first = time.perf_counter() - start
n = 0
for images, labels in it:
    n += len(labels)
seconds = time.perf_counter() - start
print(json.dumps({
    "seconds": seconds, "first_batch_s": first, "samples": n + int(sys.argv[3]),
    "rss_growth": status("VmHWM") - base, "cache_growth": cached() - cache0,
    "model_resident": anon_resident(model),
}))
"""


def measure(backend: str, n: int, workdir: Path, model_bytes: int) -> dict:
    """Convert, read sequentially, then one shuffled cold epoch (a fresh process)."""
    start = time.perf_counter()
    store = DatasetConverter.create_chunked_dataset(
        Noise(n), workdir / backend, split_ratios={"train": 1.0}, backend=backend, progress=False, num_workers=2
    )
    convert_s = time.perf_counter() - start
    try:
        seq_s, nbytes = sequential_read(store)
        evict(store)
        done = subprocess.run(
            [sys.executable, "-c", EPOCH_SCRIPT, str(store), str(model_bytes), str(BATCH), str(BUDGET)],
            capture_output=True,
            text=True,
            check=True,
        )
        epoch = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return {
        "backend": backend,
        "store_gib": round(nbytes / 2**30, 2),
        "convert_MB_s": round(nbytes / convert_s / 1e6),
        "sequential_MB_s": round(nbytes / seq_s / 1e6),
        "epoch_MB_s": round(nbytes / epoch["seconds"] / 1e6),
        "epoch_over_sequential": round(seq_s / epoch["seconds"], 3),
        "first_batch_s": round(epoch["first_batch_s"], 3),
        "rss_growth_MB": round(epoch["rss_growth"] / 1e6),
        "rss_target_MB": round((BUDGET + 300e6) / 1e6),
        "cache_growth_MB": round(epoch["cache_growth"] / 1e6),
        "model_resident": round(epoch["model_resident"], 3),
        "samples": epoch["samples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ram = mem_info("MemTotal")
    parser.add_argument("--gib", type=float, default=round(1.5 * ram / 2**30, 1), help="store size (default 1.5x RAM)")
    parser.add_argument("--backends", nargs="+", default=["memmap", "zarr"])
    parser.add_argument("--model-gib", type=float, default=2.0, help="anonymous memory held through the epoch")
    parser.add_argument("--dir", type=Path, default=Path.home())
    args = parser.parse_args()
    n = int(args.gib * 2**30 // np.prod(SAMPLE))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for backend in args.backends:
            rows.append(measure(backend, n, Path(tmp), int(args.model_gib * 2**30)))
            print(rows[-1], flush=True)
    lines = [
        (
            f"{n:,} incompressible samples of {SAMPLE} uint8 ({args.gib:g} GiB; RAM {ram / 2**30:.1f} GiB), "
            f"batch {BATCH}, shuffled, read_ahead_bytes {BUDGET / 2**20:.0f} MiB, cold cache, one epoch"
        ),
        "",
        (
            "| backend | store GiB | sequential read MB/s | epoch MB/s | epoch / sequential (>= 0.8) | first batch s "
            "| RSS growth MB (<= budget + 300) | page cache growth MB | model memory resident | conversion MB/s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['backend']} | {r['store_gib']} | {r['sequential_MB_s']:,} | {r['epoch_MB_s']:,} "
        f"| {r['epoch_over_sequential']:.2f} | {r['first_batch_s']:.2f} "
        f"| {r['rss_growth_MB']:,} (<= {r['rss_target_MB']}) "
        f"| {r['cache_growth_MB']:,} | {r['model_resident']:.0%} | {r['convert_MB_s']:,} |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    save_results("larger_than_ram", rows, text)


if __name__ == "__main__":
    main()
