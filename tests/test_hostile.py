"""Stores from elsewhere: hostile manifests and layouts are refused before any data is read."""

import contextlib
import json
import os

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from datalflash.errors import StoreFormatError
from datalflash.format.manifest import parse_manifest, read_manifest
from datalflash.store import open_store
from datalflash.utils import DatasetConverter

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def good_doc(tmp_path_factory=None):
    return {
        "format": "datalflash-store",
        "format_version": 1,
        "backend": {"id": "memmap", "config": {}},
        "chunk_size": 4,
        "fields": {
            "x": {"dtype": "float32", "storage_dtype": "<f4", "shape": [3]},
            "y": {"dtype": "int64", "shape": []},
        },
        "structure": {"kind": "tuple", "items": [{"kind": "field", "name": "x"}, {"kind": "field", "name": "y"}]},
        "splits": {"train": {"num_samples": 10, "num_chunks": 3}},
        "checksums": {"algorithm": "crc32c", "splits": {"train": {"x": [1, 2, 3], "y": [4, 5, 6]}}},
    }


def paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


@settings(max_examples=400, deadline=None)
@given(doc=json_values)
def test_any_json_is_a_manifest_or_a_store_format_error(doc):
    with contextlib.suppress(StoreFormatError):
        parse_manifest(doc)


@settings(max_examples=600, deadline=None)
@given(data=st.data(), value=json_values)
def test_any_mutation_of_a_good_manifest_is_valid_or_a_store_format_error(data, value):
    doc = good_doc()
    parse_manifest(good_doc())
    path = data.draw(st.sampled_from(list(paths(doc))[1:]))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    try:
        manifest = parse_manifest(doc)
    except StoreFormatError:
        return
    assert manifest.to_json()["splits"]  # a valid one round-trips


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_a_manifest_or_a_store_format_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("m")
    (path / "manifest.json").write_bytes(raw)
    with contextlib.suppress(StoreFormatError):
        read_manifest(path)


def test_deep_or_huge_manifests_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreFormatError):
        read_manifest(tmp_path)
    doc = good_doc()
    doc["splits"]["train"] = {"num_samples": 2**60, "num_chunks": 2**58}
    with pytest.raises(StoreFormatError, match="num_samples"):
        parse_manifest(doc)


def make(tmp_path, backend, name="store"):
    data = TensorDataset(torch.arange(40, dtype=torch.float32)[:, None], torch.arange(40))
    return DatasetConverter.create_chunked_dataset(
        data, tmp_path / name, chunk_size=8, split_ratios={"train": 1.0}, backend=backend, progress=False
    )


def test_links_out_of_the_store_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    memmap = make(tmp_path, "memmap", "m")
    target = outside / "0.npy"
    os.replace(memmap / "train" / "0.npy", target)
    os.symlink(target, memmap / "train" / "0.npy")
    with pytest.raises(StoreFormatError, match="outside the store"):
        open_store(memmap).read_chunks("train", [0])
    zarr_store = make(tmp_path, "zarr", "z")
    os.replace(zarr_store / "train.zarr", outside / "train.zarr")
    os.symlink(outside / "train.zarr", zarr_store / "train.zarr")
    with pytest.raises(StoreFormatError, match="outside the store"):
        open_store(zarr_store).read_chunks("train", [0])
    zarr_store = make(tmp_path, "zarr", "z2")
    chunk = zarr_store / "train.zarr" / "0" / "c" / "1" / "0"
    os.replace(chunk, outside / "chunk")
    os.symlink(outside / "chunk", chunk)
    store = open_store(zarr_store)
    store.read_chunks("train", [0])
    with pytest.raises(StoreFormatError, match="outside the store"):
        store.read_chunks("train", [1])


def test_hdf5_links_and_external_storage_refused(tmp_path):
    h5 = make(tmp_path, "hdf5")
    np.arange(40, dtype=np.float32).reshape(40, 1).tofile(tmp_path / "raw.bin")
    with h5py.File(h5 / "train.h5", "r+") as f:
        del f["0"]
        f.create_dataset("0", shape=(40, 1), dtype="<f4", external=[(str(tmp_path / "raw.bin"), 0, 160)])
    with pytest.raises(StoreFormatError, match="keeps its data in other files"):
        open_store(h5).read_chunks("train", [0])
    with h5py.File(tmp_path / "elsewhere.h5", "w") as f:
        f["0"] = np.zeros((40, 1), dtype="<f4")
    with h5py.File(h5 / "train.h5", "r+") as f:
        del f["0"]
        f["0"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "0")
    with pytest.raises(StoreFormatError, match="ExternalLink"):
        open_store(h5).read_chunks("train", [0])


def test_zarr_codecs_outside_the_allow_list_refused(tmp_path):
    path = make(tmp_path, "zarr")
    meta_path = path / "train.zarr" / "0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=r"'0'.*(not allowed|unusable)"):
        open_store(path).read_chunks("train", [0])
