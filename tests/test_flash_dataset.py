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
    with pytest.raises(TypeError, match=r"not a torch.Tensor"):
        FlashDataset([1, 2, 3])
    with pytest.raises(ValueError, match="at least one"):
        FlashDataset()


def test_batch_indexing_gives_whole_batches_to_torch_dataloader():
    from torch.utils.data import BatchSampler, RandomSampler

    x, y = torch.randn(50, 3), torch.arange(50)
    flash = FlashDataset(x, y)
    sampler = list(BatchSampler(RandomSampler(flash, generator=torch.Generator().manual_seed(0)), 8, False))
    batches = list(DataLoader(flash, sampler=sampler, batch_size=None))
    expected = list(DataLoader(TensorDataset(x, y), batch_sampler=sampler))
    assert len(batches) == len(expected) == 7
    for (bx, by), (ex, ey) in zip(batches, expected):
        assert torch.equal(bx, ex) and torch.equal(by, ey)
    assert torch.equal(flash[torch.tensor([4, -1])][1], torch.tensor([4, 49]))


def test_getitems_matches_getitem_for_every_structure():
    flat_dict = FlashDataset({"a": torch.arange(6), "b": torch.arange(6) * 2})
    nested = FlashDataset.from_fields(
        {"x": torch.arange(6), "p.0": torch.arange(6) + 10},
        {
            "kind": "dict",
            "items": {
                "x": {"kind": "field", "name": "x"},
                "p": {"kind": "tuple", "items": [{"kind": "field", "name": "p.0"}]},
            },
        },
    )
    for dataset in (FlashDataset(torch.arange(6), torch.ones(6)), flat_dict, nested):
        got = dataset.__getitems__([5, 0, 2])
        want = [dataset[i] for i in (5, 0, 2)]
        assert repr(got) == repr(want)
