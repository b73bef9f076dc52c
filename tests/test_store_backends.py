"""Every backend runs the shared ChunkStoreTests, read back with its own library as the oracle."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from datalflash.store.testing import ChunkStoreTests


class TestZarrLz4(ChunkStoreTests):
    backend = "zarr"

    def read_plain(self, path: Path, split: str, field: str) -> np.ndarray:
        return zarr.open_group(str(path / f"{split}.zarr"), mode="r")[field][...]


class TestZarrZstd(TestZarrLz4):
    compression = "zstd"


class TestZarrUncompressed(TestZarrLz4):
    compression = "none"


class TestHDF5(ChunkStoreTests):
    backend = "hdf5"

    def read_plain(self, path: Path, split: str, field: str) -> np.ndarray:
        with h5py.File(path / f"{split}.h5", "r") as f:
            return f[field][...]


class TestHDF5Gzip(TestHDF5):
    compression = "gzip"


class TestMemmap(ChunkStoreTests):
    backend = "memmap"

    def read_plain(self, path: Path, split: str, field: str) -> np.ndarray:
        return np.array(np.load(path / split / f"{field}.npy", mmap_mode="r"))


@pytest.mark.parametrize(
    "backend, compression, codec",
    [("zarr", "default", "lz4"), ("zarr", "zstd", "zstd")],
)
def test_zarr_uses_blosc(tmp_path, backend, compression, codec):
    from datalflash.utils import DatasetConverter
    import torch

    DatasetConverter.create_chunked_dataset(
        [torch.zeros(4)] * 10, tmp_path / "s", chunk_size=5, split_ratios={"train": 1.0},
        backend=backend, compression=compression, progress=False,
    )
    array = zarr.open_group(str(tmp_path / "s" / "train.zarr"), mode="r")["data"]
    blosc = [c for c in array.metadata.codecs if type(c).__name__ == "BloscCodec"]
    assert blosc and blosc[0].cname.value == codec
    assert array.chunks == (5, 4)


def test_hdf5_chunked_along_samples(tmp_path):
    from datalflash.utils import DatasetConverter
    import torch

    DatasetConverter.create_chunked_dataset(
        [torch.zeros(4)] * 10, tmp_path / "s", chunk_size=3, split_ratios={"train": 1.0},
        backend="hdf5", compression="gzip", progress=False,
    )
    with h5py.File(tmp_path / "s" / "train.h5", "r") as f:
        assert f["data"].chunks == (3, 4)
        assert f["data"].compression == "gzip"


def _zarr_store(tmp_path):
    from datalflash.utils import DatasetConverter
    import torch

    x = torch.arange(30 * 4, dtype=torch.int32).reshape(30, 4)
    DatasetConverter.create_chunked_dataset(
        list(zip(x, torch.arange(30))), tmp_path / "s", chunk_size=8,
        split_ratios={"train": 1.0}, shuffle=False, progress=False,
    )
    return x.numpy()


def test_zarr_direct_path_used_and_other_layouts_read_through_zarr(tmp_path):
    from zarr.codecs import GzipCodec

    from datalflash.store import open_store

    x = _zarr_store(tmp_path)
    store = open_store(tmp_path / "s")
    direct = store._handle("train")["0"][1]
    assert direct is not None  # our own layout takes the direct path
    np.testing.assert_array_equal(store.read_chunks("train", [3, 0])["0"], np.concatenate([x[24:], x[:8]]))
    # Rewrite field "0" with a codec the direct path does not handle: zarr reads it instead.
    group = zarr.open_group(str(tmp_path / "s" / "train.zarr"), mode="r+")
    del group["0"]
    group.create_array("0", data=x, chunks=(8, 4), compressors=GzipCodec(level=1))
    store = open_store(tmp_path / "s")
    assert store._handle("train")["0"][1] is None
    np.testing.assert_array_equal(store.read_chunks("train", [3, 0])["0"], np.concatenate([x[24:], x[:8]]))


def test_zarr_missing_chunk_is_an_error(tmp_path):
    from datalflash.errors import StoreReadError
    from datalflash.store import open_store

    _zarr_store(tmp_path)
    (tmp_path / "s" / "train.zarr" / "1" / "c" / "2").unlink()
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreReadError, match=r"train.zarr/1/c/2: chunk file is missing"):
        store.read_chunks("train", [2])
