"""The main job's image variant: real photographs as an image folder of JPEGs -> a store (the
files' bytes kept) -> decoded with random-resized crops while a small CNN trains; then test
accuracy and images/s against torch's DataLoader decoding the same files with Pillow.

The photographs are scikit-learn's two bundled ones (a temple in China, a flower); each image of
the folder is a random piece of one of them, 120-320 pixels a side, and its class says which.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from datalflash.cli.bench import timed_rate
from datalflash.cli.demo import train_and_test
from datalflash.convert import DatasetConverter
from datalflash.convert.images import image_folder
from datalflash.loading import get_dataloaders
from datalflash.loading.decoders import usable_cores
from datalflash.transforms import Compose, ConvertDtype, Normalize, RandomHorizontalFlip

IMAGES = 1200
SIZE = 64


def make_folder(root: Path, n: int = IMAGES, seed: int = 0) -> Path:
    """``n`` JPEG pieces of scikit-learn's photographs in ``root/<photograph>/``."""
    try:
        from PIL import Image
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise SystemExit("the image demo needs scikit-learn and Pillow: pip install 'datalflash[demo]'") from e
    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    for name in ("china", "flower"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % 2
        photo = photos.images[k]
        h, w = (int(v) for v in rng.integers(120, 321, 2))
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w])).save(
            root / ("china", "flower")[k] / f"{i:05d}.jpg", quality=90
        )
    return root


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


class PillowFolder(torch.utils.data.Dataset):
    """The baseline: each file decoded with Pillow and resized to ``SIZE``, one sample at a time."""

    def __init__(self, root: Path):
        self.items = image_folder(root).items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        return torch.from_numpy(pixels).permute(2, 0, 1), label


def run_images(workdir: str, epochs: int = 3, batch_size: int = 64, seed: int = 0) -> float:
    """Run the image variant in ``workdir``; returns test accuracy."""
    torch.manual_seed(seed)
    folder = make_folder(Path(workdir) / "photo_folder", seed=seed)
    path = Path(workdir) / "photo_store"
    start = time.perf_counter()
    DatasetConverter.create_chunked_dataset(
        str(folder), path, chunk_size=256, seed=seed, overwrite=True, progress=False
    )
    took = time.perf_counter() - start
    print(f"converted {IMAGES} JPEG pieces of real photographs into a store at {path} ({took:.2f}s)")
    augment = Compose([RandomHorizontalFlip(), ConvertDtype(), Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    evaluate = Compose([ConvertDtype(), Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    loaders = get_dataloaders(
        path, batch_size, seed=seed, image_size=SIZE, augmentations={"train": augment, "test": evaluate}
    )
    accuracy = train_and_test(small_cnn(), loaders, epochs, lr=3e-3)
    flash = timed_rate(loaders["train"], math.inf)[0]
    workers = usable_cores()
    baseline = timed_rate(DataLoader(PillowFolder(folder), batch_size, shuffle=True, num_workers=workers), math.inf)[0]
    print(
        f"decoding {SIZE}x{SIZE} crops: FlashDataLoader {flash:,.0f} images/s, torch DataLoader "
        f"(Pillow, {workers} workers) {baseline:,.0f} images/s ({flash / baseline:.1f}x)"
    )
    return accuracy
