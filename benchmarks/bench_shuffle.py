"""Shuffle quality against memory: the window knob on a label-sorted store.

The hard case: 50,000 CIFAR-shaped samples written in label order (``shuffle=False``), 10
classes; the train split is the first 40,000 (8 labels). For each window size the loader's epoch
is scored with :func:`datalflash.shuffle_quality` at batch 64: mean distinct labels per batch and
mean displacement, each over its i.i.d. value (1.0 = as good as a uniform permutation). Memory
is what the loader holds for chunks: the window being served plus the next one being read (one
buffer when a single window holds the split).
Chunk reads are counted: each chunk must be read once per epoch.

Usage: ``python benchmarks/bench_shuffle.py [--chunk-sizes 10000 1000]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import save_results
from torch.utils.data import TensorDataset

from datalflash import shuffle_quality
from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.loading.loader import DEFAULT_READ_AHEAD
from datalflash.utils import DatasetConverter

N, CLASSES, BATCH = 50_000, 10, 64


def score(path: Path, window: int | None) -> dict:
    data = ChunkedDataset(path, "train")
    reads: dict[int, int] = {}
    read = data.store.read_chunks

    def counted(split, chunks, out=None):
        for c in chunks:
            reads[c] = reads.get(c, 0) + 1
        return read(split, chunks, out)

    data.store.read_chunks = counted
    loader = FlashDataLoader(data, batch_size=BATCH, shuffle=True, seed=0, window_chunks=window)
    q = shuffle_quality(loader, label=lambda b: b[1], position=lambda b: b[2])
    store = data.store
    chunk_bytes = store.chunk_size * sum(f.sample_nbytes for f in store.fields.values())
    windows = -(-store.num_chunks("train") // loader.window_chunks)  # one buffer if a single window
    return {
        "chunk_size": store.chunk_size,
        "window_chunks": loader.window_chunks,
        "default": window is None,
        "memory_MiB": round(min(2, windows) * loader.window_chunks * chunk_bytes / 2**20, 1),
        "distinct_labels": round(q.distinct_labels, 2),
        "iid_distinct_labels": round(q.iid_distinct_labels, 2),
        "label_mixing_ratio": round(q.label_mixing_ratio, 3),
        "displacement_ratio": round(q.displacement_ratio, 3),
        "max_reads_per_chunk": max(reads.values()),
        "chunks": store.num_chunks("train"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[10_000, 1_000])
    args = parser.parse_args()
    labels = torch.arange(CLASSES).repeat_interleave(N // CLASSES)
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        for chunk_size in args.chunk_sizes:
            path = DatasetConverter.create_chunked_dataset(
                TensorDataset(images, labels, torch.arange(N)),
                Path(tmp) / f"c{chunk_size}",
                chunk_size=chunk_size,
                shuffle=False,
                backend="memmap",
                progress=False,
            )
            chunks = ChunkedDataset(path, "train").store.num_chunks("train")
            windows = sorted({1, 2, 4, 8, 16, 32, chunks} & set(range(1, chunks + 1)))
            rows += [score(path, w) for w in windows] + [score(path, None)]
    lines = [
        (
            f"{N} CIFAR-shaped samples stored sorted by label ({CLASSES} classes), train split = first 40,000; "
            f"batch {BATCH}; default read_ahead_bytes {DEFAULT_READ_AHEAD // 2**20} MiB"
        ),
        "",
        (
            "| chunk size | window (chunks) | chunk memory | distinct labels / batch (iid) | label mixing "
            "| displacement | reads per chunk |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        window = f"{r['window_chunks']} of {r['chunks']}" + (" (default)" if r["default"] else "")
        lines.append(
            f"| {r['chunk_size']:,} | {window} | {r['memory_MiB']} MiB "
            f"| {r['distinct_labels']} ({r['iid_distinct_labels']}) "
            f"| {r['label_mixing_ratio']:.3f} | {r['displacement_ratio']:.3f} | {r['max_reads_per_chunk']} |"
        )
    table = "\n".join(lines)
    print(table)
    save_results("shuffle", rows, table)


if __name__ == "__main__":
    main()
