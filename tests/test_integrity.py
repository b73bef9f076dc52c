"""Corruption is an error, never wrong data: checksums, damaged files, verify, retries, crashes."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from datalflash.cli import main as cli
from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.errors import ChecksumError, StoreFormatError, StoreReadError
from datalflash.store import open_store
from datalflash.store.integrity import ReadAttempt, RetryPolicy
from datalflash.utils import DatasetConverter

BACKENDS = [("zarr", "default"), ("zarr", "none"), ("hdf5", "default"), ("memmap", "default")]
N, CHUNK = 100, 16


def make_store(tmp_path, backend, compression, name="store"):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 2**16, (N, 64), generator=g, dtype=torch.int32), torch.arange(N))
    return DatasetConverter.create_chunked_dataset(
        data,
        tmp_path / name,
        chunk_size=CHUNK,
        split_ratios={"train": 1.0},
        shuffle=False,
        backend=backend,
        compression=compression,
        progress=False,
    )


def chunk_file(path, backend, chunk, field="0"):
    """(file, byte offset, length) of the stored bytes of ``chunk`` of ``field``."""
    if backend == "zarr":
        f = path / "train.zarr" / field / "c" / str(chunk) / "0"
        return f, 0, f.stat().st_size - 4
    if backend == "memmap":
        f = path / "train" / f"{field}.npy"
        header = f.stat().st_size - N * 64 * 4
        return f, header + chunk * CHUNK * 64 * 4, min(CHUNK, N - chunk * CHUNK) * 64 * 4
    f = path / "train.h5"
    with h5py.File(f, "r", locking=False) as h5:  # (the store may hold it open, unlocked)
        info = h5[field].id.get_chunk_info(chunk)
    return f, info.byte_offset, info.size


def flip_byte(path, backend, chunk):
    f, offset, length = chunk_file(path, backend, chunk)
    with open(f, "r+b") as fh:
        fh.seek(offset + length // 2)
        byte = fh.read(1)
        fh.seek(offset + length // 2)
        fh.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("backend,compression", BACKENDS)
def test_flipped_byte_is_a_checksum_error_naming_the_chunk(tmp_path, backend, compression):
    path = make_store(tmp_path, backend, compression)
    flip_byte(path, backend, 3)
    store = open_store(path)
    store.read_chunks("train", [0, 1, 2])  # the others are fine
    with pytest.raises(StoreReadError) as info:  # ChecksumError, or a decoder error for blosc frames
        store.read_chunks("train", [3])
    message = str(info.value)
    assert str(path) in message and "'train'" in message and "'0'" in message and "3" in message
    if backend != "zarr" or compression == "none":
        assert isinstance(info.value, ChecksumError)
    with pytest.raises(StoreReadError, match="3"):
        list(FlashDataLoader(ChunkedDataset(path), batch_size=10))
    report = DatasetConverter.verify(path, progress=False)
    assert [(split, chunk) for split, chunk, _ in report.bad] == [("train", 3)]
    assert report.chunks == 7 and not report.unchecksummed
    assert cli(["verify", "-q", str(path)]) == 1


def test_zarr_crc_catches_a_flip_the_decoder_would_accept(tmp_path):
    """An uncompressed-looking change inside a Blosc frame: the CRC, not luck, catches it."""
    path = make_store(tmp_path, "zarr", "default")
    f, _, length = chunk_file(path, "zarr", 2)
    raw = bytearray(f.read_bytes())
    raw[length - 1] ^= 0x01  # the last payload byte
    f.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=r"c/2/0.*CRC-32C mismatch"):
        open_store(path).read_chunks("train", [2])


@pytest.mark.parametrize("backend,compression", [("zarr", "none"), ("memmap", "default"), ("hdf5", "default")])
def test_verify_modes(tmp_path, backend, compression):
    path = make_store(tmp_path, backend, compression)
    first = open_store(path)  # verify="first"
    good = first.read_chunks("train", [1])["0"].copy()
    flip_byte(path, backend, 1)
    assert not np.array_equal(open_store(path, verify="never").read_chunks("train", [1])["0"], good)
    first.read_chunks("train", [1])  # checked on its first read in this process only
    with pytest.raises(ChecksumError):
        open_store(path, verify="always").read_chunks("train", [1])
    with pytest.raises(ValueError, match="verify must be one of"):
        open_store(path, verify="sometimes")


def test_pread_into_fills_an_array_and_refuses_one_it_cannot_fill_in_place(tmp_path):
    from datalflash.store.integrity import pread_into

    data = np.arange(100, dtype=np.int32)
    (tmp_path / "f").write_bytes(data.tobytes())
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        out = np.zeros(10, dtype=np.int32)
        assert pread_into(fd, out, 40) == 40 and out.tolist() == list(range(10, 20))
        tail = np.zeros(10, dtype=np.int32)
        assert pread_into(fd, tail, 380) == 20  # (the file ends: only what it holds)
        assert tail[:5].tolist() == list(range(95, 100))
        with pytest.raises(ValueError, match="C-contiguous"):
            pread_into(fd, np.zeros((10, 2), dtype=np.int32)[:, 0], 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend,compression", BACKENDS)
def test_damaged_files_are_errors_naming_what_is_wrong(tmp_path, backend, compression):
    path = make_store(tmp_path, backend, compression)
    f, offset, length = chunk_file(path, backend, 6)
    if backend == "zarr":
        f.write_bytes(f.read_bytes()[: length // 2])  # truncated chunk file
        with pytest.raises(StoreReadError, match=r"c/6/0"):
            open_store(path).read_chunks("train", [6])
        f.unlink()
        with pytest.raises(StoreReadError, match=r"c/6/0: chunk file is missing"):
            open_store(path).read_chunks("train", [6])
        shutil.rmtree(path / "train.zarr" / "1")
        with pytest.raises(StoreFormatError, match=r"split 'train' has no array for field '1'"):
            open_store(path).read_chunks("train", [0])
    elif backend == "memmap":
        with open(f, "r+b") as fh:
            fh.truncate(offset + length // 2)
        with pytest.raises(StoreFormatError, match=r"0\.npy: file is truncated"):
            open_store(path).read_chunks("train", [0])
        path2 = make_store(tmp_path, backend, compression, "store2")
        (path2 / "train" / "1.npy").unlink()
        with pytest.raises(StoreFormatError, match=r"1\.npy: the file of split 'train' field '1' is missing"):
            open_store(path2).read_chunks("train", [0])
    else:
        with open(f, "r+b") as fh:
            fh.truncate(offset + length // 2)
        with pytest.raises((StoreFormatError, StoreReadError), match=r"train\.h5"):
            open_store(path).read_chunks("train", [6])
        path2 = make_store(tmp_path, backend, compression, "store2")
        with h5py.File(path2 / "train.h5", "r+") as h5:
            del h5["1"]
        with pytest.raises(StoreFormatError, match=r"split 'train' has no dataset for field '1'"):
            open_store(path2).read_chunks("train", [0])


@pytest.mark.parametrize("backend,compression", BACKENDS)
def test_manifest_that_disagrees_with_the_data_is_refused(tmp_path, backend, compression):
    path = make_store(tmp_path, backend, compression)
    manifest = json.loads((path / "manifest.json").read_text())
    cases = {
        "dtype": lambda m: m["fields"]["0"].update(dtype="int64", storage_dtype="<i8"),
        "shape": lambda m: m["fields"]["0"].update(shape=[65]),
        "count": lambda m: m["splits"]["train"].update(num_samples=N + 16, num_chunks=8),
    }
    for what, change in cases.items():
        doc = json.loads(json.dumps(manifest))
        change(doc)
        (path / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(StoreFormatError, match=r"'train'.*'0'|0\.npy.*manifest says|holds") as info:
            open_store(path).read_chunks("train", [0])
        assert str(path) in str(info.value), what
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="not valid JSON"):
        open_store(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(StoreFormatError, match=r"format_version 99 is newer.*upgrade"):
        open_store(path)
    (path / "manifest.json").unlink()
    with pytest.raises(StoreFormatError, match="not a datalflash store"):
        open_store(path)
    assert cli(["verify", "-q", str(path)]) == 2


def test_verify_cli_on_a_good_store(tmp_path, capsys):
    path = make_store(tmp_path, "zarr", "default")
    assert cli(["verify", "-q", str(path)]) == 0
    assert "7 chunks checked, 0 bad" in capsys.readouterr().out


FAST_RETRY = RetryPolicy(retries=4, backoff=0.001)


class Flaky:
    """Makes a store's reads fail ``times`` times with ``code`` before working (through the
    store's ``read_hook``; every attempt after the first follows a reopening of the split)."""

    def __init__(self, store, code, times):
        self.calls, self.reopened = 0, 0

        def flaky(attempt: ReadAttempt) -> None:
            self.calls += 1
            self.reopened += attempt.attempt > 0
            if self.calls <= times:
                raise OSError(code, os.strerror(code))

        store.retry, store.read_hook = FAST_RETRY, flaky


@pytest.mark.parametrize("code", [errno.EIO, errno.EAGAIN, errno.ESTALE])
def test_transient_errors_are_retried(tmp_path, code):
    path = make_store(tmp_path, "memmap", "default")
    expected = open_store(path).read_chunks("train", [2])["0"].copy()
    store = open_store(path)
    flaky = Flaky(store, code, times=3)
    assert np.array_equal(store.read_chunks("train", [2])["0"], expected)
    assert flaky.reopened == 3
    store = open_store(path)
    Flaky(store, code, times=100)
    start = time.perf_counter()
    with pytest.raises(StoreReadError, match=r"chunk 2 \(after 4 retries\)"):
        store.read_chunks("train", [2])
    assert time.perf_counter() - start < 1
    store = open_store(path)
    Flaky(store, errno.ENOENT, times=1)
    with pytest.raises(StoreReadError, match=r"chunk 2: FileNotFoundError"):  # not transient: no retry
        store.read_chunks("train", [2])


def test_retry_backoff_stays_under_a_second():
    policy = RetryPolicy()
    assert sum(policy.delay(a) for a in range(policy.retries)) < 1.0


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, shutil
    import torch
    from torch.utils.data import Dataset
    from datalflash.utils import DatasetConverter
    import datalflash.convert.publish as publishing

    out, point = sys.argv[1], sys.argv[2]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    class Dying(Dataset):
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            if point == "fill" and i == 150:
                die()
            return torch.full((8,), 2, dtype=torch.int32), i
    if point == "before-publish":
        publishing.publish_store = die
    renames = []
    if point == "between-renames":
        real = os.rename
        def rename(a, b):
            renames.append(a)
            if len(renames) == 2:
                die()
            real(a, b)
        os.rename = rename
    if point == "before-cleanup":
        publishing.shutil.rmtree = die
    n = 300
    data = Dying(n)
    DatasetConverter.create_chunked_dataset(data, out, chunk_size=32, split_ratios={"train": 1.0},
                                            shuffle=False, overwrite=True, progress=False)
""")


@pytest.mark.parametrize("point", ["fill", "before-publish", "between-renames", "before-cleanup"])
def test_killed_conversion_leaves_nothing_or_the_previous_store(tmp_path, point):
    out = tmp_path / "store"
    old = TensorDataset(torch.full((50, 8), 1, dtype=torch.int32), torch.arange(50))
    DatasetConverter.create_chunked_dataset(old, out, chunk_size=32, split_ratios={"train": 1.0}, progress=False)
    run = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), point], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    if out.exists():  # the previous complete store, or (killed after publishing) the new one
        store = open_store(out)
        assert DatasetConverter.verify(out, progress=False).ok
        value = int(store.read_chunks("train", [0])["0"][0, 0])
        assert (value, store.num_samples("train")) in [(1, 50), (2, 300)]
        store.close()  # (an open store keeps its generation beside the path while it is read)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".store.")]
    assert leftovers, "a kill at this point leaves a staging or old directory behind"
    # A kill while removing an old generation interrupted nothing to recover: it goes silently.
    warns = pytest.warns(UserWarning, match="interrupted conversion") if point != "before-cleanup" else nullcontext()
    with warns:
        DatasetConverter.create_chunked_dataset(
            TensorDataset(torch.full((300, 8), 2, dtype=torch.int32), torch.arange(300)),
            out,
            chunk_size=32,
            split_ratios={"train": 1.0},
            shuffle=False,
            overwrite=True,
            progress=False,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    assert int(open_store(out).read_chunks("train", [0])["0"][0, 0]) == 2


def test_loader_rides_over_transient_errors_in_background_reads(tmp_path):
    path = make_store(tmp_path, "zarr", "default")
    reference = [b[0] for b in FlashDataLoader(ChunkedDataset(path), batch_size=10, shuffle=True, seed=0)]
    data = ChunkedDataset(path)
    failures = {"left": 2}

    def flaky(attempt: ReadAttempt) -> None:
        if attempt.start == 3 * CHUNK and failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")

    data.store.retry, data.store.read_hook = FAST_RETRY, flaky
    got = [b[0] for b in FlashDataLoader(data, batch_size=10, shuffle=True, seed=0)]
    assert failures["left"] == 0 and len(got) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(got, reference))
