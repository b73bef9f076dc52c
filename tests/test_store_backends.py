"""Every backend runs the shared ChunkStoreTests, read back with its own library as the oracle."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from datalflash.testing import ChunkStoreTests


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
    import torch

    from datalflash.utils import DatasetConverter

    DatasetConverter.create_chunked_dataset(
        [torch.zeros(4)] * 10,
        tmp_path / "s",
        chunk_size=5,
        split_ratios={"train": 1.0},
        backend=backend,
        compression=compression,
        progress=False,
    )
    array = zarr.open_group(str(tmp_path / "s" / "train.zarr"), mode="r")["data"]
    blosc = [c for c in array.metadata.codecs if type(c).__name__ == "BloscCodec"]
    assert blosc and blosc[0].cname.value == codec
    assert array.chunks == (5, 4)


def test_hdf5_chunked_along_samples(tmp_path):
    import torch

    from datalflash.utils import DatasetConverter

    DatasetConverter.create_chunked_dataset(
        [torch.zeros(4)] * 10,
        tmp_path / "s",
        chunk_size=3,
        split_ratios={"train": 1.0},
        backend="hdf5",
        compression="gzip",
        progress=False,
    )
    with h5py.File(tmp_path / "s" / "train.h5", "r") as f:
        assert f["data"].chunks == (3, 4)
        assert f["data"].compression == "gzip"


def _small_store(tmp_path, backend="zarr", compression="default", name="s"):
    """30 rows of 4 int32 (``x``, returned) and their index, in chunks of 8, in order."""
    import torch

    from datalflash.utils import DatasetConverter

    x = torch.arange(30 * 4, dtype=torch.int32).reshape(30, 4)
    DatasetConverter.create_chunked_dataset(
        list(zip(x, torch.arange(30))),
        tmp_path / name,
        chunk_size=8,
        split_ratios={"train": 1.0},
        shuffle=False,
        backend=backend,
        compression=compression,
        progress=False,
    )
    return x.numpy()


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
@pytest.mark.parametrize("verify", ["first", "never", "always"])
def test_hdf5_chunks_read_raw_where_no_checksum_is_due_equal_h5py(tmp_path, compression, verify):
    from datalflash.store import open_store

    x = _small_store(tmp_path, "hdf5", compression)
    store = open_store(tmp_path / "s", verify=verify)
    for _ in range(3):  # (verify="first": the first read checks through HDF5, the later ones are raw)
        got = store.read_chunks("train", [3, 0, 1, 2])
        np.testing.assert_array_equal(got["0"], np.concatenate([x[24:], x[:24]]))
        np.testing.assert_array_equal(got["1"], np.r_[24:30, 0:24])
    raw = compression == "none" and verify != "always"
    assert bool(store._raw_places) == raw
    np.testing.assert_array_equal(store.read_field("train", "0"), x)


def test_hdf5_raw_path_leaves_other_filters_to_hdf5_and_names_a_truncated_chunk(tmp_path):
    from datalflash.errors import StoreReadError
    from datalflash.store import open_store

    x = _small_store(tmp_path, "hdf5", "none")
    with h5py.File(tmp_path / "s" / "train.h5", "r+") as f:  # byte shuffling: not plain rows in the file
        del f["0"]
        f.create_dataset("0", data=x, chunks=(8, 4), shuffle=True, fletcher32=True)
    store = open_store(tmp_path / "s", verify="never")
    np.testing.assert_array_equal(store.read_chunks("train", [2, 1])["0"], np.concatenate([x[16:24], x[8:16]]))
    assert store._raw_layouts[("train", "0")] is None and store._raw_layouts[("train", "1")] == (8, 4)

    _small_store(tmp_path, "hdf5", "none", "t")
    store = open_store(tmp_path / "t", verify="never")
    store.read_chunks("train", [0])
    path = tmp_path / "t" / "train.h5"
    with h5py.File(path, "r", locking=False) as f:
        end = f["1"].id.get_chunk_info_by_coord((24,)).byte_offset + 8
    with open(path, "r+b") as fh:  # (the file is open: the end of chunk 3 of field "1" is cut off)
        fh.truncate(end)
    with pytest.raises(StoreReadError, match=r"field '1' chunk 3"):
        store.read_chunks("train", [3])


def test_zarr_direct_path_used_and_other_layouts_read_through_zarr(tmp_path):
    from zarr.codecs import GzipCodec

    from datalflash.store import open_store

    x = _small_store(tmp_path)
    store = open_store(tmp_path / "s")
    direct = store._handle("train")["0"][1]
    assert direct is not None  # our own layout takes the direct path
    np.testing.assert_array_equal(store.read_chunks("train", [3, 0])["0"], np.concatenate([x[24:], x[:8]]))
    # Rewrite field "0" with a codec the direct path does not handle: zarr reads it instead.
    group = zarr.open_group(str(tmp_path / "s" / "train.zarr"), mode="r+")
    del group["0"]
    group.create_array("0", shape=x.shape, dtype=x.dtype, chunks=(8, 4), compressors=GzipCodec(level=1))[...] = x
    store = open_store(tmp_path / "s")
    assert store._handle("train")["0"][1] is None
    np.testing.assert_array_equal(store.read_chunks("train", [3, 0])["0"], np.concatenate([x[24:], x[:8]]))


def test_zarr_missing_chunk_is_an_error(tmp_path):
    from datalflash.errors import StoreReadError
    from datalflash.store import open_store

    _small_store(tmp_path)
    (tmp_path / "s" / "train.zarr" / "1" / "c" / "2").unlink()
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreReadError, match=r"train.zarr/1/c/2: chunk file is missing"):
        store.read_chunks("train", [2])


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_zarr_metadata_is_what_zarr_itself_writes(tmp_path, compression):
    """We write zarr.json files without zarr's store machinery; zarr.create_array with the same
    arguments must give the same documents (every dtype family, an empty split included). Keys
    set to null count as absent, as the Zarr v3 spec has it (zarr 3.0 writes a null
    ``consolidated_metadata``, later versions leave it out), and so does the byte order of
    one-byte types (zarr 3.0 names it, later versions do not)."""
    import json

    def document(path):
        doc = {k: v for k, v in json.loads(path.read_text()).items() if v is not None}
        if doc.get("node_type") == "array" and np.dtype(doc["data_type"]).itemsize == 1:
            doc["codecs"] = [{"name": "bytes"} if c["name"] == "bytes" else c for c in doc["codecs"]]
        return doc

    from zarr.codecs import BloscCodec, Crc32cCodec

    from datalflash.store import open_store
    from datalflash.testing import DictSamples
    from datalflash.utils import DatasetConverter

    DatasetConverter.create_chunked_dataset(
        DictSamples(21),
        tmp_path / "s",
        chunk_size=4,
        split_ratios={"train": 0.9, "val": 0.1, "none": 0.0},
        backend="zarr",
        compression=compression,
        progress=False,
    )
    store = open_store(tmp_path / "s")
    config = store.manifest.backend_config
    codecs = (Crc32cCodec(),)
    if compression != "none":
        codecs = (BloscCodec(cname=compression, clevel=config["clevel"], shuffle=config["shuffle"]), *codecs)
    for split in store.splits:
        ours = tmp_path / "s" / f"{split}.zarr"
        group = zarr.open_group(str(tmp_path / "zarr" / f"{split}.zarr"), mode="w-", zarr_format=3)
        assert document(ours / "zarr.json") == document(tmp_path / "zarr" / f"{split}.zarr" / "zarr.json")
        for name, spec in store.fields.items():
            rows = max(1, min(4, store.num_samples(split)))
            group.create_array(
                name,
                shape=(store.num_samples(split), *spec.shape),
                chunks=(rows, *spec.shape),
                dtype=spec.storage_dtype,
                compressors=codecs,
                fill_value=0,
                attributes={"datalflash_dtype": spec.dtype},
            )
            theirs = document(tmp_path / "zarr" / f"{split}.zarr" / name / "zarr.json")
            assert document(ours / name / "zarr.json") == theirs, f"{split}/{name}"


@pytest.mark.parametrize("compressible", [True, False])
def test_zarr_large_chunk_stored_as_is_only_when_the_codec_cannot_shrink_it(tmp_path, compressible):
    """A large chunk whose sample Blosc cannot compress is stored as the Blosc frame Blosc makes
    at level 0 (no compression attempted on the whole). A TensorDataset's chunks stream to the
    file piece by piece, other sources' are encoded whole: both give the same bytes, and zarr,
    numcodecs and datalflash read them back exactly (a short, zero-padded last chunk included)."""
    import numcodecs
    import torch
    from torch.utils.data import TensorDataset

    from datalflash.store import open_store
    from datalflash.utils import DatasetConverter

    g = torch.Generator().manual_seed(0)
    n, chunk = 700, 600  # 600 x 8 KiB = 4.9 MB a chunk; the last one holds 100 rows
    noise = torch.randint(0, 256, (n, 8192), dtype=torch.uint8, generator=g)
    images = (noise // 64) * 64 if compressible else noise  # 4 levels compress well; noise does not
    for name, source in (
        ("items", list(zip(images, torch.arange(n)))),
        ("tensors", TensorDataset(images, torch.arange(n))),
    ):
        DatasetConverter.create_chunked_dataset(
            source,
            tmp_path / name,
            chunk_size=chunk,
            split_ratios={"train": 1.0},
            shuffle=False,
            progress=False,
        )
    for c in (0, 1):
        files = [
            (tmp_path / name / "train.zarr" / "0" / "c" / str(c) / "0").read_bytes() for name in ("items", "tensors")
        ]
        assert files[0] == files[1]
        frame = files[0][:-4]  # less the CRC-32C
        as_is = not compressible and c == 0  # the short last chunk's zero padding compresses
        assert bool(frame[2] & 0x02) == as_is  # Blosc header flag BLOSC_MEMCPYED
        assert (len(frame) >= 0.9 * chunk * 8192) == as_is
        rows = np.zeros((chunk, 8192), np.uint8)
        rows[: min(chunk, n - c * chunk)] = images[c * chunk : (c + 1) * chunk].numpy()
        assert numcodecs.Blosc().decode(frame, np.empty(rows.size, np.uint8)).tobytes() == rows.tobytes()
        if as_is:
            assert frame == numcodecs.Blosc(cname="lz4", clevel=0, shuffle=numcodecs.Blosc.SHUFFLE).encode(rows)
    for name in ("items", "tensors"):
        np.testing.assert_array_equal(
            zarr.open_group(str(tmp_path / name / "train.zarr"), mode="r")["0"][...], images.numpy()
        )
        store = open_store(tmp_path / name, verify="always")
        np.testing.assert_array_equal(
            store.read_chunks("train", [1, 0])["0"], np.concatenate([images[chunk:], images[:chunk]])
        )


def test_preallocate_reserves_blocks_without_changing_the_file(tmp_path):
    import os

    from datalflash.store.files import preallocate

    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDWR)
    try:
        reserved = preallocate(fd, 3, 8 * 2**20)
        assert os.fstat(fd).st_size == 3
        if reserved:  # ext4, xfs, tmpfs...; elsewhere a no-op
            assert os.fstat(fd).st_blocks * 512 >= 8 * 2**20
        assert preallocate(fd, 0, 0) is False
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abc"


def test_hdf5_raw_reads_in_worker_processes_serve_what_threads_serve(tmp_path):
    """Later epochs of a streamed HDF5 split read raw in each worker (fork: the parent's chunk
    places travel along; its file handle does not) and give the batches threads give."""
    import torch

    from datalflash.core import ChunkedDataset, FlashDataLoader

    _small_store(tmp_path, "hdf5", "none")
    data = ChunkedDataset(tmp_path / "s")
    data.store.read_chunks("train", [0, 1])  # (checked here: the parent's raw places are inherited)
    kw = dict(batch_size=5, shuffle=True, seed=4, window_chunks=1)
    threads = FlashDataLoader(data, **kw)
    workers = FlashDataLoader(data, num_workers=2, persistent_workers=True, multiprocessing_context="fork", **kw)
    for _ in range(3):  # (epochs)
        got, expected = list(workers), list(threads)
        assert len(got) == len(expected) == 6
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected))
    workers.close()
