"""The transfer stage on its own: device resolution, nested batches, copies issued ahead of use."""

import warnings

import pytest
import torch

from datalflash.transfer import DeviceTransfer, resolve_device
from datalflash.transfer.device import map_tensors

CUDA = torch.cuda.is_available()


def test_resolve_device_without_cuda():
    assert resolve_device(None, False) == (None, False)
    assert resolve_device("cpu", False) == (None, False)  # the CPU needs no transfer
    if CUDA:
        pytest.skip("checks the behaviour without CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda", False)
    with pytest.warns(UserWarning, match="no CUDA device is available"):
        assert resolve_device(None, True) == (None, False)


def test_map_tensors_keeps_the_structure():
    batch = {"a": [torch.ones(2), (torch.zeros(1), 3)], "b": "text"}
    out = map_tensors(lambda t: t + 1, batch)
    assert type(out["a"]) is list and type(out["a"][1]) is tuple
    assert torch.equal(out["a"][0], torch.full((2,), 2.0)) and torch.equal(out["a"][1][0], torch.ones(1))
    assert out["a"][1][1] == 3 and out["b"] == "text"


def test_stream_keeps_depth_copies_in_flight_and_the_order():
    pulled = []

    def batches():
        for i in range(6):
            pulled.append(i)
            yield [torch.full((2,), i), {"i": torch.tensor(i)}]

    transfer = DeviceTransfer(torch.device("cpu"), depth=2)
    stream = transfer.stream(batches())
    first = next(stream)
    assert pulled == [0, 1, 2]  # batch 0 handed over while 1 and 2 are in flight
    got = [first, *stream]
    assert [int(b[1]["i"]) for b in got] == list(range(6))
    assert all(torch.equal(b[0], torch.full((2,), i)) for i, b in enumerate(got))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_copies_on_a_side_stream_match_the_source():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        device, pin = resolve_device("cuda", False)
    assert pin
    source = [[torch.arange(1000, dtype=torch.float32).pin_memory() + i] for i in range(5)]
    moved = list(DeviceTransfer(device).stream(iter(source)))
    for src, (dst,) in zip(source, moved):
        assert dst.is_cuda and torch.equal(dst.cpu(), src[0])
