"""Shared helpers of the benchmarks: synthetic CIFAR-shaped data, timing, machine info, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cifar_like(n: int = 50_000, seed: int = 0, noise: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` x 3x32x32 uint8 images with image-like local correlation plus Gaussian pixel
    ``noise`` (sd 8 by default, which leaves LZ4 nothing to compress, as with photographs;
    ``noise=0`` gives smooth images it does compress), and int64 labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 255
    images = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
    images = (images + torch.randn(images.shape, generator=g) * noise).clamp(0, 255).to(torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.int64)
    return images, labels


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.is_available(),
    }


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_results(name: str, rows: list[dict], table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; returns the JSON path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return out
