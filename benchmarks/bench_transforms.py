"""Batch augmentations against torchvision v2 applied per sample, side by side in one run.

A batch of 256 crops (3x224x224 uint8) of scikit-learn's photographs; each pipeline is applied
to the whole batch, ours drawing per-sample parameters vectorized, torchvision's called once per
sample (as a per-sample transform runs in a DataLoader) and the results stacked. Needs
torchvision (skipped where it does not import). CPU here; the same code runs on a GPU batch.

Usage: ``python benchmarks/bench_transforms.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_sample_images

from datalflash.transforms import ColorJitter, Compose, ConvertDtype, Normalize, RandomGrayscale, RandomHorizontalFlip

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_batch(n: int = 256, size: int = 224) -> torch.Tensor:
    photos = [torch.from_numpy(p).permute(2, 0, 1) for p in load_sample_images().images]
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        p = photos[i % 2]
        top = int(torch.randint(0, p.shape[1] - size, (1,), generator=g))
        left = int(torch.randint(0, p.shape[2] - size, (1,), generator=g))
        out.append(p[:, top : top + size, left : left + size])
    return torch.stack(out)


def timed(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        from torchvision.transforms import v2
    except Exception as e:
        print(f"skipped: torchvision does not import ({str(e)[:80]})")
        return
    batch = photo_batch()
    pipelines = {
        "flip": (RandomHorizontalFlip(), v2.RandomHorizontalFlip()),
        "color jitter (b, c, s 0.4)": (ColorJitter(0.4, 0.4, 0.4), v2.ColorJitter(0.4, 0.4, 0.4)),
        "color jitter + hue 0.1": (ColorJitter(0.4, 0.4, 0.4, 0.1), v2.ColorJitter(0.4, 0.4, 0.4, 0.1)),
        "grayscale p=0.2": (RandomGrayscale(0.2), v2.RandomGrayscale(0.2)),
        "flip + jitter + to float + normalize": (
            Compose([RandomHorizontalFlip(), ColorJitter(0.4, 0.4, 0.4), ConvertDtype(), Normalize(MEAN, STD)]),
            v2.Compose(
                [
                    v2.RandomHorizontalFlip(),
                    v2.ColorJitter(0.4, 0.4, 0.4),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(MEAN, STD),
                ]
            ),
        ),
    }
    print(f"batch {tuple(batch.shape)} uint8, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print("| augmentation | datalflash (batch) ms | torchvision v2 per sample ms | x |")
    print("|---|---|---|---|")
    for name, (ours, theirs) in pipelines.items():
        a = timed(lambda ours=ours: ours(batch), args.repeat)
        b = timed(lambda theirs=theirs: torch.stack([theirs(x) for x in batch]), args.repeat)
        print(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f} |")


if __name__ == "__main__":
    main()
