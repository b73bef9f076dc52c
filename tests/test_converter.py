"""DatasetConverter: splits, atomic publish, parallel reading, streaming memory, and every error."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import Samples
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from datalflash.errors import ConversionError, DataLFlashError, StoreExistsError
from datalflash.store import open_store
from datalflash.utils import DatasetConverter, split_sizes

convert = DatasetConverter.create_chunked_dataset


def tensors(n=20):
    return TensorDataset(torch.arange(n * 2, dtype=torch.float32).reshape(n, 2), torch.arange(n))


def test_default_chunk_size_keeps_chunks_of_large_samples_near_64_mib(tmp_path):
    small = open_store(convert(tensors(100), tmp_path / "small", split_ratios={"train": 1.0}, progress=False))
    assert small.manifest.chunk_size == 10_000  # (8 + 8 bytes a sample)
    large = TensorDataset(torch.zeros(5, 96, 1024, dtype=torch.uint8), torch.arange(5))  # 96 KiB + 8 bytes
    store = open_store(convert(large, tmp_path / "large", split_ratios={"train": 1.0}, progress=False))
    assert store.manifest.chunk_size == 64 * 2**20 // (96 * 1024 + 8) == 682
    ragged = Samples([(torch.zeros(100_000 + k, dtype=torch.uint8),) for k in range(3)])  # ~100 KB typical
    store = open_store(convert(ragged, tmp_path / "ragged", split_ratios={"train": 1.0}, progress=False))
    typical = store.manifest.fields["0"].sample_nbytes
    assert typical >= 100_000 and store.manifest.chunk_size == 64 * 2**20 // typical
    given = open_store(convert(large, tmp_path / "given", chunk_size=2, split_ratios={"train": 1.0}, progress=False))
    assert given.manifest.chunk_size == 2 and given.num_chunks("train") == 3


def test_default_splits_and_manifest(tmp_path):
    path = convert(tensors(100), tmp_path / "s", chunk_size=16, progress=False)
    store = open_store(path)
    assert {k: v.num_samples for k, v in store.splits.items()} == {"train": 80, "val": 10, "test": 10}
    assert store.num_chunks("train") == 5 and store.backend_id == "zarr"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "datalflash-store" and manifest["format_version"] == 1
    assert manifest["created"]["seed"] == 0 and manifest["created"]["num_source_samples"] == 100
    labels = np.concatenate([store.read_chunks(s, range(store.num_chunks(s)))["1"] for s in store.splits])
    assert sorted(labels.tolist()) == list(range(100))  # every sample exactly once across splits
    assert labels.tolist() == np.random.default_rng(0).permutation(100).tolist()


def test_seed_and_no_shuffle(tmp_path):
    a = open_store(convert(tensors(), tmp_path / "a", chunk_size=4, seed=7, progress=False))
    b = open_store(convert(tensors(), tmp_path / "b", chunk_size=4, seed=7, progress=False))
    c = open_store(convert(tensors(), tmp_path / "c", chunk_size=4, shuffle=False, progress=False))

    def read(s):
        return s.read_chunks("train", range(s.num_chunks("train")))["1"].tolist()

    assert read(a) == read(b) != read(c)
    assert read(c) == list(range(16))


@pytest.mark.parametrize(
    "n, ratios, expected",
    [
        (10, {"a": 0.5, "b": 0.5}, {"a": 5, "b": 5}),
        (7, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 6, "val": 0, "test": 1}),
        (3, {"x": 1.0, "y": 0.0}, {"x": 3, "y": 0}),
        (1001, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 334, "b": 333, "c": 334}),
    ],
)
def test_split_sizes(n, ratios, expected):
    assert split_sizes(n, ratios) == expected


def test_empty_split_is_readable(tmp_path):
    store = open_store(
        convert(tensors(3), tmp_path / "s", chunk_size=2, split_ratios={"x": 1.0, "y": 0.0}, progress=False)
    )
    assert store.num_samples("y") == 0 and store.num_chunks("y") == 0
    assert store.read_chunks("y", [])["0"].shape == (0, 2)


def test_num_workers_gives_identical_store(tmp_path):
    samples = Samples([(np.full((3,), i, np.int32), i * 0.5) for i in range(50)])
    a = open_store(convert(samples, tmp_path / "a", chunk_size=7, progress=False))
    b = open_store(convert(samples, tmp_path / "b", chunk_size=7, num_workers=2, progress=False))
    for split in a.splits:
        ra, rb = (s.read_chunks(split, range(s.num_chunks(split))) for s in (a, b))
        for name in ra:
            np.testing.assert_array_equal(ra[name], rb[name])


def test_progress_bar_shows_unless_disabled(tmp_path, capsys):
    convert(tensors(), tmp_path / "a", chunk_size=4)
    assert "converting" in capsys.readouterr().err
    convert(tensors(), tmp_path / "b", chunk_size=4, progress=False)
    assert capsys.readouterr().err == ""


def test_existing_output_refused_then_overwritten(tmp_path):
    path = convert(tensors(10), tmp_path / "s", chunk_size=4, progress=False)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        convert(tensors(12), path, chunk_size=4, progress=False)
    assert open_store(path).num_samples("train") == 8  # untouched
    convert(tensors(12), path, chunk_size=4, overwrite=True, progress=False)
    assert sum(open_store(path).num_samples(s) for s in ("train", "val", "test")) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging or old copy left


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreExistsError, match="not a datalflash store"):
        convert(tensors(), tmp_path / "precious", overwrite=True, progress=False)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not delete"


def test_failed_conversion_leaves_nothing(tmp_path):
    class Breaks(Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            if i == 17:
                raise RuntimeError("disk on fire")
            return torch.zeros(2)

    with pytest.raises(ConversionError, match=r"sample 17.*disk on fire"):
        convert(Breaks(), tmp_path / "s", chunk_size=4, shuffle=False, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["zarr", "memmap"])
def test_write_failing_mid_chunk_leaves_nothing(tmp_path, monkeypatch, backend):
    """A TensorDataset streams its chunks to the store, all queued at once; a write failing in
    the middle (a full disk) fails the conversion with that error, and nothing is left."""
    import errno
    import os

    import datalflash.convert.pipeline as pipeline

    monkeypatch.setattr(pipeline, "PIECE_BYTES", 64)  # several pieces a chunk
    real_pwrite, real_open, calls = os.pwrite, open, {"n": 0}

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    class FullFile:  # a chunk file whose 9th write finds the disk full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            calls["n"] += 1
            if calls["n"] == 9:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    if backend == "memmap":
        monkeypatch.setattr("datalflash.store.memmap.os.pwrite", pwrite)
    else:
        monkeypatch.setattr(
            "datalflash.store.zarr.chunks.open", lambda *a, **k: FullFile(real_open(*a, **k)), raising=False
        )
    with pytest.raises(OSError, match="No space left"):
        convert(
            tensors(200),
            tmp_path / "s",
            chunk_size=16,
            backend=backend,
            compression="none" if backend == "zarr" else "default",
            progress=False,
        )
    assert calls["n"] >= 9
    assert list(tmp_path.iterdir()) == []


BAD_INPUTS = [
    # (samples, kwargs, message pattern)
    (
        [torch.zeros(3), torch.zeros(4)],
        {"fields": {"data": "array"}},
        r"sample 1 field 'data': got float32 \(4,\).*float32 \(3,\)",
    ),
    ([torch.zeros(3), torch.zeros(3, 1)], {}, r"sample 1 field 'data'.*number of dimensions"),
    ([torch.zeros(3), "text"], {}, r"sample 1 field 'data': got str, but sample 0 had float32"),
    ([torch.zeros(3), torch.zeros(4)], {"fields": {"data": "str"}}, r"holds arrays .*declares it str"),
    ([torch.zeros(3), torch.zeros(4)], {"fields": {"nope": "ragged"}}, r"fields= names \['nope'\]"),
    ([torch.zeros(3), torch.zeros(4)], {"fields": {"data": "jagged"}}, r"kind 'jagged'"),
    ([1, 2], {"fields": {"data": "ragged"}}, r"holds scalars"),
    ([torch.zeros(3), torch.zeros(3, dtype=torch.float64)], {}, r"sample 1 field 'data': got float64"),
    ([(torch.zeros(2), 1), (torch.zeros(2), 1.5)], {}, r"sample 1 field '1': got float64 \(\).*int64"),
    ([{"a": 1}, {"b": 1}], {}, r"sample 1.*keys \['a'\]"),
    ([(1, 2), (1,)], {}, r"sample 1.*tuple of 2"),
    ([object(), object()], {}, r"sample 0 field 'data': unsupported type object"),
    ([(np.array(["a"]), 1)] * 2, {}, r"sample 0 field '0': unsupported type ndarray of dtype <U1"),
    ([np.zeros(2, dtype=object)] * 2, {}, r"unsupported type ndarray of dtype object"),
    ([{"bad key": 1}], {}, r"sample 0: dict key 'bad key'"),
    ([], {}, r"empty"),
    ([1, 2], {"split_ratios": {"a": 0.5, "b": 0.6}}, r"sum to 1"),
    ([1, 2], {"split_ratios": {"a": 1.5, "b": -0.5}}, r">= 0"),
    ([1, 2], {"split_ratios": {}}, r"non-empty"),
    ([1, 2], {"split_ratios": {"../x": 1.0}}, r"split name '../x'"),
    ([1, 2], {"chunk_size": 0}, r"chunk_size must be an integer >= 1"),
    ([1, 2], {"chunk_size": 2.5}, r"chunk_size"),
    ([1, 2], {"backend": "nosuch"}, r"unknown backend 'nosuch'"),
    ([1, 2], {"compression": "brotli"}, r"compression 'brotli'"),
    ([1, 2], {"backend": "memmap", "compression": "lz4"}, r"uncompressed"),
    ([1, 2], {"num_workers": -1}, r"num_workers"),
]


@pytest.mark.parametrize("samples, kwargs, pattern", BAD_INPUTS)
def test_bad_input_is_a_clear_error(tmp_path, samples, kwargs, pattern):
    kwargs = {"split_ratios": {"all": 1.0}, "shuffle": False, "progress": False, "chunk_size": 2, **kwargs}
    with pytest.raises(ConversionError, match=pattern) as info:
        convert(Samples(samples), tmp_path / "s", **kwargs)
    assert isinstance(info.value, (ValueError, DataLFlashError))
    assert not (tmp_path / "s").exists()


def test_bad_sample_in_a_worker_names_the_index(tmp_path):
    items = [torch.zeros(2)] * 40
    items[33] = torch.zeros(5)
    with pytest.raises(ConversionError, match="sample 33 field 'data'"):
        convert(
            Samples(items),
            tmp_path / "s",
            chunk_size=8,
            num_workers=2,
            shuffle=False,
            progress=False,
            fields={"data": "array"},
        )


def test_iterable_dataset_refused(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1)

    with pytest.raises(ConversionError, match="no __len__"):
        convert(Stream(), tmp_path / "s", progress=False)


def test_from_pytorch_dataset_in_memory():
    data = Samples([{"x": torch.full((2, 2), i, dtype=torch.bfloat16), "y": i} for i in range(9)])
    for optimized in (True, False):
        flash = DatasetConverter.from_pytorch_dataset(data, memory_optimized=optimized)
        assert len(flash) == 9
        assert flash.fields["x"].dtype == torch.bfloat16 and flash.fields["x"].is_contiguous()
        assert flash.fields["y"].dtype == torch.int64
        assert torch.equal(flash.fields["y"], torch.arange(9))
        assert torch.equal(flash[4]["x"], data[4]["x"])


STREAMING_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    def peak_rss():  # VmHWM in MiB: unlike ru_maxrss it is not inherited across fork + exec
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
        return int(line.split()[1]) // 1024
    from torch.utils.data import Dataset
    from datalflash.utils import DatasetConverter

    class Big(Dataset):  # {gib} GiB of samples, generated on demand
        def __len__(self):
            return {n}
        def __getitem__(self, i):
            return torch.full((256, 1024), i % 251, dtype=torch.uint8), i

    base = peak_rss()
    DatasetConverter.create_chunked_dataset(Big(), sys.argv[1], chunk_size=256, progress=False)
    peak = peak_rss()
    print(peak - base)
    """
)


def test_conversion_streams_with_bounded_memory(tmp_path):
    gib = 2
    n = gib * 2**30 // (256 * 1024)
    script = STREAMING_SCRIPT.format(gib=gib, n=n)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout.strip())
    assert growth_mib < 400, f"RSS grew {growth_mib} MiB converting {gib} GiB"
    store = open_store(tmp_path / "s")
    assert sum(info.num_samples for info in store.splits.values()) == n


@pytest.mark.parametrize(
    "backend, compression", [("zarr", "lz4"), ("zarr", "none"), ("hdf5", "none"), ("memmap", "none")]
)
@pytest.mark.parametrize("shuffle", [True, False])
def test_tensor_dataset_in_pieces_matches_item_by_item(tmp_path, monkeypatch, backend, compression, shuffle):
    """A TensorDataset is gathered (or viewed) piece by piece; the store must equal the one
    written from the same samples read one by one through torch's DataLoader."""
    import datalflash.convert.pipeline as pipeline

    monkeypatch.setattr(pipeline, "PIECE_BYTES", 3 * 16)  # 3 samples (8 + 8 bytes) a piece: 3 per chunk
    data = TensorDataset(torch.randn(61, 2), torch.arange(61) * 3)
    items = [(x, y) for x, y in data]
    kwargs = dict(chunk_size=7, shuffle=shuffle, seed=5, backend=backend, compression=compression, progress=False)
    a = open_store(convert(data, tmp_path / "a", **kwargs), verify="always")
    b = open_store(convert(items, tmp_path / "b", **kwargs), verify="always")
    for split in a.splits:
        ra = a.read_chunks(split, range(a.num_chunks(split)))
        a.close()
        rb = b.read_chunks(split, range(b.num_chunks(split)))
        b.close()
        for name in ra:
            np.testing.assert_array_equal(ra[name], rb[name], err_msg=f"{split}/{name}")
    assert a.manifest.checksums == b.manifest.checksums
    if backend == "zarr":  # chunk files byte for byte, checksums included
        files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("c/*/*"))
        assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


@pytest.mark.parametrize(
    "backend, options",
    [
        ("zarr", {"compression": "zstd", "clevel": 1}),
        ("zarr", {"compression": "lz4", "clevel": 9, "shuffle": "bitshuffle"}),
        ("hdf5", {"compression": "gzip", "level": 6}),
    ],
)
def test_compression_options_in_full(tmp_path, backend, options):
    """``compression`` may be the backend's options as a manifest lists them; the files use them."""
    import h5py
    import zarr

    store = open_store(
        convert(tensors(40), tmp_path / "s", chunk_size=8, backend=backend, compression=options, progress=False)
    )
    assert all(store.manifest.backend_config[k] == v for k, v in options.items())
    if backend == "zarr":
        codec = zarr.open_group(str(tmp_path / "s" / "train.zarr"), mode="r")["0"].metadata.codecs[1]
        assert (codec.cname.value, codec.clevel, codec.shuffle.value) == (
            options["compression"],
            options["clevel"],
            options.get("shuffle", "shuffle"),
        )
    else:
        with h5py.File(tmp_path / "s" / "train.h5", "r") as f:
            assert (f["0"].compression, f["0"].compression_opts) == ("gzip", 6)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([store.read_chunks(s, range(store.num_chunks(s)))["1"] for s in store.splits])),
        np.arange(40),
    )


@pytest.mark.parametrize(
    "backend, options, message",
    [
        ("zarr", {"compression": "zstd", "clevel": 11}, "clevel 11"),
        ("zarr", {"compression": "zstd", "speed": 3}, "speed"),
        ("hdf5", {"compression": "lzf", "level": 3}, "takes no level"),
    ],
)
def test_bad_compression_options_are_conversion_errors(tmp_path, backend, options, message):
    with pytest.raises(ConversionError, match=message):
        convert(tensors(), tmp_path / "s", backend=backend, compression=options, progress=False)
    assert not (tmp_path / "s").exists()


def test_samples_in_every_array_form_read_back_equal(tmp_path):
    """Tensors needing grad, non-contiguous views, parameters (a subclass), numpy arrays and
    numpy arrays of another byte order store the same values, fixed-shape and ragged fields alike."""
    from datalflash.loading import ChunkedDataset

    rng = np.random.default_rng(5)
    grid = [rng.standard_normal((3, 2)).astype(np.float32) for _ in range(12)]
    tokens = [rng.integers(-9, 9, size=int(rng.integers(0, 7))).astype(np.int64) for _ in range(12)]

    def form(k: int, array: np.ndarray):
        forms = [
            lambda a: torch.from_numpy(a).requires_grad_(a.dtype == np.float32),
            lambda a: (
                torch.from_numpy(np.ascontiguousarray(a.T)).T if a.ndim == 2 else torch.from_numpy(a.repeat(2))[::2]
            ),
            lambda a: torch.nn.Parameter(torch.from_numpy(a), requires_grad=False),
            lambda a: a,
            lambda a: a.astype(a.dtype.newbyteorder()),
        ]
        return forms[k % len(forms)](array)

    samples = [{"grid": form(k, grid[k]), "tokens": form(k + 1, tokens[k])} for k in range(12)]
    path = convert(
        Samples(samples), tmp_path / "s", chunk_size=5, split_ratios={"all": 1.0}, shuffle=False, progress=False
    )
    split = ChunkedDataset(path, "all")
    assert split.fields["grid"].kind == "array" and split.fields["tokens"].kind == "ragged"
    for k in range(12):
        assert np.array_equal(split[k]["grid"].numpy(), grid[k])
        assert np.array_equal(split[k]["tokens"].numpy(), tokens[k])
