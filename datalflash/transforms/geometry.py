"""Random-resized crops of decoded ``(N, C, H, W)`` batches: one crop per sample, all cropped and
resized by one ``grid_sample`` call on the batch's device.

For images stored encoded, crop while decoding instead (the loader's ``image_size=``,
:class:`~datalflash.batching.images.ImageDecode`): only the crop's pixels are then decoded and
resized, with antialiasing. This transform serves batches that arrive decoded (raw pixels, a
fixed-shape field); it resamples bilinearly without antialiasing, as a GPU crop usually does.
"""

from __future__ import annotations

import math

import torch

from datalflash.transforms.batch import BatchTransform, Field

ATTEMPTS = 10


class RandomResizedCrop(BatchTransform):
    """Crop a random region of ``scale`` of each sample's area and ``ratio`` of aspect
    (torchvision's ``RandomResizedCrop`` algorithm, drawn per sample) and resize it to ``size``."""

    rowwise = True

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        generator: torch.Generator | None = None,
        field: Field = None,
    ):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"scale {scale} must be within (0, 1] and ratio {ratio} positive, each (low, high)")
        self.scale, self.ratio, self.generator, self.field = scale, ratio, generator, field

    def boxes(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``(n, 4)`` float boxes ``(left, top, right, bottom)``, one random crop per sample."""
        u = torch.rand((n, 2 * ATTEMPTS + 2), device=device, generator=self.generator, dtype=torch.float64)
        area = height * width
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, :ATTEMPTS])
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * u[:, ATTEMPTS : 2 * ATTEMPTS])
        cw, ch = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
        fits = (cw > 0) & (ch > 0) & (cw <= width) & (ch <= height)
        first = fits.to(torch.int8).argmax(dim=1)
        rows = torch.arange(n, device=device)
        found = fits[rows, first]
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = float(width), float(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = float(round(height * self.ratio[1])), float(height)
        else:
            fw, fh = float(width), float(height)
        cw = torch.where(found, cw[rows, first], torch.full_like(cw[:, 0], fw))
        ch = torch.where(found, ch[rows, first], torch.full_like(ch[:, 0], fh))
        left = torch.where(found, torch.floor(u[:, -2] * (width - cw + 1)), (width - cw) // 2)
        top = torch.where(found, torch.floor(u[:, -1] * (height - ch + 1)), (height - ch) // 2)
        return torch.stack([left, top, left + cw, top + ch], dim=1)

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        n, _, height, width = batch.shape
        boxes = self.boxes(n, height, width, batch.device)
        # the affine map from output coordinates ([-1, 1]) to each box, in the input's [-1, 1]
        theta = torch.zeros((n, 2, 3), device=batch.device, dtype=torch.float32)
        theta[:, 0, 0] = ((boxes[:, 2] - boxes[:, 0]) / width).float()
        theta[:, 0, 2] = ((boxes[:, 0] + boxes[:, 2]) / width - 1).float()
        theta[:, 1, 1] = ((boxes[:, 3] - boxes[:, 1]) / height).float()
        theta[:, 1, 2] = ((boxes[:, 1] + boxes[:, 3]) / height - 1).float()
        grid = torch.nn.functional.affine_grid(theta, [n, batch.shape[1], *self.size], align_corners=False)
        x = batch.float() if not batch.dtype.is_floating_point else batch
        out = torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", align_corners=False)
        if batch.dtype.is_floating_point:
            return out
        return out.round_().clamp_(0, torch.iinfo(batch.dtype).max).to(batch.dtype)
