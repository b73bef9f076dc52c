"""The assemble stage on its own: gathers into new batch tensors, and storage <-> tensor views."""

import numpy as np
import pytest
import torch

from datalflash.batching import as_storage, from_storage, gather, tensors_from_storage
from datalflash.format import FieldSpec


def source(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 3, 2, generator=g),
        "y": torch.randint(0, 100, (n,), generator=g),
        "b": torch.randn(n, 4, generator=g).bfloat16(),
    }


def test_one_segment_is_one_index_select_per_field_into_new_tensors():
    src = source(20, 0)
    index = torch.tensor([7, 3, 3, 19, 0])
    batch = gather([(src, index)])
    assert batch.keys() == src.keys()
    for name, values in batch.items():
        assert values.dtype == src[name].dtype
        assert torch.equal(values, src[name][index])
    batch["x"].zero_()  # the batch is the caller's: the source is untouched
    assert not torch.equal(src["x"][index], batch["x"])


def test_segments_are_concatenated_in_order():
    a, b = source(10, 1), source(6, 2)
    segments = [(a, torch.tensor([9, 0])), (b, torch.tensor([5, 5, 1])), (a, torch.tensor([4]))]
    batch = gather(segments)
    for name in a:
        expected = torch.cat([a[name][[9, 0]], b[name][[5, 5, 1]], a[name][[4]]])
        assert torch.equal(batch[name], expected), name


def test_no_segment_is_an_error():
    with pytest.raises(ValueError, match="at least one segment"):
        gather([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches():
    src = source(10, 3)
    for segments in ([(src, torch.tensor([1, 2]))], [(src, torch.tensor([1])), (src, torch.tensor([2]))]):
        batch = gather(segments, pin_memory=True)
        assert all(t.is_pinned() for t in batch.values())
        assert torch.equal(batch["y"], src["y"][[1, 2]])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, torch.float32, torch.bool])
def test_storage_round_trip_shares_memory(dtype):
    values = torch.randn(5, 3).to(dtype)
    name = str(dtype).removeprefix("torch.")
    stored = as_storage(values, name)
    assert isinstance(stored, np.ndarray) and stored.dtype.itemsize == values.element_size()
    back = from_storage(stored, name)
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), values.view(torch.uint8))
    stored[...] = 0  # a view, not a copy
    assert not back.view(torch.uint8).any()


def test_tensors_from_storage_follow_each_fields_dtype():
    arrays = {"h": np.arange(6, dtype=np.uint16).reshape(3, 2), "i": np.arange(3, dtype=np.int64)}
    fields = {"h": FieldSpec("h", "bfloat16", (2,)), "i": FieldSpec("i", "int64", ())}
    tensors = tensors_from_storage(arrays, fields)
    assert tensors["h"].dtype == torch.bfloat16 and tensors["i"].dtype == torch.int64
    assert np.shares_memory(tensors["i"].numpy(), arrays["i"])
