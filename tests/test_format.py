"""Format v1: the committed fixture stores, the JSON Schema, and manifest validation."""

import copy
import io
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from datalflash.batching.tensors import from_storage
from datalflash.errors import BackendError, StoreFormatError
from datalflash.format.manifest import parse_manifest
from datalflash.store import open_store

FORMATS = Path(__file__).resolve().parents[1] / "formats"
FIXTURES = FORMATS / "fixtures" / "v1"
SCHEMA = json.loads((FORMATS / "manifest.schema.json").read_text())
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_fixture_store_reads_back(backend):
    store = open_store(FIXTURES / backend)
    assert store.backend_id == backend
    assert store.structure["kind"] == "dict"
    for split, fields in EXPECTED.items():
        got = store.read_chunks(split, range(store.num_chunks(split)))
        for name, values in fields.items():
            tensor = from_storage(got[name], store.fields[name].dtype)
            assert tensor.dtype == getattr(torch, store.fields[name].dtype)
            as_float = tensor.float() if tensor.is_floating_point() else tensor
            np.testing.assert_array_equal(as_float.numpy(), np.array(values), err_msg=f"{backend} {split} {name}")


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_fixture_manifests_match_schema(backend):
    jsonschema.validate(json.loads((FIXTURES / backend / "manifest.json").read_text()), SCHEMA)


def fixture_doc():
    return json.loads((FIXTURES / "memmap" / "manifest.json").read_text())


def mutate(path, value, doc=None):
    """A copy of a fixture manifest (the v1 memmap one by default) with ``path`` set to ``value``."""
    doc = fixture_doc() if doc is None else doc
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def as_namedtuple(info):
    """The fixture manifest with its samples declared a namedtuple described by ``info`` (its
    items: the fixture's fields, in order)."""
    items = [{"kind": "field", "name": name} for name in fixture_doc()["fields"]]
    return mutate(["structure"], {"kind": "tuple", "items": items, "namedtuple": info})


NAMES = [f"f{i}" for i in range(len(fixture_doc()["fields"]))]


def test_namedtuple_structure_is_read_and_valid_in_the_schema():
    doc = as_namedtuple({"name": "Pair", "module": "train", "fields": NAMES})
    jsonschema.validate(doc, SCHEMA)
    assert parse_manifest(doc).structure["namedtuple"]["name"] == "Pair"


def test_mapping_types_are_read_and_valid_in_the_schema():
    doc = mutate(["structure", "mapping"], {"name": "OrderedDict", "module": "collections"})
    jsonschema.validate(doc, SCHEMA)
    assert parse_manifest(doc).structure["mapping"]["name"] == "OrderedDict"


def test_python_number_fields_are_read_and_valid_in_the_schema():
    doc = mutate(["structure", "items", "label", "python"], "int")
    jsonschema.validate(doc, SCHEMA)
    assert parse_manifest(doc).structure["items"]["label"]["python"] == "int"


BAD_MANIFESTS = [
    (as_namedtuple({"name": "os.system", "fields": NAMES}), "namedtuple"),
    (as_namedtuple({"name": "Pair", "fields": NAMES[1:]}), "namedtuple"),
    (as_namedtuple({"name": "Pair", "fields": ["x"] * len(NAMES)}), "namedtuple"),
    (as_namedtuple({"name": "Pair", "fields": "ab"}), "namedtuple"),
    (as_namedtuple({"name": "Pair", "fields": NAMES, "module": 3}), "namedtuple"),
    (mutate(["format"], "zarr"), "'format'"),
    (mutate(["format_version"], 2), "newer than this datalflash reads.*upgrade"),
    (mutate(["format_version"], "1"), "not an integer"),
    (mutate(["format_version"], 0), "not valid"),
    (mutate(["chunk_size"], 0), "chunk_size"),
    (mutate(["fields", "image", "dtype"], "object"), "dtype 'object' is not supported"),
    (mutate(["fields", "image", "storage_dtype"], "|O"), "does not match"),
    (mutate(["fields", "image", "shape"], [-1]), "shape"),
    (mutate(["fields", "image", "shape"], [2**20, 2**20]), "too large"),
    (mutate(["splits", "train", "num_chunks"], 3), "num_chunks 3 does not match"),
    (mutate(["splits", "train", "num_samples"], True), "num_samples"),
    (mutate(["structure", "items", "image", "name"], "label"), "structure names fields"),
    (mutate(["structure", "kind"], "set"), "not valid"),
    (mutate(["structure", "mapping"], {"name": "os.system()", "module": "os"}), "mapping"),
    (mutate(["structure", "mapping"], "collections.OrderedDict"), "mapping"),
    (mutate(["structure", "items", "label", "python"], "str"), "'python' is not bool, int, float or complex"),
    (mutate(["backend"], "memmap"), "'backend'"),
    ([1, 2], "not a JSON object"),
]


@pytest.mark.parametrize("doc, pattern", BAD_MANIFESTS)
def test_bad_manifest_refused(doc, pattern):
    with pytest.raises(StoreFormatError, match=pattern):
        parse_manifest(doc)


@pytest.mark.parametrize("name", ["../evil", "/etc", "a/b", ".hidden", "", "x" * 200])
def test_field_names_cannot_leave_the_store(name):
    doc = fixture_doc()
    doc["fields"][name] = doc["fields"].pop("image")
    doc["structure"]["items"]["image"]["name"] = name
    with pytest.raises(StoreFormatError, match="not allowed"):
        parse_manifest(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_schema_and_reader_agree_on_good_manifest():
    doc = fixture_doc()
    jsonschema.validate(doc, SCHEMA)
    manifest = parse_manifest(copy.deepcopy(doc))
    assert manifest.to_json()["fields"] == doc["fields"]


def test_unknown_keys_are_ignored_within_a_version():
    doc = fixture_doc()
    doc["future_feature"] = {"x": 1}
    assert parse_manifest(doc).chunk_size == doc["chunk_size"]


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreFormatError, match="not a datalflash store"):
        open_store(tmp_path)
    shutil.copytree(FIXTURES / "memmap", tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="not valid JSON"):
        open_store(tmp_path / "s")
    doc = fixture_doc()
    doc["backend"]["id"] = "nosuch"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="unknown backend 'nosuch'"):
        open_store(tmp_path / "s")
    doc["backend"] = {"id": "zarr", "config": {"compression": "pickle"}}
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="compression 'pickle'"):
        open_store(tmp_path / "s")
    doc["backend"] = {"id": "memmap", "config": {"exec": "rm -rf /"}}
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match=r"memmap backend config .* is not valid"):
        open_store(tmp_path / "s")


def test_memmap_header_disagreeing_with_manifest(tmp_path):
    shutil.copytree(FIXTURES / "memmap", tmp_path / "s")
    np.save(tmp_path / "s" / "train" / "label.npy", np.zeros(6, dtype=np.int32))
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreFormatError, match=r"label.npy: holds .*int32.*manifest says"):
        store.read_chunks("train", [0])


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_freshly_written_manifest_matches_schema(tmp_path, backend):
    import torch
    from torch.utils.data import TensorDataset

    from datalflash.utils import DatasetConverter

    path = DatasetConverter.create_chunked_dataset(
        TensorDataset(torch.zeros(30, 2), torch.arange(30)),
        tmp_path / backend,
        chunk_size=8,
        backend=backend,
        progress=False,
    )
    doc = json.loads((path / "manifest.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert ("checksums" in doc) == (backend in ("memmap", "zarr"))  # (HDF5 keeps its own in the file)


RAGGED_FIXTURES = FORMATS / "fixtures" / "v1-ragged"


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_ragged_fixture_store_reads_back(backend):
    """Stores with variable-length fields (added within v1) written by datalflash 0.2 read back."""
    expected = json.loads((RAGGED_FIXTURES / "expected.json").read_text())
    jsonschema.validate(json.loads((RAGGED_FIXTURES / backend / "manifest.json").read_text()), SCHEMA)
    store = open_store(RAGGED_FIXTURES / backend)
    kinds = {name: (spec.kind, list(spec.shape)) for name, spec in store.fields.items()}
    assert kinds == {
        "tokens": ("ragged", [None]),
        "image": ("ragged", [None, None, 3]),
        "label": ("str", [None]),
        "blob": ("bytes", [None]),
        "index": ("array", []),
    }
    seen = 0
    for split in store.splits:
        got = store.read_chunks(split, range(store.num_chunks(split)))
        for row, index in enumerate(got["index"].tolist()):
            want = expected[index]
            assert got["tokens"].sample(row).tolist() == want["tokens"]
            assert got["image"].sample(row).tolist() == want["image"]
            assert got["label"].sample(row).tobytes().decode() == want["label"]
            assert got["blob"].sample(row).tolist() == want["blob"]
            seen += 1
    assert seen == len(expected)


IMAGE_FIXTURES = FORMATS / "fixtures" / "v1-images"


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_image_fixture_store_reads_back(backend):
    """Stores with image fields (added within v1) written by datalflash 0.3 read back: the PNG
    bytes decode to the images written, the size field holds each one's height, width, channels."""
    pil = pytest.importorskip("PIL.Image")
    expected = json.loads((IMAGE_FIXTURES / "expected.json").read_text())
    jsonschema.validate(json.loads((IMAGE_FIXTURES / backend / "manifest.json").read_text()), SCHEMA)
    store = open_store(IMAGE_FIXTURES / backend)
    assert store.fields["0"].kind == "image" and store.fields["0"].encoding == "png"
    assert store.fields["1"].classes == ("cat", "dog", "eel")
    rows = [
        (got["0"].sample(row).tobytes(), got["0.size"][row].tolist(), int(got["1"][row]))
        for split in ("train", "val", "test")
        for got in [store.read_chunks(split, range(store.num_chunks(split)))]
        for row in range(store.num_samples(split))
    ]
    assert len(rows) == len(expected)
    for (data, size, label), want in zip(rows, expected):
        with pil.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == want["mode"]
            assert np.asarray(image.convert("RGB")).tolist() == want["pixels"]
        assert size == [len(want["pixels"]), len(want["pixels"][0]), 1 if want["mode"] == "L" else 3]
        assert label == want["label"]


def _ragged_doc():
    return json.loads((RAGGED_FIXTURES / "memmap" / "manifest.json").read_text())


def _ragged_mutate(path, value):
    return mutate(path, value, _ragged_doc())


BAD_RAGGED = [
    (_ragged_mutate(["fields", "tokens", "kind"], "jagged"), "kind 'jagged'"),
    (_ragged_mutate(["fields", "tokens", "shape"], [5]), "null \\(varying\\) dimension"),
    (_ragged_mutate(["fields", "index", "shape"], [None]), "shape \\[None\\] is not a list of non-negative integers$"),
    (_ragged_mutate(["fields", "label"], {"dtype": "int32", "shape": [None], "kind": "str"}), "str field is uint8"),
    (_ragged_mutate(["fields", "blob", "shape"], [None, 2]), "bytes field is uint8 of shape \\[null\\]"),
    (_ragged_mutate(["fields", "tokens", "typical_nbytes"], -1), "typical_nbytes"),
]


@pytest.mark.parametrize("doc, pattern", BAD_RAGGED)
def test_bad_ragged_manifest_refused(doc, pattern):
    with pytest.raises(StoreFormatError, match=pattern):
        parse_manifest(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def _image_mutate(path, value):
    return mutate(path, value, json.loads((IMAGE_FIXTURES / "memmap" / "manifest.json").read_text()))


BAD_IMAGES = [
    (_image_mutate(["fields", "0", "encoding"], "gif"), "bad image encoding 'gif'", True),
    (_image_mutate(["fields", "1", "encoding"], "png"), "bad image encoding 'png'", False),
    (_image_mutate(["fields", "0.size", "shape"], [2]), "is not int32 of shape \\[3\\]", False),
    (_image_mutate(["structure", "items", 0], {"kind": "field", "name": "0"}), "names fields", False),
    (_image_mutate(["structure", "items", 0, "size"], "1"), "names fields", False),
    (_image_mutate(["fields", "1", "classes"], [1, 2]), "'classes' is not a list of names", True),
    (_image_mutate(["fields", "0", "shape"], [None, 3]), "image field is uint8 of shape", False),
]


@pytest.mark.parametrize("doc, pattern, schema_refuses", BAD_IMAGES)
def test_bad_image_manifest_refused(doc, pattern, schema_refuses):
    with pytest.raises(StoreFormatError, match=pattern):
        parse_manifest(doc)
    if schema_refuses:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SCHEMA)


def test_old_checksum_keys_do_not_fit_a_ragged_store():
    doc = _ragged_doc()
    doc["checksums"]["splits"]["train"].pop("tokens/values")
    with pytest.raises(StoreFormatError, match="do not list every field"):
        parse_manifest(doc)
