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
from datalflash.errors import ChecksumError, StoreChangedError, StoreExistsError, StoreFormatError
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


def record_checksum(path, split, key, chunk, crc):
    """Set the manifest's record of chunk ``chunk`` of ``key`` to ``crc``."""
    document = json.loads((path / "manifest.json").read_text())
    document["checksums"]["splits"][split][key][chunk] = crc
    (path / "manifest.json").write_text(json.dumps(document))


def test_a_short_blosc_frame_is_a_format_error_and_verify_finds_it(tmp_path):
    path = tmp_path / "store"
    convert(samples(0), path, "zarr")
    chunk_file = path / "train.zarr" / "0" / "c" / "2" / "0"
    short = np.frombuffer(numcodecs.Blosc(cname="lz4").encode(np.arange(8 * 4, dtype=np.int64)), np.uint8)
    chunk_file.write_bytes(short.tobytes() + struct.pack("<I", crc32c(short)))  # checksum-valid, 8 rows of 10
    record_checksum(path, "train", "0", 2, crc32c(short))  # (by a bad writer: the manifest agrees)
    store = open_store(path, verify="always")
    with pytest.raises(StoreFormatError, match=r"split 'train' field '0' chunk 2.*decodes to 256 bytes"):
        store.read_chunks("train", [3, 2], out=store.allocate(20))  # into a reused buffer
    report = verify_store(path, progress=False)
    assert [(split, chunk) for split, chunk, _ in report.bad] == [("train", 2)]


def test_a_zarr_chunk_file_swapped_for_another_is_refused_and_verify_finds_it(tmp_path):
    """Each chunk file ends with its CRC-32C, which the manifest records too: a whole, valid chunk
    file put in another chunk's place (or another store's) is refused, whatever ``verify`` says."""
    path = tmp_path / "store"
    convert(samples(0), path, "zarr")
    document = json.loads((path / "manifest.json").read_text())
    for key in ("0", "1"):  # the manifest records the CRC each chunk file ends with
        files = [path / "train.zarr" / key / "c" / str(c) / ("0" if key == "0" else "") for c in range(N // CHUNK)]
        ends = [int.from_bytes(f.read_bytes()[-4:], "little") for f in (f if f.is_file() else f.parent for f in files)]
        assert document["checksums"]["splits"]["train"][key] == ends
    chunk = path / "train.zarr" / "1" / "c"
    (chunk / "2").write_bytes((chunk / "4").read_bytes())  # chunk 4's labels in chunk 2's place
    store = open_store(path, verify="never")
    with pytest.raises(ChecksumError, match=r"split 'train' field '1' chunk 2.*not the chunk the manifest lists"):
        store.read_chunks("train", [2])
    assert store.read_chunks("train", [4])["1"].tolist() == list(range(4 * CHUNK, 5 * CHUNK))
    report = verify_store(path, progress=False)
    assert [(split, c) for split, c, _ in report.bad] == [("train", 2)]


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


def remote_reader(tmp_path, name):
    """``(memory filesystem, store)``: store ``a`` (samples from 0) uploaded to ``/name`` and
    opened by URL, one chunk read; store ``b`` (samples from 1000) converted beside it locally."""
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")
    fs = fsspec.filesystem("memory")
    convert(samples(0), tmp_path / "a", "zarr")
    convert(samples(1000), tmp_path / "b", "zarr")
    fs.put(str(tmp_path / "a"), f"/{name}", recursive=True)
    store = open_store(f"memory://{name}")
    assert store.read_chunks("train", [0])["1"][0] == 0
    return fs, store


def test_a_remote_store_replaced_under_a_reader_is_refused(tmp_path):
    fs, store = remote_reader(tmp_path, "replaced")
    fs.rm("/replaced", recursive=True)
    fs.put(str(tmp_path / "b"), "/replaced", recursive=True)  # uploaded over the store being read
    with pytest.raises(StoreChangedError, match="the store was replaced"):
        store.read_chunks("train", [1])


def test_a_remote_store_half_uploaded_over_is_never_read_as_a_mix(tmp_path):
    """An upload over a store being read replaces its objects one by one, in any order: chunks of
    the new store read under the old manifest are refused (the manifest records each chunk's
    CRC), and once the new manifest is there too the error says the store changed."""
    fs, store = remote_reader(tmp_path, "half")
    fs.put(str(tmp_path / "b" / "train.zarr" / "1" / "c" / "2"), "/half/train.zarr/1/c/2", recursive=True)
    with pytest.raises(ChecksumError, match=r"chunks 1\.\.2: .*train.zarr/1/c/2: not the chunk the manifest lists"):
        store.read_chunks("train", [1, 2])  # chunk 1 is still the old store's, chunk 2 the new one's
    assert store.read_chunks("train", [1])["1"].tolist() == list(range(CHUNK, 2 * CHUNK))  # unreplaced: fine
    fs.put(str(tmp_path / "b" / "manifest.json"), "/half/manifest.json")
    with pytest.raises(StoreChangedError, match="the store was replaced"):
        store.read_chunks("train", [2])


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


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): a disk that fills up for real."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


FILL_THE_DISK = """
import errno, sys, torch
from torch.utils.data import Dataset, TensorDataset
from datalflash.errors import StoreWriteError
from datalflash.utils import DatasetConverter

class PerSample(Dataset):  # not vectorized: read through torch's DataLoader workers
    def __len__(self):
        return 2000
    def __getitem__(self, i):
        return torch.full((256,), float(i)), i

backend, workers, per_sample = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
data = PerSample() if per_sample else TensorDataset(torch.rand(2000, 256), torch.arange(2000))
try:
    DatasetConverter.create_chunked_dataset(
        data, sys.argv[4], backend=backend, num_workers=workers, progress=False, chunk_size=100,
        compression="none" if backend == "zarr" else "default",
    )
except StoreWriteError as e:
    assert e.errno == errno.ENOSPC and isinstance(e.__cause__, OSError), (e.errno, repr(e.__cause__))
    print("REFUSED:", e)
"""


@pytest.mark.parametrize(
    "backend,workers,per_sample",
    [(b, 0, 0) for b in BACKENDS] + [("zarr", 2, 1), ("hdf5", 2, 1)],
)
def test_a_full_disk_fails_the_conversion_once_and_leaves_nothing(small_disk, backend, workers, per_sample):
    """On a disk that fills up, a conversion raises one StoreWriteError (errno ENOSPC) naming the
    store, split and chunk, prints nothing else (no HDF5 'Exception ignored', no torch worker
    noise) and leaves nothing on the disk."""
    import subprocess
    import sys

    out = small_disk / "store"
    args = [sys.executable, "-c", FILL_THE_DISK, backend, str(workers), str(per_sample), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"REFUSED: writing the store {out} failed at split 'train' chunk "), done.stdout
    assert "No space left on device" in done.stdout
    assert done.stderr == ""
    assert list(small_disk.iterdir()) == []


CTRL_C = """
import signal, sys, time, torch
# (as Python started from a terminal has it, even when this test runs in a background job, which
# starts with SIGINT ignored and would pass that on)
signal.signal(signal.SIGINT, signal.default_int_handler)
from torch.utils.data import Dataset
from datalflash.utils import DatasetConverter
from datalflash.core import FlashDataLoader
from datalflash.loading import ChunkedDataset

class Slow(Dataset):
    def __len__(self):
        return 100_000
    def __getitem__(self, i):
        if i == 500:
            print("busy", flush=True)
        time.sleep(0.0005)
        return torch.full((16,), float(i)), i

task, store = sys.argv[1], sys.argv[2]
if task == "convert":
    DatasetConverter.create_chunked_dataset(Slow(), store, num_workers=2, shuffle=False, progress=False)
else:
    # (windows of one chunk: every epoch reads, in the workers; a split read whole is kept instead)
    loader = FlashDataLoader(ChunkedDataset(store), batch_size=8, shuffle=True, num_workers=2, window_chunks=1)
    for epoch in range(1000):
        for k, batch in enumerate(loader):
            if epoch == 1 and k == 0:
                print("busy", flush=True)
"""


@pytest.mark.parametrize("task", ["convert", "read"])
def test_ctrl_c_to_the_process_group_prints_one_traceback(tmp_path, task):
    """Ctrl-C in a terminal signals the whole process group (the trainer and its workers): one
    KeyboardInterrupt traceback, no worker noise, no staging directory or worker left."""
    import subprocess
    import sys

    store = tmp_path / "store"
    if task == "read":  # (500 chunks: the workers still have windows to read when the test looks for them)
        convert(TensorDataset(torch.zeros(5000, 4), torch.arange(5000)), store, "zarr")
    args = [sys.executable, "-c", CTRL_C, task, str(store)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with time_limit(120):
        assert process.stdout.readline() == "busy\n"
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as listing:
            children = [int(p) for p in listing.read().split()]
        assert len(children) >= 2  # (the two workers)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate()
    assert err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
    assert not survivors(children)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["store"] if task == "read" else [])


UNREADABLE = {"zarr": "train.zarr/0/c/2/0", "memmap": "train/0.npy", "hdf5": "train.h5"}

READ_AS_NOBODY = """
import os, sys
from datalflash.errors import StoreReadError
from datalflash.core import FlashDataLoader
from datalflash.loading import ChunkedDataset
import h5py, numcodecs, zarr  # (imported while the interpreter's files are readable)

os.setgid(65534)
os.setuid(65534)  # nobody: root reads every file whatever its mode
try:
    for batch in FlashDataLoader(ChunkedDataset(sys.argv[1]), batch_size=10):
        pass
except StoreReadError as e:
    print("REFUSED:", e)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_the_reader_may_not_read_is_a_read_error_naming_it(tmp_path, backend):
    """Permission denied is a StoreReadError naming split and file by its own path, on every
    backend (HDF5 used to call it a format error, memmap to raise it bare)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root, to read as another user")
    shared = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(shared, 0o755)
        path = os.path.join(shared, "store")
        convert(samples(0), path, backend)
        for directory, _, files in os.walk(path):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        os.chmod(os.path.join(path, UNREADABLE[backend]), 0)
        done = subprocess.run(
            [sys.executable, "-c", READ_AS_NOBODY, path], capture_output=True, text=True, timeout=120, cwd=shared
        )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("REFUSED: "), done.stdout + done.stderr
    assert "split 'train'" in done.stdout and "Permission denied" in done.stdout
    assert os.path.join(path, UNREADABLE[backend]) in done.stdout and "/proc/" not in done.stdout
