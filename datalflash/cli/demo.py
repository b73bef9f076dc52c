"""The main job: convert real data (scikit-learn's bundled 8x8 digits) into a Zarr store, train a
small model from it with ``get_dataloaders``, then report test accuracy and loading speed; then
the speed side on a CIFAR-10-shaped synthetic set (20,000 x 3x32x32 uint8)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datalflash.cli.bench import bench_store, timed_rate
from datalflash.convert import DatasetConverter
from datalflash.loading import get_dataloaders
from datalflash.store import open_store


def digits_dataset() -> TensorDataset:
    """1,797 real handwritten digits (8x8, 0..16 gray levels) shipped with scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("the demo needs scikit-learn: pip install 'datalflash[demo]'") from e
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return TensorDataset(images, torch.from_numpy(digits.target.astype(np.int64)))


DEFAULT_WORKDIR = "datalflash-demo"


def run(workdir: str | None = None, epochs: int = 15, batch_size: int = 64, seed: int = 0) -> float:
    """Run the demo, its stores kept in ``workdir`` (default ``./datalflash-demo``); returns test
    accuracy."""
    torch.manual_seed(seed)
    workdir = workdir or DEFAULT_WORKDIR
    path = Path(workdir) / "digits_store"
    start = time.perf_counter()
    dataset = digits_dataset()
    DatasetConverter.create_chunked_dataset(dataset, path, chunk_size=256, seed=seed, overwrite=True, progress=False)
    loaders = get_dataloaders(path, batch_size, seed=seed)
    store = open_store(path)
    sizes = {split: store.num_samples(split) for split in store.splits}
    print(
        f"converted {len(dataset)} real 8x8 digits into a Zarr store at {path} "
        f"({time.perf_counter() - start:.2f}s); splits {sizes}"
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    accuracy = train_and_test(model, loaders, epochs, lr=1e-2)
    flash = statistics.median(timed_rate(loaders["train"], math.inf)[0] for _ in range(5))
    plain = TensorDataset(
        *[torch.from_numpy(a) for a in store.read_chunks("train", range(store.num_chunks("train"))).values()]
    )
    baseline = statistics.median(timed_rate(DataLoader(plain, batch_size, shuffle=True), math.inf)[0] for _ in range(5))
    print(
        f"loading the train split: FlashDataLoader {flash:,.0f} samples/s, torch DataLoader "
        f"(same data in RAM) {baseline:,.0f} samples/s ({flash / baseline:.1f}x)"
    )
    speed_check(Path(workdir) / "cifar_shaped_store", seed)
    print(
        f"the stores are kept in {Path(workdir).resolve()} (try: datalflash info {path}); "
        "remove that directory when done"
    )
    return accuracy


def train_and_test(model: nn.Module, loaders: Mapping[str, Iterable], epochs: int, lr: float) -> float:
    """Train ``model`` on ``loaders["train"]`` for ``epochs`` (Adam, cross-entropy), print and
    return its accuracy on ``loaders["test"]``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for images, labels in loaders["train"]:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loaders["test"]:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    accuracy = correct / total
    print(f"test accuracy after {epochs} epochs: {accuracy:.3f}")
    return accuracy


def speed_check(path: Path, seed: int = 0, n: int = 20_000) -> None:
    """Convert a CIFAR-10-shaped synthetic set and compare loaders on it (``datalflash bench``)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    DatasetConverter.create_chunked_dataset(TensorDataset(images, labels), path, overwrite=True, progress=False)
    print(f"speed: {n:,} CIFAR-10-shaped samples in a Zarr store, train split, batch 256, shuffled")
    rows = bench_store(path, epochs=2, max_seconds=3)
    for r in rows:
        note = "" if r["full_epoch"] else " (3 s cap)"
        print(f"  {r['loader']:<48} {r['samples_per_s']:>10,} samples/s{note}")
