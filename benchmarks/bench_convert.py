"""Conversion throughput of each backend against plain ``np.save`` of the same arrays (the limit).

CIFAR-10-shaped data (50,000 x 3x32x32 uint8 + int64 label) from an in-memory TensorDataset:
noisy images LZ4 cannot compress (as with photographs), and for the Zarr codecs also "dark" ones
(pixels below 128 set to 0) that they do compress. Every configuration runs ``--repeat`` times,
interleaved with ``np.save`` (of the noisy arrays: the same number of bytes), so the ratios
compare runs made side by side on the same (noisy, shared) machine. Usage::

    python benchmarks/bench_convert.py [--samples 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cifar_like, dir_bytes, save_results
from torch.utils.data import TensorDataset

from datalflash.utils import DatasetConverter

CONFIGS = [  # (backend, compression, shuffle, data)
    ("memmap", "default", True, "noisy"),
    ("memmap", "default", False, "noisy"),
    ("zarr", "lz4", True, "noisy"),
    ("zarr", "lz4", False, "noisy"),
    ("zarr", "zstd", True, "noisy"),
    ("zarr", "none", True, "noisy"),
    ("zarr", "lz4", True, "dark"),
    ("zarr", "zstd", True, "dark"),
    ("hdf5", "none", True, "noisy"),
    ("hdf5", "none", False, "noisy"),
    ("hdf5", "gzip", True, "noisy"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()

    images, labels = cifar_like(args.samples)
    datasets = {
        "noisy": TensorDataset(images, labels),
        "dark": TensorDataset(torch.where(images < 128, 0, images), labels),
    }
    nbytes = images.numel() * images.element_size() + labels.numel() * 8
    times: dict[str, list[float]] = {"np.save": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        tmp = Path(tmp)
        for _ in range(args.repeat):
            start = time.perf_counter()
            (tmp / "npsave").mkdir()
            np.save(tmp / "npsave" / "images.npy", images.numpy())
            np.save(tmp / "npsave" / "labels.npy", labels.numpy())
            times["np.save"].append(time.perf_counter() - start)
            shutil.rmtree(tmp / "npsave")
            for backend, compression, shuffle, data in CONFIGS:
                key = (
                    f"{backend}-{compression}"
                    + ("" if shuffle else " (shuffle=False)")
                    + ("" if data == "noisy" else f" ({data} images)")
                )
                if compression == "gzip" and key in times:
                    continue  # 4 s a run: once is enough
                start = time.perf_counter()
                DatasetConverter.create_chunked_dataset(
                    datasets[data],
                    tmp / key,
                    chunk_size=args.chunk_size,
                    backend=backend,
                    compression=compression,
                    shuffle=shuffle,
                    progress=False,
                )
                times.setdefault(key, []).append(time.perf_counter() - start)
                sizes[key] = dir_bytes(tmp / key)
                shutil.rmtree(tmp / key)

    limit = statistics.median(times["np.save"])
    rows = []
    for key, runs in times.items():
        t = statistics.median(runs)
        rows.append(
            {
                "writer": key,
                "seconds": round(t, 4),
                "samples_per_s": round(args.samples / t),
                "MB_per_s": round(nbytes / t / 1e6, 1),
                "ratio_to_np_save": round(limit / t, 3),
                "compression_ratio": round(nbytes / sizes[key], 2) if key in sizes else 1.0,
            }
        )
    lines = [
        f"Conversion of {args.samples} CIFAR-shaped samples ({nbytes / 1e6:.0f} MB), median of {args.repeat}",
        "",
        "| writer | s | samples/s | MB/s | x np.save | compression |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['writer']} | {r['seconds']:.3f} | {r['samples_per_s']:,} | {r['MB_per_s']} | "
        f"{r['ratio_to_np_save']:.2f} | {r['compression_ratio']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    save_results("convert", rows, table)


if __name__ == "__main__":
    main()
