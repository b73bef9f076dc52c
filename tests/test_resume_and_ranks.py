"""Exactly-once across ranks, equal batch counts, determinism and exact resume, on RAM data and
store splits, with threads or worker processes (property tests over sizes and settings)."""

import json
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset
from datalflash.utils import DatasetConverter

_stores = {}


def dataset(tmp_root, kind, n, chunk_size):
    """Samples ``(features, index)``; a store split or RAM data of ``n`` samples."""
    features = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    if kind == "memory":
        return FlashDataset(features, torch.arange(n))
    key = (n, chunk_size)
    if key not in _stores:
        path = tmp_root / f"store-{n}-{chunk_size}"
        DatasetConverter.create_chunked_dataset(
            TensorDataset(features, torch.arange(n)),
            path,
            chunk_size=chunk_size,
            split_ratios={"train": 1.0},
            shuffle=False,
            backend="memmap",
            progress=False,
        )
        _stores[key] = path
    return ChunkedDataset(_stores[key], "train")


def indices(batches):
    return [i for b in batches for i in b[1].tolist()]


def make(data, **kw):
    kw.setdefault("window_chunks", 2 if isinstance(data, ChunkedDataset) else None)
    if kw["window_chunks"] is None:
        del kw["window_chunks"]
    return FlashDataLoader(data, shuffle=True, **kw)


def check_once(seen, n, world_size, drop_last, slack=0):
    counts = Counter(seen)
    assert set(counts) <= set(range(n))
    if drop_last:
        assert max(counts.values(), default=1) == 1
    else:
        assert set(counts) == set(range(n))
        assert len(seen) - n <= world_size - 1 + slack


settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
config = dict(
    kind=st.sampled_from(["memory", "store"]),
    n=st.sampled_from([1, 5, 64, 203]),
    chunk_size=st.sampled_from([1, 7, 32]),
    batch_size=st.integers(1, 40),
    world_size=st.integers(1, 5),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**31),
)


@settings_
@given(**config)
def test_each_epoch_serves_every_sample_once_across_ranks(
    tmp_path_factory, kind, n, chunk_size, batch_size, world_size, drop_last, seed
):
    data = dataset(tmp_path_factory.getbasetemp(), kind, n, chunk_size)
    for epoch in range(2):
        per_rank = []
        for rank in range(world_size):
            loader = make(data, batch_size=batch_size, drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            assert all(len(b[1]) == batch_size for b in batches[:-1])
            per_rank.append(batches)
        assert len({len(b) for b in per_rank}) == 1, "every rank yields the same number of batches"
        seen = [i for batches in per_rank for i in indices(batches)]
        share = n // world_size if drop_last else -(-n // world_size)
        if drop_last:  # the rank split leaves out < world_size, then each rank drops its short batch
            assert len(seen) == world_size * (share - share % batch_size)
        check_once(seen, n, world_size, drop_last)
        again = make(data, batch_size=batch_size, drop_last=drop_last, seed=seed, rank=0, world_size=world_size)
        again.set_epoch(epoch)
        assert indices(again) == indices(per_rank[0]), "same seed and epoch, same order"


@settings_
@given(**config, resumed_world=st.integers(1, 4), stop=st.integers(0, 12))
def test_resume_serves_the_rest_of_the_epoch_once_on_any_world_size(
    tmp_path_factory, kind, n, chunk_size, batch_size, world_size, drop_last, seed, resumed_world, stop
):
    data = dataset(tmp_path_factory.getbasetemp(), kind, n, chunk_size)
    kw = dict(batch_size=batch_size, drop_last=drop_last, seed=seed)
    first, heads, state = [], [], None
    for rank in range(world_size):
        loader = make(data, rank=rank, world_size=world_size, **kw)
        it = iter(loader)  # stop at most after the last batch, before the epoch is closed
        heads.append(indices([b for _, b in zip(range(min(stop, len(loader))), it)]))
        first.extend(heads[-1])
        state = json.loads(json.dumps(loader.state_dict())) if state is None else state
        assert loader.state_dict() == state, "every rank's state describes all ranks"
    rest, counts = [], set()
    for rank in range(resumed_world):
        resumed = make(
            data, rank=rank, world_size=resumed_world, batch_size=batch_size, drop_last=drop_last, seed=seed + 1
        )
        resumed.load_state_dict(state)
        assert resumed.seed == seed
        expected = len(resumed)
        batches = list(resumed)
        assert len(batches) == expected
        counts.add(expected)
        rest.extend(indices(batches))
        if resumed_world == world_size:  # same world: each rank's very batches of an uninterrupted run
            assert heads[rank] + indices(batches) == indices(make(data, rank=rank, world_size=world_size, **kw))
    assert len(counts) == 1, "resumed ranks yield the same number of batches"
    if resumed_world != world_size:  # (on the same world, padding repeats as in an uninterrupted run)
        assert set(first).isdisjoint(rest)
    if drop_last:
        assert max(Counter(first + rest).values(), default=1) == 1
    else:
        check_once(first + rest, n, world_size, drop_last, slack=resumed_world - 1)


@pytest.mark.parametrize("kind", ["memory", "store"])
def test_resume_equals_uninterrupted_run_and_next_epochs_too(tmp_path, kind):
    data = dataset(tmp_path, kind, 203, 16)
    kw = dict(batch_size=10, seed=3)
    reference = make(data, **kw)
    epochs = [indices(reference) for _ in range(3)]
    loader = make(data, **kw)
    it = iter(loader)
    head = [next(it) for _ in range(7)]
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["served"] == 70
    resumed = make(data, batch_size=10)
    resumed.load_state_dict(state)
    assert len(resumed) == len(reference) - 7
    assert indices(head) + indices(resumed) == epochs[0]
    assert indices(resumed) == epochs[1] and indices(resumed) == epochs[2]
    # a state taken between epochs starts the next one
    assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["served"] == 0


def test_resume_reads_no_chunk_already_consumed(tmp_path):
    data = dataset(tmp_path, "store", 200, 10)
    loader = FlashDataLoader(data, batch_size=10, shuffle=True, seed=0, window_chunks=2)
    it = iter(loader)
    served = set(indices([next(it) for _ in range(9)]))
    consumed = {c for c in range(20) if set(range(c * 10, c * 10 + 10)) <= served}
    assert len(consumed) >= 6
    resumed = ChunkedDataset(data.store.path, "train")
    read = []
    original = resumed.store.read_chunks
    resumed.store.read_chunks = lambda split, chunks, out=None: (read.extend(chunks), original(split, chunks, out))[1]
    again = FlashDataLoader(resumed, batch_size=10, shuffle=True, window_chunks=2)
    again.load_state_dict(loader.state_dict())
    rest = set(indices(again))
    assert rest == set(range(200)) - served
    read, ahead = read[:-2], read[-2:]  # (the seed is known: the next epoch's first window is read last)
    assert not consumed & set(read) and len(read) == len(set(read))
    assert len(set(ahead)) == 2


def test_incompatible_state_refused(tmp_path):
    data = dataset(tmp_path, "store", 64, 7)
    state = FlashDataLoader(data, batch_size=4, shuffle=True, seed=0, window_chunks=2).state_dict()
    other = dataset(tmp_path, "store", 64, 32)
    with pytest.raises(ValueError, match=r"different data or settings.*data"):
        FlashDataLoader(other, batch_size=4, shuffle=True, window_chunks=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle: saved True, this loader False"):
        FlashDataLoader(data, batch_size=4, shuffle=False, window_chunks=2).load_state_dict(state)
    with pytest.raises(ValueError, match="window_chunks: saved 2, this loader 3"):
        FlashDataLoader(data, batch_size=4, shuffle=True, window_chunks=3).load_state_dict(state)
    with pytest.raises(ValueError, match="not a datalflash loader state"):
        FlashDataLoader(data, batch_size=4, shuffle=True, window_chunks=2).load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="remaining"):
        FlashDataLoader(data, batch_size=4, shuffle=True, window_chunks=2).load_state_dict(
            {**state, "remaining": [[0, 999]]}
        )
    ram = FlashDataset(torch.zeros(64, 3))
    with pytest.raises(ValueError, match="data"):
        FlashDataLoader(ram, batch_size=4, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="own order"):
        FlashDataLoader(ram, batch_size=4, sampler=range(64)).state_dict()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes_give_the_same_batches_ranks_and_resume(tmp_path, context):
    data = dataset(tmp_path, "store", 203, 16)
    kw = dict(batch_size=10, seed=1, drop_last=False)
    for world_size, rank in [(1, 0), (3, 2)]:
        threads = [b[1] for b in make(data, rank=rank, world_size=world_size, **kw)]
        loader = make(data, rank=rank, world_size=world_size, num_workers=2, multiprocessing_context=context, **kw)
        procs = [b[1] for b in loader]
        assert len(procs) == len(threads) and all(torch.equal(a, b) for a, b in zip(procs, threads))
        for batch_in_worker, batch_in_thread in zip(make(data, num_workers=2, **kw), make(data, **kw)):
            assert torch.equal(batch_in_worker[0], batch_in_thread[0])
    loader = make(data, num_workers=2, persistent_workers=True, multiprocessing_context=context, **kw)
    full = indices(make(data, **kw))
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    resumed = make(data, num_workers=2, multiprocessing_context=context, batch_size=10)
    resumed.load_state_dict(loader.state_dict())
    assert indices(head) + indices(resumed) == full
    loader.close()


def test_resume_in_a_new_process(tmp_path):
    data = dataset(tmp_path, "store", 203, 16)
    loader = make(data, batch_size=9, seed=11)
    full = indices(loader)
    loader = make(data, batch_size=9, seed=11)
    it = iter(loader)
    head = indices([next(it) for _ in range(6)])
    (tmp_path / "state.json").write_text(json.dumps(loader.state_dict()))
    script = textwrap.dedent(f"""
        import json, sys
        from datalflash.core import ChunkedDataset, FlashDataLoader
        loader = FlashDataLoader(ChunkedDataset({str(data.store.path)!r}), batch_size=9, shuffle=True, window_chunks=2)
        loader.load_state_dict(json.load(open({str(tmp_path / "state.json")!r})))
        print(json.dumps([i for b in loader for i in b[1].tolist()]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert head + json.loads(out) == full


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.sampled_from([5, 64, 203]),
    chunk_size=st.sampled_from([7, 32]),
    batch_size=st.integers(1, 40),
    world_size=st.integers(1, 3),
    workers=st.integers(1, 3),
    resumed_workers=st.integers(0, 2),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**31),
    stop=st.integers(0, 6),
    data=st.data(),
)
def test_worker_counts_change_no_batch_and_no_resume(
    tmp_path_factory, n, chunk_size, batch_size, world_size, workers, resumed_workers, drop_last, seed, stop, data
):
    ds = dataset(tmp_path_factory.getbasetemp(), "store", n, chunk_size)
    rank = data.draw(st.integers(0, world_size - 1))
    kw = dict(batch_size=batch_size, drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)
    reference = indices(make(ds, **kw))
    loader = make(ds, num_workers=workers, multiprocessing_context="fork" if workers else None, **kw)
    it = iter(loader)
    head = indices([b for _, b in zip(range(min(stop, len(loader))), it)])
    resumed = make(ds, num_workers=resumed_workers, multiprocessing_context="fork" if resumed_workers else None, **kw)
    resumed.load_state_dict(loader.state_dict())
    del it
    assert head + indices(resumed) == reference


def test_each_rank_reads_only_the_chunks_it_serves(tmp_path):
    data = dataset(tmp_path, "store", 200, 10)  # 20 chunks
    reads = []
    for rank in range(2):
        ds = ChunkedDataset(data.store.path, "train")
        got = []
        original = ds.store.read_chunks
        ds.store.read_chunks = lambda split, chunks, out=None, got=got, original=original: (
            got.extend(chunks),
            original(split, chunks, out),
        )[1]
        served = set(
            indices(FlashDataLoader(ds, batch_size=8, shuffle=True, seed=0, window_chunks=2, rank=rank, world_size=2))
        )
        got, ahead = got[:-2], got[-2:]  # (the seed is known: the next epoch's first window is read last)
        assert set(got) == {i // 10 for i in served} and len(got) == len(set(got))
        assert len(set(ahead)) == 2
        reads.append(set(got))
    assert reads[0] | reads[1] == set(range(20))
    assert len(reads[0] & reads[1]) <= 2, "only the window at the boundary between the ranks' shares is shared"


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_padded_repeats_mark_the_padding_of_each_rank(world_size):
    """Dropping ``padded_repeats`` samples from each rank's epoch leaves every sample once."""
    data = FlashDataset(torch.arange(10))
    seen = []
    for rank in range(world_size):
        loader = FlashDataLoader(data, batch_size=3, shuffle=True, seed=1, rank=rank, world_size=world_size)
        samples = torch.cat([batch[0] for batch in loader]).tolist()
        seen += samples[: len(samples) - loader.padded_repeats]
    assert sorted(seen) == list(range(10))
