"""Colour augmentations of ``(N, 3, H, W)`` image batches, each sample with its own random
factors, computed for the whole batch at once (torchvision's formulas, drawn per sample rather
than once per call). uint8 batches stay uint8 (computed in float32, truncated as torchvision
truncates); float batches are taken to hold values in ``[0, 1]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datalflash.transforms.batch import BatchTransform, Field, by_rows, put_rows

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and Pillow use


def _factors(
    spread: float | Sequence[float], name: str, center: float = 1.0, bound: tuple[float, float] = (0, float("inf"))
) -> tuple[float, float] | None:
    """``(low, high)`` of a jitter argument (a number ``s``: ``center -+ s``), or None for no jitter."""
    if isinstance(spread, (int, float)):
        if spread < 0:
            raise ValueError(f"{name} must be non-negative, got {spread}")
        low, high = center - spread, center + spread
        low = max(low, bound[0])
    else:
        low, high = (float(v) for v in spread)
    if not bound[0] <= low <= high <= bound[1]:
        raise ValueError(f"{name} range ({low}, {high}) must lie within {bound}")
    return None if low == high == center else (low, high)


def _bound(batch: torch.Tensor) -> float:
    return 255.0 if batch.dtype == torch.uint8 else 1.0


def gray(batch: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` luma of an RGB batch, in float32 (or the batch's float dtype)."""
    x = batch.float() if batch.dtype == torch.uint8 else batch
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _luma(x: torch.Tensor, integer: bool) -> torch.Tensor:
    """The luma of float ``x``, floored when the batch is integer (as torchvision does)."""
    luma = gray(x)
    return luma.floor_() if integer else luma


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, bound: float) -> torch.Tensor:
    """``ratio * x + (1 - ratio) * other``, clamped (``x`` is overwritten)."""
    return x.mul_(ratio).add_((1.0 - ratio) * other).clamp_(0, bound)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB ``x`` in ``[0, 1]`` by ``shift`` (turns) per sample."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = ((hr + hg + hb) / 6.0 + 1.0) % 1.0
    h = (h + shift.view(-1, 1, 1)) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sector = i.unsqueeze(1)  # (N, 1, H, W): which of the 6 cases each pixel is in
    channels = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))
    return torch.cat([torch.stack(cases, dim=1).gather(1, sector) for cases in channels], dim=1)


class ColorJitter(BatchTransform):
    """Random brightness, contrast, saturation and hue per sample (torchvision's
    ``ColorJitter``: a number ``s`` means a factor in ``[max(0, 1 - s), 1 + s]``, hue a shift in
    ``[-hue, hue]`` turns, at most 0.5), the four applied in one random order per batch."""

    rowwise = True

    def __init__(
        self,
        brightness: float | Sequence[float] = 0,
        contrast: float | Sequence[float] = 0,
        saturation: float | Sequence[float] = 0,
        hue: float | Sequence[float] = 0,
        generator: torch.Generator | None = None,
        field: Field = None,
    ):
        self.brightness = _factors(brightness, "brightness")
        self.contrast = _factors(contrast, "contrast")
        self.saturation = _factors(saturation, "saturation")
        self.hue = _factors(hue, "hue", center=0.0, bound=(-0.5, 0.5))
        self.generator, self.field = generator, field

    def _draw(self, n: int, span: tuple[float, float], device: torch.device) -> torch.Tensor:
        u = torch.rand(n, device=device, generator=self.generator)
        return (span[0] + (span[1] - span[0]) * u).view(n, 1, 1, 1)

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        n, device = batch.shape[0], batch.device
        order = torch.randperm(
            4, generator=self.generator, device="cpu" if self.generator is None else self.generator.device
        ).tolist()
        spans = (self.brightness, self.contrast, self.saturation, self.hue)
        steps = [(step, self._draw(n, span, device)) for step in order if (span := spans[step]) is not None]
        return by_rows(batch, lambda rows, part: self._jitter(rows, [(s, f[part]) for s, f in steps]))

    @staticmethod
    def _jitter(batch: torch.Tensor, steps: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """``batch`` with ``steps`` (``(step, per-sample factors)``) applied in order."""
        bound, integer = _bound(batch), batch.dtype == torch.uint8
        x = batch.float() if integer else batch.clone()
        for step, factor in steps:
            if step == 0:
                x = x.mul_(factor).clamp_(0, bound)
            elif step == 1:
                mean = _luma(x, integer).mean(dim=(1, 2, 3), keepdim=True)
                x = _blend(x, mean, factor, bound)
            elif step == 2:
                x = _blend(x, _luma(x, integer), factor, bound)
            else:
                x = _hue_shift(x / bound, factor.view(-1)) * bound
            if integer:  # (each step truncated to integers, as torchvision's uint8 ops)
                x = x.floor_()
        return x.to(batch.dtype)


class RandomGrayscale(BatchTransform):
    """Turn each sample to gray (three equal channels) with probability ``p``."""

    rowwise = True

    def __init__(self, p: float = 0.1, generator: torch.Generator | None = None, field: Field = None):
        self.p, self.generator, self.field = p, generator, field

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        pick = torch.rand(batch.shape[0], device=batch.device, generator=self.generator) < self.p
        chosen = pick.nonzero().flatten()
        luma = _luma(batch.index_select(0, chosen), batch.dtype == torch.uint8).to(batch.dtype)
        return put_rows(batch.clone(), chosen, luma.expand(-1, 3, -1, -1).contiguous())
