"""Batch transforms: per-sample randomness, checked against per-sample reference computations."""

import colorsys
import itertools

import pytest
import torch

from datalflash.core import ChunkedDataset, FlashDataLoader, get_dataloaders
from datalflash.transforms import (
    ColorJitter,
    Compose,
    ConvertDtype,
    Normalize,
    PerSample,
    RandomCrop,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
)
from datalflash.utils import DatasetConverter


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
    # a batch autograd tracks, and a dtype numpy lacks, take torch's path
    tracked = torch.rand(4, 3, 8, 8, requires_grad=True)
    RandomHorizontalFlip(1.0)(tracked).mul(torch.arange(8.0)).sum().backward()
    assert torch.equal(tracked.grad, torch.arange(8.0).flip(0).expand(4, 3, 8, 8))
    half = torch.rand(4, 3, 8, 8).to(torch.bfloat16)
    assert torch.equal(RandomHorizontalFlip(1.0)(half), half.flip(-1))
    assert torch.equal(RandomGrayscale(1.0)(half)[:, 0], RandomGrayscale(1.0)(half)[:, 2])


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


def image_store(tmp_path, n=64):
    """A store of dict samples ``{"image": (3, 8, 8) uint8, "label": int}`` (real-looking noise
    is enough here: the checks compare each output sample with its own input)."""
    x = images(n)
    samples = [{"image": x[i], "label": i} for i in range(n)]
    path = DatasetConverter.create_chunked_dataset(
        samples, tmp_path / "s", chunk_size=16, split_ratios={"train": 1.0}, progress=False
    )
    return path, x


def random_flip(sample: torch.Tensor) -> torch.Tensor:
    """A transform written per sample (one random draw per call), as torchvision's are."""
    return sample.flip(-1) if torch.rand(()) < 0.5 else sample


def flipped_or_kept(out, x, labels):
    flipped = [torch.equal(o, x[i].flip(-1)) for o, i in zip(out, labels.tolist())]
    kept = [torch.equal(o, x[i]) for o, i in zip(out, labels.tolist())]
    return flipped, kept


def test_per_sample_transform_draws_for_each_sample(tmp_path):
    """A per-sample transform on dict batches (field chosen by key) is applied to each sample on
    its own: within one batch some samples are flipped and some not."""
    path, x = image_store(tmp_path)
    torch.manual_seed(0)
    loader = get_dataloaders(path, 64, augmentations={"train": PerSample(random_flip, field="image")})["train"]
    batch = next(iter(loader))
    flipped, kept = flipped_or_kept(batch["image"], x, batch["label"])
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_batch_transforms_choose_the_field_of_dict_and_tuple_batches(tmp_path):
    path, x = image_store(tmp_path)
    convert = Compose([ConvertDtype(torch.float32), Normalize([0.5] * 3, [0.5] * 3)], field="image")
    batch = next(iter(FlashDataLoader(ChunkedDataset(path, "train"), batch_size=8, transform=convert)))
    assert torch.allclose(batch["image"], (x[batch["label"]].float() / 255 - 0.5) / 0.5)
    assert batch["label"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"pass field= to choose the field of dict batches \(one of \['image'"):
        next(iter(FlashDataLoader(ChunkedDataset(path, "train"), batch_size=8, transform=ConvertDtype())))
    pair = (x[:4], torch.arange(4))
    out = ConvertDtype(torch.float32)(pair)
    assert isinstance(out, tuple) and out[0].dtype == torch.float32 and out[1] is pair[1]
    with pytest.raises(ValueError, match="not a position"):
        ConvertDtype(field=5)(pair)


def _torchvision(version: str):
    try:
        import torchvision.transforms as v1
        from torchvision.transforms import v2
    except Exception as e:  # (an ImportError, or torchvision built for another torch: a RuntimeError)
        pytest.skip(f"torchvision does not import here: {str(e)[:100]}")
    return v1 if version == "v1" else v2


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torchvision_transforms_are_applied_per_sample(tmp_path, version):
    """torchvision's flip (v1 and v2), given as an augmentation, flips samples independently
    (applied to the whole batch it would flip all or none). The same behaviour is checked with a
    plain per-sample function above, where torchvision does not import."""
    transforms = _torchvision(version)
    x = images(64)
    samples = [(x[i], i) for i in range(len(x))]
    tuple_path = DatasetConverter.create_chunked_dataset(
        samples, tmp_path / "t", chunk_size=16, split_ratios={"train": 1.0}, progress=False
    )
    augment = transforms.Compose([transforms.RandomHorizontalFlip()])
    loader = get_dataloaders(tuple_path, 64, augmentations={"train": augment})
    images_, labels = next(iter(loader["train"]))
    flipped, kept = flipped_or_kept(images_, x, labels)
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def photo_batch(n=8, size=32):
    """Crops of scikit-learn's real photographs, uint8 (n, 3, size, size)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    photo = torch.from_numpy(sklearn_datasets.load_sample_images().images[0]).permute(2, 0, 1)
    tops, lefts = (
        [(37 * i) % (photo.shape[1] - size) for i in range(n)],
        [(53 * i) % (photo.shape[2] - size) for i in range(n)],
    )
    return torch.stack([photo[:, t : t + size, s : s + size] for t, s in zip(tops, lefts)])


def _blend_reference(img, other, factor):
    return (factor * img.float() + (1 - factor) * other).clamp(0, 255).floor()


def test_color_jitter_draws_factors_per_sample_and_follows_torchvision_formulas():
    x = photo_batch()
    for name in ("brightness", "contrast", "saturation"):
        jitter = ColorJitter(**{name: 0.5}, generator=torch.Generator().manual_seed(3))
        out = jitter(x)
        g = torch.Generator().manual_seed(3)
        torch.randperm(4, generator=g)
        factors = 0.5 + torch.rand(len(x), generator=g)  # (in [0.5, 1.5])
        for i in range(len(x)):
            img = x[i].float()
            luma = (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]).floor()
            other = {"brightness": torch.zeros_like(img), "contrast": luma.mean(), "saturation": luma}[name]
            assert torch.equal(out[i], _blend_reference(img, other, factors[i]).to(torch.uint8)), (name, i)
        assert len({round(float(f), 3) for f in factors}) == len(x)
    floats = ColorJitter(0.4, 0.4, 0.4, 0.1, generator=torch.Generator().manual_seed(0))(x.float() / 255)
    assert floats.dtype == torch.float32 and floats.min() >= 0 and floats.max() <= 1
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.7)


def test_hue_shift_of_a_full_turn_is_identity_and_half_turn_complements():
    x = photo_batch().float() / 255
    same = ColorJitter(hue=(0.5, 0.5))  # (a half turn, then another: back where it started)
    assert torch.allclose(same(same(x)), x, atol=1e-5)
    pure = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(ColorJitter(hue=(1 / 3, 1 / 3))(pure)[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_random_grayscale_is_per_sample():
    x = photo_batch(16)
    out = RandomGrayscale(0.5, generator=torch.Generator().manual_seed(1))(x)
    gray = [bool((out[i] == out[i, :1]).all()) for i in range(16)]
    kept = [torch.equal(out[i], x[i]) for i in range(16)]
    assert all(g or k for g, k in zip(gray, kept)) and any(gray) and any(kept)
    for i in (i for i in range(16) if gray[i] and not kept[i]):
        img = x[i].float()
        luma = (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]).floor().to(torch.uint8)
        assert torch.equal(out[i, 0], luma), i


@pytest.mark.parametrize("shift", [0.1, -0.27, 0.5])
def test_hue_shift_equals_colorsys_per_pixel(shift):
    x = photo_batch(3, 6).float() / 255
    out = ColorJitter(hue=(shift, shift))(x)
    expected = torch.empty_like(x)
    for n, i, j in itertools.product(range(3), range(6), range(6)):
        h, s_, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        expected[n, :, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s_, v))
    assert torch.allclose(out, expected, atol=1e-5)


def test_random_resized_crop_is_a_per_sample_crop_and_resize():
    x = photo_batch(8, 64)
    identity = RandomResizedCrop(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    assert torch.equal(identity, x)
    crop = RandomResizedCrop(24, scale=(0.05, 0.2), generator=torch.Generator().manual_seed(5))
    boxes = crop.boxes(8, 64, 64, torch.device("cpu"))
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 64) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 64)).all()
    assert len({tuple(b.tolist()) for b in boxes}) == 8
    out = RandomResizedCrop(24, scale=(0.05, 0.2), generator=torch.Generator().manual_seed(5))(x)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.uint8
    for i, (left, top, right, bottom) in enumerate(boxes.long().tolist()):
        region = x[i, :, top:bottom, left:right].float().unsqueeze(0)
        expected = torch.nn.functional.interpolate(region, size=(24, 24), mode="bilinear", align_corners=False)
        assert (out[i].float() - expected[0]).abs().mean() < 1.0


def test_batch_color_jitter_matches_torchvision_v2_given_the_same_factors():
    v2 = _torchvision("v2")
    functional = v2.functional
    x = photo_batch()
    out = ColorJitter(saturation=0.5, generator=torch.Generator().manual_seed(3))(x)
    g = torch.Generator().manual_seed(3)
    torch.randperm(4, generator=g)
    factors = 0.5 + torch.rand(len(x), generator=g)
    for i in range(len(x)):  # (float rounding may put a value on the other side of an integer)
        diff = (out[i].int() - functional.adjust_saturation(x[i], float(factors[i])).int()).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99
