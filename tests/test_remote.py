"""Zarr stores opened by URL: memory:// always, s3:// against a local moto server."""

import socket

import pytest
import torch
from torch.utils.data import TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.errors import BackendError, ChecksumError, StoreFormatError
from datalflash.store import open_store
from datalflash.utils import DatasetConverter

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (pip install 'datalflash[remote]')")
N = 700


def expected():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote") / "store"
    return DatasetConverter.create_chunked_dataset(
        TensorDataset(expected(), torch.arange(N)), path, chunk_size=64, split_ratios={"train": 1.0}, progress=False
    )


def train_epoch_checking_every_sample(store, **kw):
    rows = expected()
    model = torch.nn.Linear(192, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    for images, index in FlashDataLoader(ChunkedDataset(store, "train"), batch_size=50, shuffle=True, seed=0, **kw):
        assert torch.equal(images, rows[index])
        loss = torch.nn.functional.cross_entropy(model(images.flatten(1).float()), index % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N))


def test_memory_url(local_store):
    fs = fsspec.filesystem("memory")
    fs.put(str(local_store), "/mem-store", recursive=True)
    store = open_store("memory://mem-store")
    assert store.has_checksums("train")
    train_epoch_checking_every_sample(store)
    key = "/mem-store/train.zarr/0/c/3/0/0/0"  # images are 4-d: one chunk index per dimension
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 1
    fs.pipe(key, bytes(data))
    with pytest.raises(ChecksumError, match=r"memory://mem-store.*c/3/0/0/0.*CRC-32C mismatch"):
        open_store("memory://mem-store").read_chunks("train", [3])
    with pytest.raises(StoreFormatError, match="not a datalflash store"):
        open_store("memory://nothing-here")


def test_only_zarr_opens_by_url(tmp_path):
    path = DatasetConverter.create_chunked_dataset(
        TensorDataset(torch.zeros(10, 2)), tmp_path / "m", backend="memmap", split_ratios={"train": 1.0}, progress=False
    )
    fsspec.filesystem("memory").put(str(path), "/mm", recursive=True)
    with pytest.raises(BackendError, match="only zarr stores open by URL"):
        open_store("memory://mm")


@pytest.fixture(scope="module")
def s3(local_store):
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'datalflash[remote]')")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="bucket")
    fs = fsspec.filesystem("s3", **options)
    fs.put(str(local_store), "bucket/store", recursive=True)
    yield options
    server.stop()


def test_s3_store_trains_an_epoch_with_every_sample_checked(s3):
    store = open_store("s3://bucket/store", storage_options=s3)
    assert store.num_samples("train") == N and store.has_checksums("train")
    train_epoch_checking_every_sample(store)


def test_s3_store_in_worker_processes(s3):
    train_epoch_checking_every_sample(open_store("s3://bucket/store", storage_options=s3), num_workers=2)


class CountingMemoryFS:
    """Counts chunk requests to the memory filesystem."""

    def __init__(self, monkeypatch):
        from fsspec.implementations.memory import MemoryFileSystem

        self.requests = 0
        cat_file = MemoryFileSystem.cat_file

        def counted(fs, path, *args, **kwargs):
            if "/c/" in str(path):
                self.requests += 1
            return cat_file(fs, path, *args, **kwargs)

        monkeypatch.setattr(MemoryFileSystem, "cat_file", counted)


def test_chunk_cache_saves_requests_keeps_its_budget_and_drops_bad_objects(local_store, tmp_path, monkeypatch):
    from datalflash.store.zarr.cache import ChunkCache

    fsspec.filesystem("memory").put(str(local_store), "/cached", recursive=True)
    counter = CountingMemoryFS(monkeypatch)
    big = open_store("memory://cached", cache_dir=tmp_path / "cache", cache_bytes=2**30)
    train_epoch_checking_every_sample(big)
    first = counter.requests
    assert first == 2 * 11  # two fields, 11 chunks
    train_epoch_checking_every_sample(open_store("memory://cached", cache_dir=tmp_path / "cache", cache_bytes=2**30))
    assert counter.requests == first, "a second store over the same cache fetched nothing"
    cache = ChunkCache(tmp_path / "cache", 2**30)
    victim = next(p for p in sorted((tmp_path / "cache").glob("??/*")) if p.stat().st_size > 10_000)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    train_epoch_checking_every_sample(open_store("memory://cached", cache_dir=tmp_path / "cache", cache_bytes=2**30))
    assert counter.requests == first + 1, "the corrupt cached object was fetched again, once"
    budget = 3 * 64 * 192 + 4096
    small = open_store("memory://cached", cache_dir=tmp_path / "small", cache_bytes=budget)
    train_epoch_checking_every_sample(small)
    assert 0 < cache.__class__(tmp_path / "small", budget).size() <= budget
    with pytest.raises(ValueError, match="a chunk cache is for stores opened by URL"):
        open_store(local_store, cache_dir=tmp_path / "x")


def test_chunk_cache_shared_by_four_processes(local_store, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import fsspec, sys
        sys.path.insert(0, {str(tmp_path.parent)!r})
        fsspec.filesystem("memory").put({str(local_store)!r}, "/shared", recursive=True)
        from datalflash.store import open_store
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_remote import train_epoch_checking_every_sample
        for _ in range(2):
            train_epoch_checking_every_sample(open_store("memory://shared", cache_dir={str(tmp_path / "c")!r},
                                                         cache_bytes=200_000))
        print("ok")
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    from datalflash.store.zarr.cache import ChunkCache

    assert ChunkCache(tmp_path / "c", 200_000).size() <= 200_000


def test_get_dataloaders_by_url(local_store, tmp_path):
    from datalflash.core import get_dataloaders

    fsspec.filesystem("memory").put(str(local_store), "/by-url", recursive=True)
    loaders = get_dataloaders("memory://by-url", 64, cache_dir=tmp_path / "cache")
    rows = expected()
    seen = []
    for images, index in loaders["train"]:
        assert torch.equal(images, rows[index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N)) and any((tmp_path / "cache").glob("??/*"))


class PausableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``; ``pause()`` makes it stop answering (as a stopped
    endpoint does: connections stay open, nothing comes back)."""

    def __init__(self, target_port):
        import threading

        self.target_port, self.paused, self.stop = target_port, threading.Event(), threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server behind is gone (the test is over)
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        while not self.stop.is_set():
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.paused.is_set() and not self.stop.is_set():
                self.stop.wait(0.1)
            try:
                sink.sendall(data)
            except OSError:
                return

    def pause(self):
        self.paused.set()

    def close(self):
        self.stop.set()
        self.server.close()


def test_a_stalled_endpoint_is_an_error_within_the_timeout(s3):
    import time

    from datalflash.errors import StoreReadError

    target = int(s3["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])
    proxy = PausableProxy(target)
    try:
        options = {**s3, "client_kwargs": {**s3["client_kwargs"], "endpoint_url": f"http://127.0.0.1:{proxy.port}"}}
        store = open_store("s3://bucket/store", storage_options=options, remote_timeout=2)
        assert len(store.read_chunks("train", [0])["1"]) == 64
        proxy.pause()
        start = time.monotonic()
        with pytest.raises(StoreReadError, match="no answer within 2 s"):
            store.read_chunks("train", [1])
        assert time.monotonic() - start < 10
        start = time.monotonic()
        with pytest.raises(StoreReadError, match="cannot read the manifest: no answer within 2 s"):
            open_store("s3://bucket/store", storage_options=options, remote_timeout=2)
        assert time.monotonic() - start < 10
    finally:
        proxy.close()


def test_ragged_fields_read_by_url(tmp_path):
    """Ragged values are objects of their own: fetched with the batch of chunks they belong to."""

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 300

        def __getitem__(self, i):
            return torch.arange(i % 23, dtype=torch.int32) + i, f"doc {i}"

    local = DatasetConverter.create_chunked_dataset(
        Tokens(), tmp_path / "s", chunk_size=32, split_ratios={"train": 1.0}, progress=False
    )
    fsspec.filesystem("memory").put(str(local), "/ragged", recursive=True)
    store = open_store("memory://ragged", cache_dir=tmp_path / "cache")
    seen = set()
    for tokens, labels in FlashDataLoader(ChunkedDataset(store, "train"), batch_size=20, shuffle=True, collate="list"):
        for t, label in zip(tokens, labels):
            i = int(label.split()[1])
            assert torch.equal(t, torch.arange(i % 23, dtype=torch.int32) + i)
            seen.add(i)
    assert seen == set(range(300))
