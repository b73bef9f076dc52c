"""FlashDataset against torch's TensorDataset + DataLoader as the oracle."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import FlashDataset


def test_tuple_dataset_matches_tensor_dataset():
    x = torch.randn(37, 3, 4)
    y = torch.randint(0, 10, (37,))
    flash, oracle = FlashDataset(x, y), TensorDataset(x, y)
    assert len(flash) == 37
    for i in (0, 5, -1):
        fx, fy = flash[i]
        ox, oy = oracle[i]
        assert torch.equal(fx, ox) and torch.equal(fy, oy)
    sampler = list(torch.randperm(37, generator=torch.Generator().manual_seed(0)))
    ours = list(DataLoader(flash, batch_size=8, sampler=sampler))
    theirs = list(DataLoader(oracle, batch_size=8, sampler=sampler))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert type(a) is type(b) and len(a) == len(b)
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb) and ta.dtype == tb.dtype


def test_gather_is_collated_batch():
    flash = FlashDataset({"image": torch.arange(20).reshape(10, 2), "label": torch.arange(10)})
    batch = flash.gather([3, 1, -1])
    assert set(batch) == {"image", "label"}
    assert batch["label"].tolist() == [3, 1, 9]
    tuple_batch = FlashDataset(torch.arange(5), torch.arange(5) * 2).gather(torch.tensor([4, 0]))
    assert isinstance(tuple_batch, list) and tuple_batch[1].tolist() == [8, 0]


def test_errors():
    flash = FlashDataset(torch.zeros(3))
    with pytest.raises(IndexError):
        flash[3]
    with pytest.raises(IndexError):
        flash.gather([0, 3])
    with pytest.raises(ValueError, match="different numbers of samples"):
        FlashDataset(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        FlashDataset([1, 2, 3])
    with pytest.raises(ValueError, match="at least one"):
        FlashDataset()
