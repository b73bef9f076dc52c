"""Batch transforms: per-sample randomness, checked against per-sample reference computations."""

import pytest
import torch

from datalflash.transforms import Compose, ConvertDtype, Normalize, RandomCrop, RandomHorizontalFlip


def images(n=16):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_random_crop_matches_per_sample_crops():
    x = images()
    out = RandomCrop(8, padding=2, generator=torch.Generator().manual_seed(1))(x)
    g = torch.Generator().manual_seed(1)
    top, left = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    padded = torch.nn.functional.pad(x, [2] * 4)
    for i in range(16):
        expected = padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        assert torch.equal(out[i], expected)
    assert len({(int(t), int(lf)) for t, lf in zip(top, left)}) > 1  # offsets differ per sample
    with pytest.raises(ValueError, match="larger than the padded"):
        RandomCrop(20)(x)


def test_flip_is_per_sample():
    x = images()
    out = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(2))(x)
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(out[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_convert_and_normalize():
    x = images()
    f = ConvertDtype(torch.float32)(x)
    assert f.dtype == torch.float32 and torch.allclose(f, x.float() / 255)
    n = Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.1])(f)
    assert torch.allclose(n[:, 1], (f[:, 1] - 0.4) / 0.2)
    with pytest.raises(ValueError):
        Normalize([0.0], [0.0])


def test_compose_runs_in_order():
    x = images()
    t = Compose([ConvertDtype(torch.float32), Normalize([0.5] * 3, [0.5] * 3)])
    assert torch.allclose(t(x), (x.float() / 255 - 0.5) / 0.5)
