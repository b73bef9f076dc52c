"""Latency hiding: a store behind a network with 20 ms per request, against the same store locally.

The store is copied into an in-memory fsspec filesystem whose every request first sleeps
``--delay`` seconds (a stand-in for object storage: each chunk is one request). Epoch throughput
of FlashDataLoader over it (``slowmem://`` URL) is compared, in the same run, with the local
copy read from disk (warm cache). CIFAR-shaped data, batch 256, shuffled, median of ``--repeat``,
for the default chunk size and smaller ones (more requests per epoch).

Usage: ``python benchmarks/bench_remote.py [--delay 0.02] [--chunk-sizes 10000 2000 500]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
from common import cifar_like, save_results
from fsspec.implementations.memory import MemoryFileSystem
from torch.utils.data import TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.store import open_store
from datalflash.utils import DatasetConverter

BATCH = 256


class SlowMemoryFileSystem(MemoryFileSystem):
    """An in-memory filesystem whose every request (every file opened) waits ``delay`` seconds first."""

    protocol = "slowmem"
    delay = 0.02
    requests = 0

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("slowmem://"):
            path = "memory://" + path[len("slowmem://") :]
        return super()._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        SlowMemoryFileSystem.requests += 1
        time.sleep(self.delay)
        if start is None and end is None:  # the whole object, handed over without a copy, as a client's buffer
            return self.store[self._strip_protocol(path)].getbuffer()
        return super().cat_file(path, start=start, end=end, **kwargs)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        """Several objects at once, concurrently, as async filesystems (s3fs, gcsfs) fetch them."""
        if not isinstance(path, list):
            return super().cat(path, recursive=recursive, on_error=on_error, **kwargs)
        with ThreadPoolExecutor(max(1, min(16, len(path)))) as pool:
            return dict(zip(path, pool.map(self.cat_file, path)))

    def _open(self, path, mode="rb", **kwargs):
        SlowMemoryFileSystem.requests += 1
        time.sleep(self.delay)
        return super()._open(path, mode=mode, **kwargs)


def epoch_rate(store, n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        loader = FlashDataLoader(ChunkedDataset(store, "train"), batch_size=BATCH, shuffle=True)
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[10_000, 2_000, 500])
    args = parser.parse_args()
    fsspec.register_implementation("slowmem", SlowMemoryFileSystem, clobber=True)
    SlowMemoryFileSystem.delay = args.delay
    x, y = cifar_like(args.samples)
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        for chunk_size in args.chunk_sizes:
            local = DatasetConverter.create_chunked_dataset(
                TensorDataset(x, y),
                Path(tmp) / f"c{chunk_size}",
                chunk_size=chunk_size,
                split_ratios={"train": 1.0},
                progress=False,
            )
            fsspec.filesystem("slowmem").put(str(local), f"/c{chunk_size}", recursive=True)
            local_rate = epoch_rate(open_store(local), args.samples, args.repeat)
            before = SlowMemoryFileSystem.requests
            remote_rate = epoch_rate(open_store(f"slowmem://c{chunk_size}"), args.samples, args.repeat)
            requests = (SlowMemoryFileSystem.requests - before) / args.repeat
            rows.append(
                {
                    "chunk_size": chunk_size,
                    "requests_per_epoch": round(requests),
                    "local_samples_per_s": round(local_rate),
                    "remote_samples_per_s": round(remote_rate),
                    "ratio": round(remote_rate / local_rate, 3),
                }
            )
    lines = [
        (
            f"{args.samples} CIFAR-shaped samples, batch {BATCH}, shuffled, {args.delay * 1e3:.0f} ms per request, "
            f"median of {args.repeat}"
        ),
        "",
        "| chunk size | requests / epoch | local samples/s | remote samples/s | remote / local |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['chunk_size']:,} | {r['requests_per_epoch']} | {r['local_samples_per_s']:,} | "
        f"{r['remote_samples_per_s']:,} | {r['ratio']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    save_results("remote", rows, table)


if __name__ == "__main__":
    main()
