"""Faults a shared store meets: re-conversion under a reader, racing writers, short frames, special
files. Each test runs under a hard time limit (SIGALRM), so a hang fails instead of stalling CI."""

import contextlib
import gc
import json
import os
import pickle
import signal
import struct
import threading

import numcodecs
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from datalflash.convert import DatasetConverter
from datalflash.errors import StoreChangedError, StoreExistsError, StoreFormatError
from datalflash.loading import ChunkedDataset, FlashDataLoader
from datalflash.store import open_store, verify_store
from datalflash.store.generations import generation_dir
from datalflash.store.integrity import crc32c
from tests.helpers import survivors

BACKENDS = ["zarr", "memmap", "hdf5"]
N, CHUNK = 60, 10


@contextlib.contextmanager
def time_limit(seconds):
    """Fail (TimeoutError) instead of hanging past ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def samples(offset):
    """Sample ``i`` is ``([offset + i] * 4, offset + i)``: two conversions tell apart by ``offset``."""
    values = torch.arange(offset, offset + N, dtype=torch.int64)
    return TensorDataset(values[:, None].repeat(1, 4), values)


def convert(data, path, backend, **kwargs):
    kwargs.setdefault("overwrite", True)
    return DatasetConverter.create_chunked_dataset(
        data,
        path,
        chunk_size=CHUNK,
        split_ratios={"train": 1.0},
        shuffle=False,
        backend=backend,
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_keeps_reading_the_generation_it_opened(tmp_path, backend):
    path = tmp_path / "store"
    convert(samples(0), path, backend)
    with time_limit(60):
        loader = FlashDataLoader(ChunkedDataset(path), batch_size=5, shuffle=True, seed=0, window_chunks=1)
        batches = iter(loader)
        seen = [next(batches)[1] for _ in range(3)]
        convert(samples(1000), path, backend)  # a new generation replaces the store mid-epoch
        seen += [b[1] for b in batches]
        assert sorted(torch.cat(seen).tolist()) == list(range(N))  # all of the old store, none of the new
        old = json.loads((path / "manifest.json").read_text())["generation"]
        assert next(iter(ChunkedDataset(path)))[1] == 1000  # a new reader reads the new store
        worker_copy = pickle.loads(pickle.dumps(loader.dataset))  # a spawned worker's copy of the old reader
        assert worker_copy[N - 1][1] == N - 1
    kept = [p.name for p in tmp_path.iterdir() if ".gen-" in p.name]
    assert len(kept) == 1 and old not in kept[0]  # the old generation, kept while it is read


@pytest.mark.parametrize("backend", BACKENDS)
def test_old_generations_go_once_unused_and_stale_readers_say_so(tmp_path, backend):
    path = tmp_path / "store"
    convert(samples(0), path, backend)
    first = open_store(path)
    first_generation = first.manifest.generation
    first.read_chunks("train", [0])
    convert(samples(1000), path, backend)
    assert generation_dir(path, first_generation).is_dir()  # `first` still has it open
    assert first.read_chunks("train", [5])["1"][0] == 50
    first.close()
    convert(samples(2000), path, backend)  # the next conversion removes generations nobody reads
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    with pytest.raises(StoreChangedError, match="replaced after it was opened"):
        first.read_chunks("train", [0])
    assert open_store(path).read_chunks("train", [0])["1"][0] == 2000


class PublishesFirst(Dataset):
    """A dataset whose conversion, near its end, lets another conversion into the same path
    publish first (two jobs racing to convert the same data)."""

    def __init__(self, path, backend, overwrite):
        self.data, self.path, self.backend, self.overwrite = samples(0), path, backend, overwrite
        self.raced = False

    def __len__(self):
        return N

    def __getitem__(self, i):
        if i == N - 1 and not self.raced:
            self.raced = True
            convert(samples(1000), self.path, self.backend, overwrite=self.overwrite)
        return self.data[i]


@pytest.mark.parametrize("backend", ["zarr", "memmap"])
def test_racing_conversions_without_overwrite_publish_exactly_one(tmp_path, backend):
    path = tmp_path / "store"
    racer = PublishesFirst(path, backend, overwrite=False)
    with pytest.raises(StoreExistsError, match="published by another writer while this conversion ran"):
        convert(racer, path, backend, overwrite=False)
    assert racer.raced
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the loser's staging is gone
    assert open_store(path).read_chunks("train", [0])["1"][0] == 1000  # the winner's store, whole
    assert verify_store(path, progress=False).ok


@pytest.mark.parametrize("backend", ["zarr", "memmap"])
def test_racing_conversions_with_overwrite_the_last_publisher_wins(tmp_path, backend):
    path = tmp_path / "store"
    racer = PublishesFirst(path, backend, overwrite=True)
    convert(racer, path, backend, overwrite=True)
    store = open_store(path)
    assert store.read_chunks("train", [0])["1"][0] == 0  # the last to publish
    assert verify_store(path, progress=False).ok
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the other store: unused, removed


def test_a_short_blosc_frame_is_a_format_error_and_verify_finds_it(tmp_path):
    path = tmp_path / "store"
    convert(samples(0), path, "zarr")
    chunk_file = path / "train.zarr" / "0" / "c" / "2" / "0"
    short = np.frombuffer(numcodecs.Blosc(cname="lz4").encode(np.arange(8 * 4, dtype=np.int64)), np.uint8)
    chunk_file.write_bytes(short.tobytes() + struct.pack("<I", crc32c(short)))  # checksum-valid, 8 rows of 10
    store = open_store(path, verify="always")
    with pytest.raises(StoreFormatError, match=r"split 'train' field '0' chunk 2.*decodes to 256 bytes"):
        store.read_chunks("train", [3, 2], out=store.allocate(20))  # into a reused buffer
    report = verify_store(path, progress=False)
    assert [(split, chunk) for split, chunk, _ in report.bad] == [("train", 2)]


SPECIAL = {
    "zarr": ["train.zarr/0/c/1/0", "train.zarr/0/zarr.json", "manifest.json"],
    "memmap": ["train/0.npy", "manifest.json"],
    "hdf5": ["train.h5", "manifest.json"],
}


@pytest.mark.parametrize("backend,relative", [(b, r) for b, rs in SPECIAL.items() for r in rs])
def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path, backend, relative):
    path = tmp_path / "store"
    convert(samples(0), path, backend)
    target = path / relative
    target.unlink()
    os.mkfifo(target)
    with time_limit(20), pytest.raises(StoreFormatError, match="not a regular file"):
        open_store(path, verify="always").read_chunks("train", [1])


TRAINER = """
import os, sys, time
import multiprocessing
from datalflash.loading import ChunkedDataset, FlashDataLoader
loader = FlashDataLoader(ChunkedDataset(sys.argv[1]), batch_size=5, window_chunks=1, num_workers=2,
                         multiprocessing_context=sys.argv[2])
batches = iter(loader)
next(batches)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reading_workers_exit_when_their_trainer_is_killed(tmp_path, method):
    import subprocess
    import sys

    convert(samples(0), tmp_path / "store", "memmap")
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path / "store"), method], stdout=subprocess.PIPE, text=True
    )
    try:
        with time_limit(120):
            workers = [int(pid) for pid in trainer.stdout.readline().split()]
        assert len(workers) == 2
        trainer.kill()
        trainer.wait(30)
        assert not survivors(workers), "workers outlived their killed trainer"
    finally:
        trainer.kill()


def test_a_killed_reading_worker_is_an_error_naming_the_chunk(tmp_path):
    import multiprocessing

    from datalflash.errors import StoreReadError

    convert(samples(0), tmp_path / "store", "memmap")
    loader = FlashDataLoader(
        ChunkedDataset(tmp_path / "store"), batch_size=5, window_chunks=1, num_workers=1, multiprocessing_context="fork"
    )
    batches = iter(loader)
    with time_limit(60):
        next(batches)
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(StoreReadError, match=r"split 'train' chunk \d+: .*worker process"):
            list(batches)


def test_a_broken_remote_cache_warns_once_and_reading_goes_on(tmp_path):
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")
    convert(samples(0), tmp_path / "store", "zarr")
    fsspec.filesystem("memory").put(str(tmp_path / "store"), "/faulty-cache", recursive=True)
    cache = tmp_path / "cache"
    store = open_store("memory://faulty-cache", cache_dir=cache, cache_bytes=2**20)
    assert store.read_chunks("train", [0])["1"].tolist() == list(range(CHUNK))
    import shutil

    shutil.rmtree(cache)
    cache.write_text("not a directory any more")  # the cache can neither be read nor written now
    with pytest.warns(UserWarning, match="the chunk cache failed") as warned:
        got = np.concatenate([store.read_chunks("train", [c])["1"] for c in range(N // CHUNK)])
    assert got.tolist() == list(range(N)) and len(warned) == 1


def test_a_remote_store_replaced_under_a_reader_is_refused(tmp_path):
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")
    fs = fsspec.filesystem("memory")
    convert(samples(0), tmp_path / "a", "zarr")
    convert(samples(1000), tmp_path / "b", "zarr")
    fs.put(str(tmp_path / "a"), "/replaced", recursive=True)
    store = open_store("memory://replaced")
    assert store.read_chunks("train", [0])["1"][0] == 0
    fs.rm("/replaced", recursive=True)
    fs.put(str(tmp_path / "b"), "/replaced", recursive=True)  # uploaded over the store being read
    with pytest.raises(StoreChangedError, match="the store was replaced"):
        store.read_chunks("train", [1])


LOOPED = {"zarr": "train.zarr/0/c/1/0", "memmap": "train/0.npy", "hdf5": "train.h5"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_link_loop_in_place_of_a_file_is_a_read_error_naming_it(tmp_path, backend):
    from datalflash.errors import StoreReadError

    path = tmp_path / "store"
    convert(samples(0), path, backend)
    target = path / LOOPED[backend]
    target.unlink()
    target.symlink_to(target.name)  # a link to itself: ELOOP
    store = open_store(path, verify="always")
    with time_limit(20), pytest.raises(StoreReadError, match=rf"split 'train'.*{target.name}|{target.name}.*Too many"):
        store.read_chunks("train", [1])
    if backend == "memmap":  # (its read-ahead hint opens the split too: the same error, not a bare OSError)
        with pytest.raises(StoreReadError):
            open_store(path).will_need("train", [1])


SCALE = """
import json, os, sys, time, uuid
import numpy as np

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

from datalflash.format.manifest import FieldSpec, Manifest, SplitInfo, write_manifest
from datalflash.loading import ChunkedDataset, FlashDataLoader
import torch
path, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.join(path, "train"))
with open(os.path.join(path, "train", "x.npy"), "wb") as f:  # sparse: the blocks are never written
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
    f.truncate(f.tell() + n)
write_manifest(path, Manifest("memmap", {}, chunk, {"x": FieldSpec("x", "uint8", ())},
               {"kind": "field", "name": "x"}, {"train": SplitInfo(n, -(-n // chunk))}, generation=uuid.uuid4().hex))
base = rss()
start = time.perf_counter()
loader = FlashDataLoader(ChunkedDataset(path), batch_size=256, shuffle=True, seed=0, read_ahead_bytes=8 * 2**20)
batches = iter(loader)
first = next(batches)
seconds = time.perf_counter() - start
state = json.dumps(loader.state_dict())
print(json.dumps({"seconds": seconds, "rss": rss() - base, "state": len(state), "batches": len(loader),
                  "shape": list(first.shape)}))
"""


def test_a_store_of_ten_billion_samples_opens_and_serves_at_once(tmp_path):
    import subprocess
    import sys

    n = 10**10
    run = subprocess.run(
        [sys.executable, "-c", SCALE, str(tmp_path / "huge"), str(n), str(10**5)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["shape"] == [256] and result["batches"] == -(-n // 256)
    assert result["seconds"] < 1.0, result
    assert result["rss"] < 200 * 2**20, result
    assert result["state"] < 2**20, result


def test_a_manifest_declaring_absurd_counts_is_refused_at_open(tmp_path):
    from datalflash.errors import StoreReadError

    path = tmp_path / "store"
    convert(samples(0), path, "memmap")
    doc = json.loads((path / "manifest.json").read_text())
    doc["chunk_size"], doc["splits"]["train"] = 1, {"num_samples": 10**12, "num_chunks": 10**12}
    (path / "manifest.json").write_text(json.dumps(doc))
    with time_limit(10), pytest.raises(StoreFormatError, match="more than the 16777216 a split may have"):
        open_store(path)
    doc["chunk_size"], doc["splits"]["train"] = 10**6, {"num_samples": 10**12, "num_chunks": 10**6}
    doc.pop("checksums")
    (path / "manifest.json").write_text(json.dumps(doc))
    store = open_store(path)  # what the files hold is checked when the split opens
    with time_limit(10), pytest.raises((StoreFormatError, StoreReadError), match=r"holds \(60,"):
        next(iter(FlashDataLoader(ChunkedDataset(store), batch_size=8, shuffle=True)))


def wait_for_no_reading_threads(seconds=10):
    import time

    deadline = time.monotonic() + seconds
    while any(t.name.startswith("datalflash-read") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)


def stall_reads(worker_id):
    """worker_init_fn: every read in this worker hangs (a storage that stopped answering)."""
    import time

    import datalflash.reading.readers as readers

    readers._worker_store.read_hook = lambda attempt: time.sleep(3600)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stuck_read_times_out_and_closing_does_not_wait_for_it(tmp_path, monkeypatch, workers):
    import time

    import datalflash.reading.readers as readers

    monkeypatch.setattr(readers, "CLOSE_TIMEOUT", 1.0)
    convert(samples(0), tmp_path / "store", "memmap")
    data = ChunkedDataset(tmp_path / "store")
    release = threading.Event()  # (set at the end, so the abandoned thread ends before other tests count threads)
    if workers == 0:
        data.store.read_hook = lambda attempt: release.wait(60)
    loader = FlashDataLoader(
        data,
        batch_size=5,
        window_chunks=1,
        timeout=0.5,
        num_workers=workers,
        worker_init_fn=stall_reads if workers else None,
        multiprocessing_context="fork" if workers else None,
    )
    gc.collect()  # (what earlier tests left to collect is not this test's time)
    start = time.monotonic()
    with time_limit(30), pytest.warns(UserWarning, match="still in a read after 1 s"):  # noqa: PT031
        with pytest.raises(RuntimeError, match=r"^DataLoader timed out after 0\.5 seconds: .*took longer") as info:
            next(iter(loader))
        assert isinstance(info.value, TimeoutError)
        assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # (crosses processes whole)
        loader.close()
        gc.collect()
    assert time.monotonic() - start < 10
    release.set()
    wait_for_no_reading_threads()


def test_overwrite_never_replaces_something_that_appeared_and_is_not_a_store(tmp_path):
    from datalflash.convert.publish import publish_store, staging_dir

    path = tmp_path / "store"
    convert(samples(0), tmp_path / "staged", "memmap")
    staging = staging_dir(path)
    os.rename(tmp_path / "staged", staging)
    path.mkdir()
    (path / "thesis.tex").write_text("do not delete")  # appeared while the conversion ran
    with pytest.raises(StoreExistsError, match="is not a datalflash store"):
        publish_store(staging, path, overwrite=True)
    assert (path / "thesis.tex").read_text() == "do not delete"


class FailsAt(Dataset):
    def __len__(self):
        return 400

    def __getitem__(self, i):
        if i == 250:
            raise RuntimeError("disk on fire")
        return torch.zeros(4), i


def test_a_source_failing_in_a_worker_gives_one_clean_conversion_error(tmp_path):
    from datalflash.convert.samples import WorkerTraceback
    from datalflash.errors import ConversionError

    with pytest.raises(ConversionError) as info:
        DatasetConverter.create_chunked_dataset(
            FailsAt(), tmp_path / "s", chunk_size=50, shuffle=False, num_workers=2, progress=False
        )
    assert str(info.value) == "reading sample 250 failed: RuntimeError: disk on fire"
    assert isinstance(info.value.__cause__, WorkerTraceback) and "disk on fire" in str(info.value.__cause__)
    assert info.value.__suppress_context__  # torch's "Caught ... in DataLoader worker" wrapper is not shown
    assert list(tmp_path.iterdir()) == []


def test_a_stuck_read_in_a_samplers_order_times_out_too(tmp_path, monkeypatch):
    import time

    import datalflash.reading.readers as readers

    monkeypatch.setattr(readers, "CLOSE_TIMEOUT", 1.0)
    convert(samples(0), tmp_path / "store", "zarr")
    data = ChunkedDataset(tmp_path / "store")
    release = threading.Event()
    data.store.read_hook = lambda attempt: release.wait(60)
    loader = FlashDataLoader(data, batch_size=5, sampler=list(range(N)), timeout=0.5)
    gc.collect()  # (what earlier tests left to collect is not this test's time)
    start = time.monotonic()
    with time_limit(30), pytest.warns(UserWarning, match="still in a read"):  # noqa: PT031
        with pytest.raises(TimeoutError, match=r"chunk 0 took longer than timeout=0\.5s"):
            next(iter(loader))
        gc.collect()
    assert time.monotonic() - start < 10
    release.set()
    wait_for_no_reading_threads()
