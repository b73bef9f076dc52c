"""End-to-end training: a small CNN on CPU, fed by torch's DataLoader or by FlashDataLoader.

For each loader one epoch over CIFAR-shaped data is trained (uint8 images turned into floats in
the step, as a real pipeline would); the time spent waiting for the next batch (``next()`` on
the loader) and the time in the step are summed separately, so the table says what share of
the epoch the model waited for data. A control, batches made before the epoch, trains first and
last: the model's own time, which shows when the machine rather than a loader slowed the steps.
Each loader runs idle and with one busy process per core (another job, or the rest of a
training process, keeping the cores busy).

Usage: ``python benchmarks/bench_training.py [--samples 20000]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_ragged import _nothing, busy_cores
from common import cifar_like, save_results
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset
from datalflash.utils import DatasetConverter

BATCH = 256


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def train_epoch(loader) -> dict:
    """One epoch; returns epoch seconds, seconds waiting for data, samples."""
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    waited = n = 0
    start = time.perf_counter()
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            images, labels = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - t
        loss = nn.functional.cross_entropy(model(images.float().div_(255)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(labels)
    total = time.perf_counter() - start
    return {
        "epoch_s": round(total, 3),
        "data_wait_s": round(waited, 3),
        "wait_share": round(waited / total, 4),
        "samples": n,
        "samples_per_s": round(n / total),
    }


def measure(x: torch.Tensor, y: torch.Tensor, workdir: Path, workers: int = 2) -> list[dict]:
    """Rows for torch's DataLoader (0 and ``workers`` workers) and FlashDataLoader (RAM, zarr store)."""
    store = DatasetConverter.create_chunked_dataset(
        TensorDataset(x, y), workdir / "train_store", split_ratios={"train": 1.0}, progress=False, overwrite=True
    )
    premade = [(x[i : i + BATCH].clone(), y[i : i + BATCH].clone()) for i in range(0, len(x), BATCH)]
    loaders = {
        "control: batches made before, no loader (first)": premade,
        "torch DataLoader, TensorDataset, 0 workers": DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True),
        f"torch DataLoader, TensorDataset, {workers} workers": DataLoader(
            TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=True
        ),
        "FlashDataLoader, FlashDataset (RAM)": FlashDataLoader(FlashDataset(x, y), batch_size=BATCH, shuffle=True),
        "FlashDataLoader, zarr store": FlashDataLoader(ChunkedDataset(store), batch_size=BATCH, shuffle=True),
        "control: batches made before, no loader (last)": premade,
    }
    rows = []
    for load in ("idle", "under load"):
        with busy_cores() if load == "under load" else _nothing():
            for name, loader in loaders.items():
                train_epoch(loader)  # warm up: caches, worker start, allocator
                rows.append({"loader": name, "load": load, **train_epoch(loader)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| loader | load | epoch s | waiting for data | share of epoch | samples/s |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['loader']} | {r['load']} | {r['epoch_s']:.2f} | {r['data_wait_s']:.2f} s | {100 * r['wait_share']:.1f}% "
        f"| {r['samples_per_s']:,} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    x, y = cifar_like(args.samples)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        rows = measure(x, y, Path(tmp))
    text = (
        f"Small CNN on CPU, {args.samples} CIFAR-shaped samples, batch {BATCH}, one epoch after a warm-up epoch\n\n"
        + table(rows)
    )
    print(text)
    save_results("training", rows, text)


if __name__ == "__main__":
    main()
