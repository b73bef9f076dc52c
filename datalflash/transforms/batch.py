"""Vectorized batch transforms for ``(N, C, H, W)`` image batches.

Each takes and returns a tensor; randomness is per sample, drawn with an optional
``torch.Generator`` on the batch's device, so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class Compose:
    """Apply transforms in order, like ``torchvision.transforms.Compose``."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.transforms = list(transforms)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            batch = transform(batch)
        return batch

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ConvertDtype:
    """Convert to ``dtype``; integer -> float divides by the integer type's maximum (uint8 -> [0, 1])."""

    def __init__(self, dtype: torch.dtype = torch.float32, scale: bool = True):
        self.dtype, self.scale = dtype, scale

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = batch.to(self.dtype)
        if (
            self.scale
            and self.dtype.is_floating_point
            and not batch.dtype.is_floating_point
            and batch.dtype != torch.bool
        ):
            out = out / torch.iinfo(batch.dtype).max
        return out


class Normalize:
    """``(x - mean) / std`` per channel (dimension 1)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if any(s == 0 for s in std):
            raise ValueError(f"std must be non-zero, got {list(std)}")
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (batch.dim() - 2)
        mean = self.mean.to(batch.device, batch.dtype).view(shape)
        std = self.std.to(batch.device, batch.dtype).view(shape)
        return (batch - mean) / std


class RandomHorizontalFlip:
    """Flip each sample left-right (last dimension) with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(batch.shape[0], device=batch.device, generator=self.generator) < self.p
        mask = flip.view(-1, *([1] * (batch.dim() - 1)))
        return torch.where(mask, batch.flip(-1), batch)


class RandomCrop:
    """Zero-pad by ``padding`` then crop ``size`` at a random offset per sample, in one gather."""

    def __init__(self, size: int | tuple[int, int], padding: int = 0, generator: torch.Generator | None = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding, self.generator = padding, generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n, h, w = batch.shape[0], *self.size
        padded = torch.nn.functional.pad(batch, [self.padding] * 4) if self.padding else batch
        ph, pw = padded.shape[-2:]
        if h > ph or w > pw:
            raise ValueError(f"crop {self.size} is larger than the padded image {(ph, pw)}")
        dev = batch.device
        top = torch.randint(0, ph - h + 1, (n,), device=dev, generator=self.generator)
        left = torch.randint(0, pw - w + 1, (n,), device=dev, generator=self.generator)
        rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # n,1,h,1
        cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # n,1,1,w
        index = torch.arange(n, device=dev)[:, None, None, None]
        return padded[index, torch.arange(padded.shape[1], device=dev)[None, :, None, None], rows, cols]
