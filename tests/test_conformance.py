"""A table of torch's own DataLoader behaviours, each run on torch's DataLoader and on
FlashDataLoader over the same samples (a FlashDataset, a store split): the same batches, the same
lengths, the same errors."""

import pytest
import torch
from helpers import Samples
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, default_collate

from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.utils import DatasetConverter

N = 23


def samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(3, generator=g), i, i / 4) for i in range(N)]


@pytest.fixture(scope="module", params=["memory", "store"])
def datasets(request, tmp_path_factory):
    """(ours, the same samples as a plain Dataset for torch's DataLoader)."""
    plain = Samples(samples())
    if request.param == "memory":
        return DatasetConverter.from_pytorch_dataset(plain), plain
    path = DatasetConverter.create_chunked_dataset(
        plain,
        tmp_path_factory.mktemp("conformance") / "s",
        chunk_size=5,
        split_ratios={"train": 1.0},
        shuffle=False,
        progress=False,
    )
    return ChunkedDataset(path, "train"), plain


def first_and_count(batch):
    return (len(batch), batch[0])


OWN_ORDER = {"shuffle (global RNG)", "shuffle with a generator"}
"""Shuffled epochs: each loader draws its own permutation (FlashDataLoader's reads whole chunks);
compared as each epoch's samples, once each, in a new order every epoch."""

BEHAVIOURS = {  # name: DataLoader keyword arguments (torch's RNG is re-seeded before each run)
    "default": {},
    "batch_size 4": dict(batch_size=4),
    "drop_last": dict(batch_size=4, drop_last=True),
    "batch larger than the data": dict(batch_size=64),
    "shuffle (global RNG)": dict(batch_size=5, shuffle=True),
    "shuffle with a generator": dict(batch_size=5, shuffle=True, generator="generator"),
    "sampler": dict(batch_size=3, sampler=[5, 1, 22, 7, 7]),
    "SequentialSampler object": dict(batch_size=6, sampler="sequential"),
    "RandomSampler with replacement": dict(batch_size=4, sampler="replacement"),
    "batch_sampler": dict(batch_sampler=[[3, 1], [0], [22, 21, 20]]),
    "BatchSampler object": dict(batch_sampler="batch sampler"),
    "batch_size=None": dict(batch_size=None),
    "collate_fn identity": dict(batch_size=4, collate_fn="identity"),
    "collate_fn default_collate": dict(batch_size=4, collate_fn=default_collate),
    "custom collate_fn": dict(batch_size=4, collate_fn=first_and_count),
    "pin_memory off": dict(batch_size=4, pin_memory=False),
}


def build(make, data, kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("generator") == "generator":
        kwargs["generator"] = torch.Generator().manual_seed(7)
    if kwargs.get("sampler") == "sequential":
        kwargs["sampler"] = SequentialSampler(range(N))
    if kwargs.get("sampler") == "replacement":
        kwargs["sampler"] = RandomSampler(
            range(N), replacement=True, num_samples=9, generator=torch.Generator().manual_seed(2)
        )
    if kwargs.get("batch_sampler") == "batch sampler":
        kwargs["batch_sampler"] = BatchSampler(SequentialSampler(range(N)), 4, drop_last=False)
    if kwargs.get("collate_fn") == "identity":
        kwargs["collate_fn"] = lambda batch: batch
    return make(data, **kwargs)


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_behaviour_matches_torch(datasets, name):
    ours, plain = datasets
    runs = {}
    for make, data in ((DataLoader, plain), (FlashDataLoader, ours)):
        torch.manual_seed(11)
        loader = build(make, data, BEHAVIOURS[name])
        epochs = [list(loader), list(loader)]
        runs[make.__name__] = (len(loader), len(iter(loader)), epochs, loader.batch_size, loader.drop_last)
    theirs, mine = runs["DataLoader"], runs["FlashDataLoader"]
    assert mine[:2] == theirs[:2] and mine[3:] == theirs[3:]
    if name not in OWN_ORDER:
        assert same(mine[2], theirs[2])
        return
    for epochs in (mine[2], theirs[2]):
        labels = [[i for batch in epoch for i in batch[1].tolist()] for epoch in epochs]
        assert sorted(labels[0]) == sorted(labels[1]) == list(range(N)) and labels[0] != labels[1]
        assert [len(batch[1]) for batch in epochs[0]] == [len(batch[1]) for batch in theirs[2][0]]


ERRORS = [
    dict(timeout=-1),
    dict(batch_size=0),
    dict(batch_size=-3),
    dict(num_workers=-1),
    dict(sampler=[0], shuffle=True),
    dict(batch_sampler=[[0]], batch_size=2),
    dict(batch_sampler=[[0]], drop_last=True),
    dict(batch_size=None, drop_last=True),
    dict(prefetch_factor=2),
    dict(persistent_workers=True),
    dict(num_workers=1, prefetch_factor=-1),
]


@pytest.mark.parametrize("kwargs", ERRORS, ids=str)
def test_argument_error_matches_torch(datasets, kwargs):
    ours, plain = datasets
    with pytest.raises(Exception) as theirs:
        DataLoader(plain, **kwargs)
    with pytest.raises(type(theirs.value)) as mine:
        FlashDataLoader(ours, **kwargs)
    assert str(mine.value) == str(theirs.value)
