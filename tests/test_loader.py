"""FlashDataLoader against torch's DataLoader as the oracle, on every kind of source."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import Samples
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset, default_collate

from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset, get_dataloaders
from datalflash.errors import StoreReadError
from datalflash.utils import DatasetConverter


def mixed_samples(n=45):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=g),
            "label": i,
            "score": i / 7,
            "flag": bool(i % 3),
            "pair": (np.int16(i), torch.randn(2, generator=g).bfloat16()),
        }
        for i in range(n)
    ]


def assert_same(a, b, where=""):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def store_split(tmp_path, samples, chunk_size=8, backend="zarr"):
    DatasetConverter.create_chunked_dataset(
        Samples(samples),
        tmp_path / backend,
        chunk_size=chunk_size,
        split_ratios={"train": 1.0},
        shuffle=False,
        backend=backend,
        progress=False,
    )
    return ChunkedDataset(tmp_path / backend, "train")


@pytest.fixture(params=["memory", "zarr", "hdf5", "memmap"])
def source(request, tmp_path):
    """(FlashDataLoader's dataset, the same samples as a plain Dataset for torch's DataLoader)."""
    samples = mixed_samples()
    if request.param == "memory":
        x = torch.stack([s["image"] for s in samples])
        y = torch.tensor([s["label"] for s in samples])
        return FlashDataset(x, y), TensorDataset(x, y)
    return store_split(tmp_path, samples, backend=request.param), Samples(samples)


@pytest.mark.parametrize("batch_size, drop_last", [(1, False), (7, False), (7, True), (64, False)])
def test_unshuffled_batches_equal_torch(source, batch_size, drop_last):
    ours, oracle = source
    flash = FlashDataLoader(ours, batch_size=batch_size, drop_last=drop_last)
    torch_loader = DataLoader(oracle, batch_size=batch_size, drop_last=drop_last)
    assert len(flash) == len(torch_loader)
    got, expected = list(flash), list(torch_loader)
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_same(a, b, f"batch {k}")


def as_given(samples):
    """A collate_fn that hands back the samples it got."""
    return samples


def test_collate_fn_gets_the_samples_torch_would_give(source):
    """collate_fn gets each batch's samples as torch's DataLoader over the same dataset hands them
    over (same structure, types and values), and default_collate makes the batches torch makes
    over the source samples; the loader's own pipeline reads them (whole chunks)."""
    ours, oracle = source
    loader = FlashDataLoader(ours, batch_size=7, collate_fn=as_given)
    assert loader._own is not None
    assert_same(list(loader), list(DataLoader(ours, batch_size=7, collate_fn=as_given)))
    assert_same(
        list(FlashDataLoader(ours, batch_size=7, collate_fn=default_collate)),
        list(DataLoader(oracle, batch_size=7, collate_fn=default_collate)),
    )


def test_unbatched_samples_as_torch_gives_them(source):
    """batch_size=None: samples one at a time, as torch's DataLoader over the same dataset gives
    them (default_convert, or the collate_fn applied to each), shuffled and resumable."""
    ours, _ = source
    loader = FlashDataLoader(ours, batch_size=None)
    assert loader._own is not None and len(loader) == len(ours)
    assert_same(list(loader), list(DataLoader(ours, batch_size=None)))
    assert_same(
        list(FlashDataLoader(ours, batch_size=None, collate_fn=as_given)),
        list(DataLoader(ours, batch_size=None, collate_fn=as_given)),
    )
    shuffled = FlashDataLoader(ours, batch_size=None, shuffle=True, seed=2)
    first = [next(iter(shuffled))]
    state = shuffled.state_dict()
    rest = FlashDataLoader(ours, batch_size=None, shuffle=True, seed=2)
    rest.load_state_dict(state)
    label = lambda s: int(s["label"] if isinstance(s, dict) else s[1])  # noqa: E731
    assert sorted(label(s) for s in first + list(rest)) == list(range(len(ours)))
    with pytest.raises(ValueError, match="mutually exclusive with drop_last"):
        FlashDataLoader(ours, batch_size=None, drop_last=True)


@pytest.mark.parametrize("backend", ["zarr", "memmap", "hdf5", "memory"])
def test_python_numbers_come_back_as_python_numbers(tmp_path, backend):
    """Samples holding Python numbers (int, float, bool) come back with them where samples are
    handed out one by one, exactly as torch's DataLoader over the source gives them: to a
    collate_fn, with batch_size=None, and by indexing; batches are default_collate's tensors."""
    samples = [{k: v for k, v in s.items() if k != "pair"} for s in mixed_samples(20)]
    if backend == "memory":
        ours = DatasetConverter.from_pytorch_dataset(Samples(samples))
    else:
        ours = store_split(tmp_path, samples, backend=backend)
    oracle = Samples(samples)
    assert_same(list(FlashDataLoader(ours, batch_size=None)), list(DataLoader(oracle, batch_size=None)))
    assert_same(
        list(FlashDataLoader(ours, batch_size=6, collate_fn=as_given)),
        list(DataLoader(oracle, batch_size=6, collate_fn=as_given)),
    )
    assert_same(list(FlashDataLoader(ours, batch_size=6)), list(DataLoader(oracle, batch_size=6)))
    assert type(ours[3]["label"]) is int and type(ours[3]["score"]) is float and type(ours[3]["flag"]) is bool


class Record(dict):
    """A user's Mapping type (default_collate keeps it: it builds from a dict)."""


@pytest.mark.parametrize("backend", ["zarr", "memory"])
def test_mapping_types_are_kept_as_default_collate_keeps_them(tmp_path, backend):
    """Samples that are an OrderedDict or a user's dict subclass come back as that type, in
    batches (as default_collate rebuilds them), to a collate_fn and by indexing, as torch's
    DataLoader over the source gives them."""
    import collections

    for kind in (collections.OrderedDict, Record):
        samples = [kind(x=torch.full((2,), float(i)), y=i) for i in range(12)]
        if backend == "memory":
            ours = DatasetConverter.from_pytorch_dataset(Samples(samples))
        else:
            ours = store_split(tmp_path / kind.__name__, samples, chunk_size=5)
        oracle = Samples(samples)
        assert_same(list(FlashDataLoader(ours, batch_size=5)), list(DataLoader(oracle, batch_size=5)))
        assert_same(
            list(FlashDataLoader(ours, batch_size=5, collate_fn=as_given)),
            list(DataLoader(oracle, batch_size=5, collate_fn=as_given)),
        )
        assert type(ours[3]) is kind


def test_unbatched_sampler_items_are_fetched_as_torch_fetches_them(source):
    """batch_size=None with a sampler: each item is ``dataset[item]`` as in torch, one sample for
    an index and a whole batch for a list of indices (a BatchSampler given as ``sampler``)."""
    ours, _ = source
    from torch.utils.data import BatchSampler, SequentialSampler

    for sampler in (BatchSampler(SequentialSampler(range(len(ours))), 6, False), [3, 1, 4, 1, 5]):
        assert_same(
            list(FlashDataLoader(ours, batch_size=None, sampler=sampler)),
            list(DataLoader(ours, batch_size=None, sampler=sampler)),
        )


def test_collate_fn_batches_shuffle_resume_and_workers(source):
    ours, _ = source
    count = lambda samples: sorted(int(s["label"] if isinstance(s, dict) else s[1]) for s in samples)  # noqa: E731
    loader = FlashDataLoader(ours, batch_size=4, shuffle=True, seed=3, collate_fn=count)
    epoch = list(loader)
    assert sorted(i for batch in epoch for i in batch) == list(range(len(ours)))
    first = FlashDataLoader(ours, batch_size=4, shuffle=True, seed=3, collate_fn=count)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    resumed = FlashDataLoader(ours, batch_size=4, shuffle=True, seed=3, collate_fn=count)
    resumed.load_state_dict(state)
    assert head + list(resumed) == epoch
    if isinstance(ours, ChunkedDataset):
        workers = FlashDataLoader(ours, batch_size=4, shuffle=True, seed=3, collate_fn=count, num_workers=1)
        assert list(workers) == epoch


@pytest.mark.parametrize("kind", ["sampler", "batch_sampler"])
def test_sampler_and_batch_sampler_honoured(source, kind):
    ours, oracle = source
    indices = torch.randperm(len(oracle), generator=torch.Generator().manual_seed(3))[:30].tolist()
    if kind == "sampler":

        def make(ds):
            return dict(batch_size=4, sampler=indices)
    else:
        blocks = [indices[i : i + 5] for i in range(0, 30, 5)] + [[0, 0, 44]]

        def make(ds):
            return dict(batch_sampler=blocks)

    got = list(FlashDataLoader(ours, **make(ours)))
    expected = list(DataLoader(oracle, **make(oracle)))
    assert len(got) == len(expected) == len(FlashDataLoader(ours, **make(ours)))
    for a, b in zip(got, expected):
        assert_same(a, b)


def test_shuffled_epoch_is_a_permutation_each_time(source):
    ours, _ = source
    loader = FlashDataLoader(ours, batch_size=8, shuffle=True, seed=5, read_ahead_bytes=2**20, window_chunks=2)

    def labels(batch):
        return batch[1] if isinstance(batch, list) else batch["label"]

    epochs = [torch.cat([labels(b) for b in loader]).tolist() for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(len(ours)))
    assert epochs[0] != epochs[1] != epochs[2]
    loader.set_epoch(1)
    assert torch.cat([labels(b) for b in loader]).tolist() == epochs[1]
    again = FlashDataLoader(ours, batch_size=8, shuffle=True, seed=5, read_ahead_bytes=2**20, window_chunks=2)
    assert torch.cat([labels(b) for b in again]).tolist() == epochs[0]


def test_window_mixes_chunks(tmp_path):
    data = store_split(tmp_path, [(torch.tensor([i]), i) for i in range(64)], chunk_size=8)
    loader = FlashDataLoader(data, batch_size=16, shuffle=True, seed=0, window_chunks=4, read_ahead_bytes=2**20)
    chunks_per_batch = [len(set((b[1] // 8).tolist())) for b in loader]
    assert max(chunks_per_batch) > 2  # a batch draws from several chunks of its window
    narrow = FlashDataLoader(data, batch_size=8, shuffle=True, seed=0, window_chunks=1, read_ahead_bytes=2**20)
    assert all(len(set((b[1] // 8).tolist())) == 1 for b in narrow)  # window 1: within-chunk only


def test_default_window_is_the_split_when_it_fits_else_half_the_budget(tmp_path):
    data = store_split(tmp_path, [(torch.zeros(100), i) for i in range(64)], chunk_size=8)  # 8 chunks of 3,264 B
    assert FlashDataLoader(data, batch_size=4, shuffle=True).window_chunks == 8
    assert FlashDataLoader(data, batch_size=4, shuffle=True, read_ahead_bytes=8 * 3264).window_chunks == 8
    assert FlashDataLoader(data, batch_size=4, shuffle=True, read_ahead_bytes=8 * 3264 - 1).window_chunks == 3
    assert FlashDataLoader(data, batch_size=4, window_chunks=50).window_chunks == 8


def test_window_larger_than_budget_refused(tmp_path):
    data = store_split(tmp_path, [(torch.zeros(100), i) for i in range(64)], chunk_size=8)
    with pytest.raises(ValueError, match="above read_ahead_bytes"):
        FlashDataLoader(data, batch_size=4, window_chunks=8, read_ahead_bytes=10_000)


def test_same_seed_same_order_in_a_new_process(tmp_path):
    store_split(tmp_path, [(torch.tensor([i]), i) for i in range(50)], chunk_size=8)
    script = textwrap.dedent(
        f"""
        import torch
        from datalflash.core import get_dataloaders
        loader = get_dataloaders({str(tmp_path / "zarr")!r}, 16, seed=11)["train"]
        print(torch.cat([b[1] for b in loader]).tolist())
        """
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120) for _ in range(2)
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert sorted(eval(runs[0].stdout)) == list(range(50))


def test_seed_none_follows_torch_rng():
    data = FlashDataset(torch.arange(100))

    def epoch():
        return torch.cat([b for (b,) in FlashDataLoader(data, batch_size=10, shuffle=True)])

    torch.manual_seed(0)
    a = epoch()
    torch.manual_seed(0)
    b, c = epoch(), epoch()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reseeding_the_generator_reproduces_an_epoch_as_in_torch(source):
    """seed=None: each epoch's order is drawn from ``generator`` as the epoch starts, as torch's
    sampler draws it: re-seeding the generator before an epoch gives that epoch again, and a
    state saved mid-epoch resumes it exactly in a new loader."""
    ours, oracle = source
    label = lambda batch: (batch["label"] if isinstance(batch, dict) else batch[1]).tolist()  # noqa: E731
    for make, data in ((FlashDataLoader, ours), (DataLoader, oracle)):
        generator = torch.Generator()
        loader = make(data, batch_size=8, shuffle=True, generator=generator)
        generator.manual_seed(1)
        first = [label(b) for b in loader]
        second = [label(b) for b in loader]  # the generator moved on: another order
        generator.manual_seed(1)
        again = [label(b) for b in loader]
        assert first == again and first != second, make.__name__
    generator = torch.Generator().manual_seed(3)
    loader = FlashDataLoader(ours, batch_size=8, shuffle=True, generator=generator)
    list(loader)  # (an epoch first: the state is of the second)
    epoch = iter(loader)
    head = [label(next(epoch)) for _ in range(2)]
    state = json.loads(json.dumps(loader.state_dict()))
    tail = [label(b) for b in epoch]
    resumed = FlashDataLoader(ours, batch_size=8, shuffle=True, generator=torch.Generator())
    resumed.load_state_dict(state)
    assert [label(b) for b in resumed] == tail and head


@pytest.mark.parametrize("kind", ["memory", "zarr"])
def test_batch_sampler_gives_the_loaders_own_batches(tmp_path, kind):
    """``loader.batch_sampler`` lists the sample indices of each batch of the next epoch (this
    rank's share, the rest of a loaded state; ``loader.sampler`` the same one by one), so a torch
    DataLoader rebuilt from ``dataset`` and ``batch_sampler`` (as Accelerate's skip_first_batches
    builds one) serves the same batches."""
    n = 203
    if kind == "memory":
        data = FlashDataset(torch.arange(n) * 10, torch.arange(n))
    else:
        data = store_split(tmp_path, [(i * 10, i) for i in range(n)], chunk_size=16)
    for kw in (dict(shuffle=True, seed=4, window_chunks=3), dict(rank=1, world_size=3, drop_last=True)):
        if kind == "memory":
            kw.pop("window_chunks", None)
        loader = FlashDataLoader(data, batch_size=10, **kw)
        planned = list(loader.batch_sampler)
        assert len(planned) == len(loader.batch_sampler) == len(loader)
        assert list(loader.sampler) == [i for batch in planned for i in batch] and len(loader.sampler) == sum(
            map(len, planned)
        )
        served = [batch[1].tolist() for batch in loader]
        assert planned == served  # (labels are the sample indices)
        rebuilt = DataLoader(data, batch_sampler=loader.batch_sampler)
        assert [batch[1].tolist() for batch in rebuilt] == [batch[1].tolist() for batch in loader]
    loader = FlashDataLoader(data, batch_size=10, shuffle=True, seed=4)
    epoch = iter(loader)
    next(epoch)
    state = loader.state_dict()
    rest = [batch[1].tolist() for batch in epoch]
    resumed = FlashDataLoader(data, batch_size=10, shuffle=True, seed=4)
    resumed.load_state_dict(state)
    assert list(resumed.batch_sampler) == rest
    plain = FlashDataLoader(Samples(list(range(9))), batch_size=2, shuffle=True)  # (torch's own loader)
    assert isinstance(plain.sampler, RandomSampler) and len(plain.batch_sampler) == 5


def test_other_datasets_behave_exactly_like_torch():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([{"x": torch.tensor([i, i]), "y": i} for i in range(10)])

    plain = Samples([(np.float32(i), [i, i + 1]) for i in range(13)])
    cases = [
        (Stream(), dict(batch_size=3)),
        (plain, dict(batch_size=4, drop_last=True)),
        (plain, dict(batch_size=None)),
        (plain, dict(batch_size=5, collate_fn=lambda b: len(b))),
        (FlashDataset(torch.arange(9)), dict(batch_size=2, collate_fn=lambda b: torch.stack([s[0] for s in b]).sum())),
    ]
    for dataset, kwargs in cases:
        got, expected = list(FlashDataLoader(dataset, **kwargs)), list(DataLoader(dataset, **kwargs))
        assert_same(got, expected)
    sampler = RandomSampler(plain, generator=torch.Generator().manual_seed(1))
    assert len(FlashDataLoader(plain, batch_size=4, sampler=sampler)) == len(
        DataLoader(plain, batch_size=4, sampler=sampler)
    )
    torch.manual_seed(7)  # shuffled batches too: the same global RNG draws as torch's own loader
    got = list(FlashDataLoader(plain, batch_size=4, shuffle=True))
    torch.manual_seed(7)
    assert_same(got, list(DataLoader(plain, batch_size=4, shuffle=True)))


def test_argument_errors_match_torch(source):
    ours, oracle = source
    for kwargs in [
        dict(sampler=[0], shuffle=True),
        dict(batch_sampler=[[0]], batch_size=2),
        dict(batch_size=0),
        dict(timeout=-1),
        dict(prefetch_factor=2),
        dict(persistent_workers=True),
        dict(multiprocessing_context="spawn"),
        dict(num_workers=1, prefetch_factor=-1),
    ]:
        with pytest.raises(ValueError) as theirs:
            DataLoader(oracle, **kwargs)
        with pytest.raises(ValueError, match=str(theirs.value)[:40]):
            FlashDataLoader(ours, **kwargs)


def test_building_a_loader_leaves_the_global_rng_alone(source):
    """As torch's DataLoader: building draws nothing (a model initialised after it is the same);
    a shuffled loader draws its seed when its first epoch starts, an unshuffled one never."""
    ours, _ = source
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    shuffled = FlashDataLoader(ours, batch_size=4, shuffle=True)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(0)
    list(FlashDataLoader(ours, batch_size=4))
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(5)
    first = list(shuffled)
    torch.manual_seed(5)
    assert_same(list(FlashDataLoader(ours, batch_size=4, shuffle=True)), first)


def test_loader_attributes_as_torch_has_them(source):
    """What frameworks read off a loader: torch's attributes, len() of an epoch's iterator, and
    the attributes torch freezes after construction."""
    ours, oracle = source
    generator = torch.Generator()
    for make in (FlashDataLoader, DataLoader):
        data = ours if make is FlashDataLoader else oracle
        loader = make(data, batch_size=4, drop_last=True, generator=generator)
        assert loader.batch_size == 4 and loader.drop_last and loader.generator is generator
        assert loader.num_workers == 0 and loader.prefetch_factor is None and loader.dataset is data
        epoch = iter(loader)
        assert len(epoch) == len(loader) == len(data) // 4
        next(epoch)
        with pytest.raises(ValueError, match=r"batch_size attribute should not be set after \w+ is initialized"):
            loader.batch_size = 8
        with pytest.raises(ValueError, match="dataset attribute should not be set"):
            loader.dataset = data


class Doubled(FlashDataset):
    """A subclass that changes how a sample is read."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x * 2, y


def test_overridden_sample_access_is_honoured():
    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    with pytest.warns(UserWarning, match="Doubled overrides __getitem__"):
        loader = FlashDataLoader(Doubled(x, y), batch_size=4)
    assert_same(list(loader), list(DataLoader(Doubled(x, y), batch_size=4)))
    assert torch.equal(next(iter(loader))[0], x[:4] * 2)


def test_empty_dataset_with_shuffle_is_refused_as_torch_refuses_it():
    with pytest.raises(ValueError) as theirs:
        DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match=str(theirs.value)):
        FlashDataLoader(FlashDataset(torch.zeros(0, 2)), batch_size=2, shuffle=True)
    assert list(FlashDataLoader(FlashDataset(torch.zeros(0, 2)), batch_size=2)) == []


def test_flash_dataset_refuses_worker_processes():
    with pytest.raises(ValueError, match="one gather from memory"):
        FlashDataLoader(FlashDataset(torch.arange(8)), batch_size=2, num_workers=2)


def test_pin_memory_and_device_without_cuda(source):
    ours, oracle = source
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    with pytest.warns(UserWarning, match="no CUDA"):
        loader = FlashDataLoader(ours, batch_size=16, pin_memory=True)
    for a, b in zip(loader, DataLoader(oracle, batch_size=16)):
        assert_same(a, b)
    assert_same(list(FlashDataLoader(ours, batch_size=16, device="cpu")), list(DataLoader(oracle, batch_size=16)))
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        FlashDataLoader(ours, batch_size=16, device="cuda")
    assert not torch.cuda.is_initialized()


def test_get_dataloaders(tmp_path):
    x = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    DatasetConverter.create_chunked_dataset(
        TensorDataset(x, torch.arange(100)), tmp_path / "s", chunk_size=16, progress=False
    )
    seen = []
    loaders = get_dataloaders(
        tmp_path / "s", 10, augmentations={"train": lambda f: seen.append(f.shape) or f.float() / 255}
    )
    assert set(loaders) == {"train", "val", "test"}
    train = list(loaders["train"])
    assert train[0][0].dtype == torch.float32 and len(seen) == len(train) == 8
    val = [b[1] for b in loaders["val"]]
    assert val[0].dtype == torch.int64 and loaders["val"].shuffle is False and loaders["train"].shuffle is True
    ordered = torch.cat(val).tolist()
    assert ordered == torch.cat([b[1] for b in loaders["val"]]).tolist()  # not shuffled: same each epoch
    labels = torch.cat([b[1] for b in train])
    assert torch.allclose(torch.cat([b[0] for b in train]), x[labels].float() / 255)
    with pytest.raises(ValueError, match="unknown splits"):
        get_dataloaders(tmp_path / "s", 10, augmentations={"nope": abs})
    assert get_dataloaders(tmp_path / "s", 10, shuffle={"val": True})["val"].shuffle is True


def reading_threads():
    return [t for t in threading.enumerate() if t.name.startswith("datalflash-read")]


def corrupt_chunk_6(path):
    """Flip a byte inside chunk 6 (of 8 samples of 1000 float32) of a memmap field file."""
    with open(path, "r+b") as f:
        f.seek(128 + 8 * 4000 * 6 + 100)
        f.write(b"\x01")


def test_read_error_surfaces_fast_naming_the_chunk(tmp_path):
    data = store_split(tmp_path, [(torch.zeros(1000), i) for i in range(80)], chunk_size=8, backend="memmap")
    path = tmp_path / "memmap" / "train" / "0.npy"
    corrupt_chunk_6(path)
    loader = FlashDataLoader(data, batch_size=8, shuffle=False, window_chunks=1)
    start, seen = time.perf_counter(), []
    with pytest.raises(StoreReadError, match=r"checksum mismatch in split 'train' field '0' chunk 6") as info:
        seen.extend(loader)
    assert len(seen) == 6 and time.perf_counter() - start < 1.0
    assert "0.npy" in str(info.value)
    del info, loader
    gc.collect()
    assert reading_threads() == []


def record_worker(worker_id):
    """A worker_init_fn that writes what the worker sees, as torch's workers would see it."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    out = Path(os.environ["DATALFLASH_TEST_OUT"]) / f"worker{worker_id}.json"
    out.write_text(json.dumps([info.id, info.num_workers, info.seed, torch.initial_seed(), float(torch.rand(()))]))


def test_store_workers_see_worker_info_and_distinct_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("DATALFLASH_TEST_OUT", str(tmp_path))
    data = store_split(tmp_path, [(torch.zeros(4), i) for i in range(40)], chunk_size=8, backend="memmap")
    list(
        FlashDataLoader(data, batch_size=8, num_workers=2, worker_init_fn=record_worker, multiprocessing_context="fork")
    )
    seen = [json.loads((tmp_path / f"worker{w}.json").read_text()) for w in range(2)]
    assert [s[:2] for s in seen] == [[0, 2], [1, 2]]
    assert seen[0][2] + 1 == seen[1][2] and all(s[2] == s[3] for s in seen), "seed = base + id, as torch's"
    assert seen[0][4] != seen[1][4], "the workers' random draws differ"


def fail_in_worker(worker_id):
    raise ValueError(f"worker {worker_id} cannot start")


def test_worker_init_fn_errors_are_raised_as_torch_raises_them(tmp_path, source):
    _, oracle = source
    with pytest.raises(ValueError, match="cannot start"):
        list(DataLoader(oracle, batch_size=4, num_workers=1, worker_init_fn=fail_in_worker))
    data = store_split(tmp_path / "own", [(torch.zeros(4), i) for i in range(16)], chunk_size=8, backend="memmap")
    loader = FlashDataLoader(data, batch_size=4, num_workers=1, worker_init_fn=fail_in_worker)
    with pytest.raises(ValueError, match="worker 0 cannot start"):
        list(loader)


def test_worker_process_errors_surface_and_processes_stop(tmp_path):
    import multiprocessing

    data = store_split(tmp_path, [(torch.zeros(1000), i) for i in range(80)], chunk_size=8, backend="memmap")
    corrupt_chunk_6(tmp_path / "memmap" / "train" / "0.npy")
    loader = FlashDataLoader(data, batch_size=8, window_chunks=1, num_workers=2, multiprocessing_context="fork")
    seen = []
    with pytest.raises(StoreReadError, match=r"checksum mismatch in split 'train' field '0' chunk 6"):
        seen.extend(loader)
    assert len(seen) == 6
    for i, _ in enumerate(FlashDataLoader(data, batch_size=8, window_chunks=1, num_workers=2)):
        if i == 2:
            assert multiprocessing.active_children()
            break
    gc.collect()
    assert multiprocessing.active_children() == []


def test_threads_stop_on_break_delete_and_keyboard_interrupt(tmp_path):
    data = store_split(tmp_path, [(torch.zeros(64), i) for i in range(400)], chunk_size=16)
    loader = FlashDataLoader(data, batch_size=8, shuffle=True, seed=0, window_chunks=2, read_ahead_bytes=2**20)
    for i, _ in enumerate(loader):
        if i == 3:
            assert reading_threads()
            break
    gc.collect()
    assert reading_threads() == []

    def interrupted_at_batch_2(batches):
        for i, _ in enumerate(batches):
            if i == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_at_batch_2(loader)
    gc.collect()
    assert reading_threads() == []
    iterator = iter(loader)
    next(iterator)
    del loader, iterator
    gc.collect()
    assert reading_threads() == []


def test_read_ahead_is_bounded(tmp_path):
    """Chunks are read at most one window ahead of the window of the next sample (two buffers)."""
    data = store_split(tmp_path, [(torch.zeros(16), i) for i in range(160)], chunk_size=8, backend="memmap")
    reads = []
    original = data.store.read_chunks
    data.store.read_chunks = lambda split, chunks, out=None: reads.append(chunks[0]) or original(split, chunks, out)
    loader = FlashDataLoader(data, batch_size=4, window_chunks=2, read_ahead_bytes=2**20)
    for i, _ in enumerate(loader):
        time.sleep(0.002)
        next_window = (i + 1) * 4 // 16
        assert len(reads) <= (next_window + 2) * 2, (i, len(reads))
    # each chunk read exactly once, and the next epoch's first window (chunks 0 and 1: the order is
    # known without a shuffle) once more while the last one was served
    assert sorted(reads) == sorted([*range(20), 0, 1])


class Pair(NamedTuple):
    image: torch.Tensor
    label: int


class Pairs(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return Pair(torch.full((2,), float(i)), i)


def test_namedtuple_samples_keep_their_type(tmp_path):
    """As default_collate gives them: batches (and single samples) are the sample's namedtuple."""
    path = DatasetConverter.create_chunked_dataset(
        Pairs(), tmp_path / "s", chunk_size=4, split_ratios={"train": 1.0}, shuffle=False, progress=False
    )
    split = ChunkedDataset(path, "train")
    assert set(split.fields) == {"image", "label"}
    assert type(split[3]) is Pair and split[3].label == 3
    expected = list(DataLoader(Pairs(), batch_size=3))
    for dataset in (split, DatasetConverter.from_pytorch_dataset(Pairs())):
        got = list(FlashDataLoader(dataset, batch_size=3))
        assert_same(got, expected)
        assert_same(list(DataLoader(dataset, batch_size=3)), expected)  # (torch's loader over ours)
    code = (
        "import sys; from datalflash.core import FlashDataLoader; from datalflash.loading import ChunkedDataset; "
        "b = next(iter(FlashDataLoader(ChunkedDataset(sys.argv[1], 'train'), batch_size=4))); "
        "print(type(b).__name__, b._fields, b.label.tolist())"
    )
    other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert other.stdout.split("\n")[0] == "Pair ('image', 'label') [0, 1, 2, 3]", other.stderr[-2000:]


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_split_that_fits_the_read_ahead_is_read_once_and_served_in_each_epochs_order(tmp_path, backend, num_workers):
    """A split within ``read_ahead_bytes`` is one window: read whole in the first epoch and kept,
    later epochs read nothing and serve the same batches a fresh loader of that epoch serves."""
    rng = np.random.default_rng(0)
    samples = [{"tokens": torch.arange(i, i + int(rng.integers(0, 9))), "label": i} for i in range(83)]
    data = store_split(tmp_path, samples, chunk_size=8, backend=backend)
    reads = []
    original = data.store.read_chunks
    data.store.read_chunks = lambda split, chunks, out=None: reads.append(chunks[0]) or original(split, chunks, out)
    options = {"batch_size": 6, "shuffle": True, "seed": 4, "num_workers": num_workers, "collate": "list"}
    loader = FlashDataLoader(data, **options)
    assert loader.window_chunks == 11
    for epoch in range(3):
        served = list(loader)
        if num_workers == 0:  # (workers read in their own processes: nothing to count here)
            assert sorted(reads) == list(range(11))  # every chunk once, in the first epoch
        fresh = FlashDataLoader(store_split(tmp_path / str(epoch), samples, 8, backend), **options)
        fresh.set_epoch(epoch)
        expected = list(fresh)
        assert len(served) == len(expected) == 14
        for got, want in zip(served, expected):
            assert torch.equal(got["label"], want["label"])
            for row, label in zip(got["tokens"], got["label"].tolist()):
                assert torch.equal(row, samples[label]["tokens"])
    labels = torch.cat([b["label"] for b in served]).tolist()
    assert sorted(labels) == list(range(83))


def test_a_split_larger_than_the_read_ahead_is_read_every_epoch(tmp_path):
    data = store_split(tmp_path, [(torch.zeros(16), i) for i in range(160)], chunk_size=8, backend="memmap")
    reads = []
    original = data.store.read_chunks
    data.store.read_chunks = lambda split, chunks, out=None: reads.append(chunks[0]) or original(split, chunks, out)
    loader = FlashDataLoader(data, batch_size=4, shuffle=True, window_chunks=5, read_ahead_bytes=2**20)  # (drawn seeds)
    for _ in range(2):
        assert sorted(torch.cat([b[1] for b in loader]).tolist()) == list(range(160))
    assert sorted(reads) == sorted(list(range(20)) * 2)  # every chunk, every epoch


def test_an_epoch_left_early_keeps_the_split_it_read(tmp_path):
    data = store_split(tmp_path, [(torch.full((4,), float(i)), i) for i in range(40)], chunk_size=8, backend="zarr")
    reads = []
    original = data.store.read_chunks
    data.store.read_chunks = lambda split, chunks, out=None: reads.append(chunks[0]) or original(split, chunks, out)
    loader = FlashDataLoader(data, batch_size=4, shuffle=True, seed=0)
    for _epoch in range(3):
        for k, (x, label) in enumerate(loader):
            assert torch.equal(x[:, 0], label.float())
            if k == 2:
                break  # (as limit_train_batches or a time budget leaves an epoch)
    assert sorted(reads) == list(range(5))


@pytest.mark.parametrize("seed, shuffle, early", [(1, True, True), (None, False, True), (None, True, False)])
def test_the_next_epochs_first_window_is_read_as_an_epoch_ends_when_its_order_is_known(tmp_path, seed, shuffle, early):
    """With a given seed (or no shuffle) the next epoch's order is known, so its first window is
    read while the last one is served: that epoch does not read it again. With a drawn seed it
    cannot be (the seed is drawn as the epoch starts). Batches are the same either way."""
    data = store_split(tmp_path, [(torch.full((3,), float(i)), i) for i in range(160)], chunk_size=8, backend="zarr")
    reads = []
    original = data.store.read_chunks
    data.store.read_chunks = lambda split, chunks, out=None: reads.append(chunks[0]) or original(split, chunks, out)
    options = {"batch_size": 5, "shuffle": shuffle, "seed": seed, "window_chunks": 4, "read_ahead_bytes": 2**20}
    loader = FlashDataLoader(data, **options)
    for epoch in range(2):
        torch.manual_seed(epoch)  # (a drawn seed: the same one for the reference loader below)
        served = list(loader)
        assert all(t.name != "datalflash-read" for t in threading.enumerate())  # (no reader left running)
        samples = [(torch.full((3,), float(i)), i) for i in range(160)]
        fresh = FlashDataLoader(store_split(tmp_path / str(epoch), samples, 8), **options)
        fresh.set_epoch(epoch)
        torch.manual_seed(epoch)
        expected = list(fresh)
        assert [b[1].tolist() for b in served] == [b[1].tolist() for b in expected]
        assert all(torch.equal(x[:, 0], y.float()) for x, y in served)
    assert len(reads) == 2 * 20 + (
        4 if early else 0
    )  # (each epoch reads the next one's first 4 chunks, then skips its own)
    assert sorted(set(reads)) == list(range(20))


def test_chunks_too_large_for_the_read_ahead_budget_are_named_in_a_warning(tmp_path):
    x = torch.zeros(64, 256, 1024, dtype=torch.uint8)  # 256 KiB a sample: chunks of 32 samples, 8 MiB
    path = DatasetConverter.create_chunked_dataset(
        TensorDataset(x), tmp_path / "s", chunk_size=32, split_ratios={"train": 1.0}, progress=False
    )
    with pytest.warns(UserWarning, match=r"'train': a chunk holds 8 MiB.*read_ahead_bytes=12 MiB.*smaller chunk_size"):
        loader = FlashDataLoader(ChunkedDataset(path, "train"), batch_size=16, read_ahead_bytes=12 * 2**20)
    assert sum(len(b[0]) for b in loader) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a budget that holds a window and the next, or the whole split: silent)
        FlashDataLoader(ChunkedDataset(path, "train"), batch_size=16, read_ahead_bytes=16 * 2**20)
        FlashDataLoader(ChunkedDataset(path, "train"), batch_size=16)
