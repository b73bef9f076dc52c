"""The main job: convert real data (scikit-learn's bundled 8x8 digits) into a Zarr store, load it
back and train a small model on it, then report test accuracy and loading speed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datalflash.store import open_store
from datalflash.utils import DatasetConverter


def digits_dataset() -> torch.utils.data.TensorDataset:
    """1,797 real handwritten digits (8x8, 0..16 gray levels) shipped with scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("the demo needs scikit-learn: pip install 'datalflash[demo]'") from e
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return torch.utils.data.TensorDataset(images, torch.from_numpy(digits.target.astype(np.int64)))


def _split_tensors(store, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = store.read_chunks(split, range(store.num_chunks(split)))
    return torch.from_numpy(arrays["0"]), torch.from_numpy(arrays["1"])


def run(workdir: str | None = None, epochs: int = 15, batch_size: int = 64, seed: int = 0) -> float:
    """Run the demo; returns test accuracy."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(workdir or tmp) / "digits_store"
        start = time.perf_counter()
        DatasetConverter.create_chunked_dataset(
            digits_dataset(), path, chunk_size=256, seed=seed, overwrite=True, progress=False
        )
        store = open_store(path)
        print(f"converted {sum(s.num_samples for s in store.splits.values())} digits into {store}"
              f" in {time.perf_counter() - start:.2f}s")
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        x_train, y_train = _split_tensors(store, "train")
        for epoch in range(epochs):
            order = torch.randperm(len(y_train))
            for i in range(0, len(order), batch_size):
                index = order[i : i + batch_size]
                loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        x_test, y_test = _split_tensors(store, "test")
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"test accuracy after {epochs} epochs: {accuracy:.3f}")
        return accuracy
