"""Zarr stores opened by URL: memory:// always, s3:// against a local moto server."""

import socket

import numpy as np
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
        TensorDataset(expected(), torch.arange(N)), path, chunk_size=64, split_ratios={"train": 1.0}, progress=False)


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
    path = DatasetConverter.create_chunked_dataset(TensorDataset(torch.zeros(10, 2)), tmp_path / "m", backend="memmap",
                                                   split_ratios={"train": 1.0}, progress=False)
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
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="bucket")
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
