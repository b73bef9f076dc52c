"""Variable-length data: ragged, str and bytes fields stored, read back by plain readers and by the
loader under every collate policy, checked sample by sample against real sources."""

from __future__ import annotations

import itertools
import json
import os
import re
import sysconfig
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from datalflash.batching.ragged import Collate, Packed, Padded, RaggedTensors, assemble, assemble_run, take
from datalflash.core import FlashDataLoader, get_dataloaders
from datalflash.errors import ConversionError, DataLFlashError, StoreFormatError
from datalflash.format.ragged import RaggedArray
from datalflash.loading import ChunkedDataset
from datalflash.store import open_store
from datalflash.utils import DatasetConverter

BACKENDS = ["zarr", "hdf5", "memmap"]


def stdlib_documents(count: int) -> list[tuple[str, np.ndarray]]:
    """Real text: the Python standard library's own sources, cut into documents (one per
    top-level definition run), tokenized by bytes; named by module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[tuple[str, np.ndarray]] = []
    for path in sorted(root.glob("*.py")):
        text = path.read_bytes()
        for k, part in enumerate(text.split(b"\ndef ")[:8]):
            docs.append((f"{path.stem}.{k}", np.frombuffer(part[:3000], dtype=np.uint8).astype(np.int32)))
            if len(docs) == count:
                return docs
    return docs


def photo_crops(count: int) -> list[np.ndarray]:
    """Real photographs (scikit-learn's sample images) cut to varied sizes, HWC uint8."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(3)
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        y, x = int(rng.integers(0, image.shape[0] - h)), int(rng.integers(0, image.shape[1] - w))
        crops.append(np.ascontiguousarray(image[y : y + h, x : x + w]))
    return crops


class RealSamples(Dataset):
    """Token ids of stdlib documents, their module name (str), a photo crop, the JPEG bytes of
    a real photo (every 7th sample) or a short blob, and an index."""

    def __init__(self, n: int = 300):
        from sklearn.datasets import load_sample_images

        self.docs = stdlib_documents(n)
        self.photos = photo_crops(n)
        self.jpegs = [Path(f).read_bytes() for f in load_sample_images().filenames]
        self.n = min(n, len(self.docs))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        name, tokens = self.docs[i]
        blob = self.jpegs[i % 2] if i % 7 == 0 else bytes([i % 256]) * (i % 5)
        return {"tokens": torch.from_numpy(tokens), "name": name, "photo": self.photos[i], "blob": blob, "index": i}


@pytest.fixture(scope="module")
def real() -> RealSamples:
    return RealSamples()


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, real, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ragged") / request.param
    DatasetConverter.create_chunked_dataset(real, path, chunk_size=32, backend=request.param, progress=False)
    return path


def source_of(store_path: Path, split: str, row: int, real: RealSamples) -> dict:
    return real[int(ChunkedDataset(store_path, split)[row]["index"])]


def test_kinds_are_inferred_and_listed(store):
    fields = open_store(store).fields
    assert (fields["tokens"].kind, fields["tokens"].shape, fields["tokens"].dtype) == ("ragged", (None,), "int32")
    assert (fields["photo"].kind, fields["photo"].shape) == ("ragged", (None, None, 3))
    assert fields["name"].kind == "str" and fields["blob"].kind == "bytes"
    assert fields["index"].kind == "array"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["fields"]["photo"]["shape"] == [None, None, 3]


def test_every_sample_reads_back_equal(store, real):
    seen = set()
    for split in ("train", "val", "test"):
        data = ChunkedDataset(store, split)
        for row in range(len(data)):
            sample = data[row]
            source = real[int(sample["index"])]
            assert torch.equal(sample["tokens"], source["tokens"])
            assert sample["name"] == source["name"] and isinstance(sample["name"], str)
            assert sample["blob"] == source["blob"]
            assert np.array_equal(sample["photo"].numpy(), source["photo"])
            seen.add(int(sample["index"]))
    assert seen == set(range(len(real)))


def plain_read(store: Path, split: str, field: str) -> list[np.ndarray]:
    """A ragged field's samples read with zarr / h5py / numpy alone, as the SPEC describes."""
    backend = json.loads((store / "manifest.json").read_text())["backend"]["id"]
    chunk_size = json.loads((store / "manifest.json").read_text())["chunk_size"]
    if backend == "zarr":
        group = zarr.open_group(store / f"{split}.zarr", mode="r")
        shapes = group[f"{field}/shapes"][...]
        values = lambda c: group[f"{field}/values/{c}"][...]  # noqa: E731
    elif backend == "hdf5":
        f = h5py.File(store / f"{split}.h5", "r", locking=False)
        shapes = f[f"{field}/shapes"][...]
        values = lambda c: f[f"{field}/values/{c}"][...]  # noqa: E731
    else:
        shapes = np.load(store / split / field / "shapes.npy")
        values = lambda c: np.load(store / split / field / "values" / f"{c}.npy")  # noqa: E731
    samples = []
    for chunk in range(-(-len(shapes) // chunk_size)):
        rows = shapes[chunk * chunk_size : (chunk + 1) * chunk_size]
        flat, offset = values(chunk), 0
        for shape in rows:
            size = int(np.prod(shape))
            samples.append(flat[offset : offset + size].reshape(shape))
            offset += size
        assert offset == len(flat)
    return samples


def test_plain_readers_read_the_values(store, real):
    tokens, names = plain_read(store, "train", "tokens"), plain_read(store, "train", "name")
    photos = plain_read(store, "train", "photo")
    data = ChunkedDataset(store, "train")
    assert len(tokens) == len(data)
    for row in range(len(data)):
        source = real[int(data[row]["index"])]
        assert np.array_equal(tokens[row], source["tokens"].numpy())
        assert names[row].tobytes().decode() == source["name"]
        assert np.array_equal(photos[row], source["photo"])


def reference_batches(loader, store_path, split, real):
    """``(batch, sources)`` of each batch: the source samples of its rows (by the index field)."""
    for batch in loader:
        yield batch, [real[int(i)] for i in batch["index"]]


def test_pad_policy_matches_each_sample(store, real):
    loader = FlashDataLoader(
        ChunkedDataset(store, "train"),
        batch_size=16,
        shuffle=True,
        collate={"tokens": {"pad_value": -1, "pad_multiple": 8, "mask": True}, "photo": "pad"},
    )
    for batch, sources in reference_batches(loader, store, "train", real):
        tokens, photo = batch["tokens"], batch["photo"]
        assert isinstance(tokens, Padded) and tokens.data.shape[1] % 8 == 0
        longest = max(len(s["tokens"]) for s in sources)
        assert tokens.data.shape[1] == -(-longest // 8) * 8
        for j, source in enumerate(sources):
            n = len(source["tokens"])
            assert int(tokens.lengths[j]) == n
            assert torch.equal(tokens.data[j, :n], source["tokens"])
            assert bool((tokens.data[j, n:] == -1).all())
            assert int(tokens.mask[j].sum()) == n and bool(tokens.mask[j, :n].all())
            h, w, _ = source["photo"].shape
            assert photo.lengths[j].tolist() == [h, w]
            assert np.array_equal(photo.data[j, :h, :w].numpy(), source["photo"])
            assert int(photo.data[j, h:].abs().sum()) == 0 and int(photo.data[j, :, w:].abs().sum()) == 0
        assert batch["name"] == [s["name"] for s in sources]
        assert [bytes(b.numpy()) for b in batch["blob"]] == [s["blob"] for s in sources]


@pytest.mark.parametrize("mode", ["packed", "nested", "list"])
def test_packed_nested_list_policies(store, real, mode):
    loader = FlashDataLoader(
        ChunkedDataset(store, "train"), batch_size=16, shuffle=True, collate={"tokens": mode, "photo": "list"}
    )
    for batch, sources in reference_batches(loader, store, "train", real):
        tokens = batch["tokens"]
        for j, source in enumerate(sources):
            if mode == "packed":
                assert isinstance(tokens, Packed) and tokens.cu_seqlens.dtype == torch.int32
                got = tokens.values[tokens.cu_seqlens[j] : tokens.cu_seqlens[j + 1]]
                assert tokens.max_seqlen == max(len(s["tokens"]) for s in sources)
            else:
                got = tokens[j]
            assert torch.equal(got, source["tokens"])
            assert np.array_equal(batch["photo"][j].numpy(), source["photo"])
        if mode == "nested":
            assert tokens.is_nested


def pad_tokens_with_names(samples: list[dict]) -> dict:
    """A padding collate_fn over the samples, as users write for torch's DataLoader."""
    tokens = [s["tokens"] for s in samples]
    return {
        "tokens": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
        "lengths": torch.tensor([len(t) for t in tokens]),
        "name": [s["name"] for s in samples],
        "index": torch.stack([torch.as_tensor(s["index"]) for s in samples]),
    }


def test_collate_fn_gets_ragged_samples_as_torch_would(store, real):
    """A collate_fn gets ragged, str and bytes samples as torch's DataLoader over the split gives
    them, in every batch; a padding collate_fn's batches equal torch's over the source samples."""
    split = ChunkedDataset(store, "train")
    ours = list(FlashDataLoader(split, batch_size=9, collate_fn=lambda samples: samples))
    theirs = list(DataLoader(split, batch_size=9, collate_fn=lambda samples: samples))
    assert len(ours) == len(theirs)
    for a, b in zip((s for batch in ours for s in batch), (s for batch in theirs for s in batch)):
        assert a.keys() == b.keys()
        for key in a:
            assert type(a[key]) is type(b[key]), key
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
    padded = list(FlashDataLoader(split, batch_size=9, shuffle=True, seed=1, collate_fn=pad_tokens_with_names))
    for batch in padded:
        sources = [real[int(i)] for i in batch["index"]]
        expected = pad_tokens_with_names(sources)
        assert torch.equal(batch["tokens"], expected["tokens"]) and batch["name"] == expected["name"]
    assert sorted(int(i) for batch in padded for i in batch["index"]) == sorted(
        int(split[r]["index"]) for r in range(len(split))
    )


def test_packed_refuses_fields_varying_beyond_the_first_dimension(store):
    with pytest.raises(ValueError, match=r"'photo'.*varies beyond its first dimension"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4, collate="packed")
    with pytest.raises(ValueError, match="holds str"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4, collate={"name": "pad"})
    with pytest.raises(ValueError, match="not ragged fields"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4, collate={"index": "pad"})
    with pytest.raises(ValueError, match=r"'tokens'.*unexpected keyword argument 'padding'"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4, collate={"tokens": {"padding": 1}})
    with pytest.raises(ValueError, match="mode 'ragged' is not one of"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4, collate="ragged")


def test_same_batches_with_workers_sampler_and_resume(store):
    data = ChunkedDataset(store, "train")

    def epoch(**options):
        loader = FlashDataLoader(data, batch_size=8, shuffle=True, seed=5, collate="list", **options)
        return [(b["index"].tolist(), [t.tolist() for t in b["tokens"]]) for b in loader]

    threads = epoch()
    assert epoch(num_workers=2) == threads
    order = list(range(len(data)))[::-1]
    rows = iter(order)
    for batch in FlashDataLoader(data, batch_size=8, sampler=order, collate="list"):
        for index, tokens in zip(batch["index"].tolist(), batch["tokens"]):
            sample = data[next(rows)]
            assert int(sample["index"]) == index and torch.equal(sample["tokens"], tokens)
    assert next(rows, None) is None
    loader = FlashDataLoader(data, batch_size=8, shuffle=True, seed=5, collate="list")
    it = iter(loader)
    first = [next(it)["index"].tolist() for _ in range(3)]
    state = loader.state_dict()
    resumed = FlashDataLoader(data, batch_size=8, shuffle=True, seed=5, collate="list")
    resumed.load_state_dict(state)
    rest = [b["index"].tolist() for b in resumed]
    assert first + rest == [indices for indices, _ in threads]


def data_rows(data: ChunkedDataset) -> list[int]:
    return [int(data[r]["index"]) for r in range(len(data))]


def test_ranks_share_an_epoch(store):
    data = ChunkedDataset(store, "train")
    served = []
    for rank in range(2):
        loader = FlashDataLoader(data, batch_size=8, shuffle=True, seed=1, rank=rank, world_size=2)
        batches = list(loader)
        served.append([int(i) for b in batches for i in b["index"]])
        assert all(isinstance(b["tokens"], Padded) for b in batches)
    assert len(served[0]) == len(served[1])
    assert set(served[0]) | set(served[1]) == set(data_rows(data))


def test_get_dataloaders_takes_collate(store, real):
    loaders = get_dataloaders(store, batch_size=10, collate={"tokens": "packed", "photo": "list"})
    batch = next(iter(loaders["val"]))
    assert isinstance(batch["tokens"], Packed)


def test_late_variation_converts_again_ragged(tmp_path):
    items = [np.arange(4, dtype=np.float32)] * 1000
    items[37] = np.arange(9, dtype=np.float32)  # (not among the samples probed for the schema)

    class Items(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    path = DatasetConverter.create_chunked_dataset(
        Items(), tmp_path / "s", chunk_size=100, split_ratios={"all": 1.0}, shuffle=False, progress=False
    )
    data = ChunkedDataset(path, "all")
    assert data.fields["data"].kind == "ragged"
    assert data[37].tolist() == list(range(9)) and data[36].tolist() == list(range(4))
    with pytest.raises(ConversionError, match="sample 37 field 'data'"):
        DatasetConverter.create_chunked_dataset(
            Items(), tmp_path / "t", chunk_size=100, shuffle=False, progress=False, fields={"data": "array"}
        )
    assert not (tmp_path / "t").exists()


def test_declared_ragged_and_scalar_text_samples(tmp_path):
    class Pairs(Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.full((3,), i), f"label {i}"

    path = DatasetConverter.create_chunked_dataset(
        Pairs(), tmp_path / "s", chunk_size=8, progress=False, fields={"0": "ragged"}, shuffle=False
    )
    data = ChunkedDataset(path, "train")
    assert data.fields["0"].kind == "ragged" and data.fields["1"].kind == "str"
    batch = next(iter(FlashDataLoader(data, batch_size=5)))
    assert batch[1] == [f"label {i}" for i in range(5)]
    assert torch.equal(batch[0].data, torch.arange(5).repeat_interleave(3).view(5, 3))


def test_hugging_face_dataset_converts(tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (the hf extra)")
    docs = stdlib_documents(120)
    hf = datasets.Dataset.from_dict(
        {
            "text": [name for name, _ in docs],
            "input_ids": [tokens[: 5 + i].tolist() for i, (_, tokens) in enumerate(docs)],
            "boxes": [[[i, 0, 1, 2]] * (i % 4) for i in range(len(docs))],
            "label": list(range(len(docs))),
        }
    )
    path = DatasetConverter.create_chunked_dataset(hf, tmp_path / "s", chunk_size=16, progress=False, shuffle=False)
    data = ChunkedDataset(path, "train")
    assert data.fields["input_ids"].kind == "ragged" and data.fields["text"].kind == "str"
    assert data.fields["boxes"].shape == (None, 4)
    for batch in FlashDataLoader(data, batch_size=12, collate={"input_ids": "list", "boxes": "packed"}):
        for j, label in enumerate(batch["label"].tolist()):
            assert batch["input_ids"][j].tolist() == hf[label]["input_ids"]
            assert batch["text"][j] == hf[label]["text"]
            rows = batch["boxes"].values[batch["boxes"].cu_seqlens[j] : batch["boxes"].cu_seqlens[j + 1]]
            assert rows.tolist() == hf[label]["boxes"]
    hf.save_to_disk(tmp_path / "hf")
    from datalflash.convert.sources import load_source

    assert len(load_source(str(tmp_path / "hf"))) == len(docs)


# ------------------------------------------------------------------ hostile stores
def _ragged_store(tmp_path: Path, backend: str) -> Path:
    class Tokens(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.arange(i % 7 + 1, dtype=torch.int16)

    return DatasetConverter.create_chunked_dataset(
        Tokens(),
        tmp_path / backend,
        chunk_size=10,
        split_ratios={"train": 1.0},
        backend=backend,
        progress=False,
        shuffle=False,
    )


def _write_shapes(path: Path, backend: str, shapes: np.ndarray) -> None:
    """Replace chunk 1's shape table with ``shapes`` (10 rows), keeping the store's checksums valid."""
    if backend == "zarr":
        store = open_store(path)
        spec = store.arrays["data/shapes"]
        writer = type(store)(path, store.manifest, writable=True)
        writer._handle("train")
        direct = writer._direct("train", spec.name, zarr.open_array(path / "train.zarr" / "data" / "shapes").metadata)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["checksums"]["splits"]["train"]["data/shapes"][1] = direct.write(1, shapes)
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif backend == "hdf5":
        with h5py.File(path / "train.h5", "r+") as f:
            f["data/shapes"][10:20] = shapes
    else:
        array = np.load(path / "train" / "data" / "shapes.npy", mmap_mode="r+")
        array[10:20] = shapes
        array.flush()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda s: s.__setitem__((3, 0), -2), r"row 3 has a negative shape"),
        (lambda s: s.__setitem__((3, 0), 2**40), r"absurdly large|more than a chunk may hold"),
        (lambda s: s.__setitem__((3, 0), s[3, 0] + 1), r"(needs|holds) .*values|decodes to"),
    ],
)
def test_hostile_shape_tables_are_refused(tmp_path, backend, change, pattern):
    path = _ragged_store(tmp_path, backend)
    shapes = ChunkedDataset(path, "train").store.read_chunks("train", [1])["data"].shapes.copy()
    change(shapes)
    _write_shapes(path, backend, shapes)
    store = open_store(path, verify="never")  # (memmap's checksums would catch it first)
    with pytest.raises(StoreFormatError) as info:
        store.read_chunks("train", [1])
    message = str(info.value)
    assert "split 'train'" in message and "field 'data'" in message and "chunk 1" in message
    assert re.search(pattern, message), message
    assert store.read_chunks("train", [0])["data"].sample(2).tolist() == [0, 1, 2]  # other chunks still read
    with pytest.raises(DataLFlashError):
        list(FlashDataLoader(ChunkedDataset(store, "train"), batch_size=4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_or_swapped_values_are_refused(tmp_path, backend):
    path = _ragged_store(tmp_path, backend)
    if backend == "memmap":
        os.replace(path / "train" / "data" / "values" / "2.npy", path / "train" / "data" / "values" / "1.npy")
    elif backend == "zarr":
        os.replace(path / "train.zarr/data/values/2/c/0", path / "train.zarr/data/values/1/c/0")
    else:
        with h5py.File(path / "train.h5", "r+") as f:
            del f["data/values/1"]
            f["data/values/1"] = f["data/values/2"][...]
    store = open_store(path, verify="always")
    with pytest.raises(DataLFlashError, match=r"chunk 1") as info:
        store.read_chunks("train", [1])
    assert "field 'data'" in str(info.value)


# ------------------------------------------------------------------ vectorized padding
shapes_strategy = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(shapes_strategy, st.integers(1, 4))
def test_vectorized_pad_matches_per_sample_assignment(shapes, multiple):
    rng = np.random.default_rng(len(shapes))
    samples = [rng.integers(1, 100, size=s).astype(np.int32) for s in shapes]
    array = RaggedArray.from_samples(samples, 3, np.dtype(np.int32))
    rows = RaggedTensors.from_array(array, torch.int32, _spec((None, None, None)))
    index = torch.from_numpy(rng.permutation(len(samples)))
    padded = assemble([(rows, index)], Collate("pad", pad_value=-7, pad_multiple=multiple, mask=True))
    size = [-(-max(s[d] for s in shapes) // multiple) * multiple for d in range(3)]
    assert list(padded.data.shape) == [len(samples), *size]
    for j, i in enumerate(index.tolist()):
        expected = torch.full(size, -7, dtype=torch.int32)
        h, w, c = shapes[i]
        expected[:h, :w, :c] = torch.from_numpy(samples[i])
        assert torch.equal(padded.data[j], expected)
        assert int(padded.mask[j].sum()) == h * w * c
        assert padded.lengths[j].tolist() == [h, w, c]
    packed = assemble([(rows, index)], Collate("list"))
    assert all(torch.equal(p, torch.from_numpy(samples[i])) for p, i in zip(packed, index.tolist()))


def _cuts(count: int, batch: int) -> list[int]:
    return [min(batch, count - a) for a in range(0, count, batch)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=6), min_size=1, max_size=30), st.integers(1, 7), st.booleans())
def test_text_runs_decode_every_row(texts, batch, buffered):
    """str rows of a run (NULs, empty and non-ASCII text included) decoded at once equal each row."""
    array = RaggedArray.from_samples([np.frombuffer(t.encode(), np.uint8) for t in texts], 1, np.dtype(np.uint8))
    buffer = np.concatenate([array.values, np.full(8, 65, np.uint8)]) if buffered else None
    values = array.values if buffer is None else buffer[: len(array.values)]
    rows = RaggedTensors(array.shapes, array.offsets, values, torch.uint8, "str", (None,), buffer)
    index = np.random.default_rng(len(texts)).permutation(len(texts))
    sizes = _cuts(len(texts), batch)
    assert RaggedTensors(array.shapes, array.offsets, array.values, torch.uint8, "str", (None,)).items() == texts
    got = assemble_run([(rows, torch.from_numpy(index))], sizes, Collate("list"), pin_memory=False)
    starts = np.cumsum([0, *sizes])
    assert got == [[texts[i] for i in index[a:b]] for a, b in itertools.pairwise(starts)]


def test_text_that_does_not_decode_is_refused():
    array = RaggedArray.from_samples([np.frombuffer(b, np.uint8) for b in (b"ok", b"\xff\xfe")], 1, np.dtype(np.uint8))
    rows = RaggedTensors(array.shapes, array.offsets, array.values, torch.uint8, "str", (None,))
    with pytest.raises(UnicodeDecodeError):
        assemble_run([(rows, torch.arange(2))], [2], Collate("list"), pin_memory=False)


@pytest.mark.parametrize(
    ("mode", "shape"),
    [(m, s) for m in ("pad", "packed", "nested", "list") for s in [(None,), (None, 2)]]
    + [(m, (None, None)) for m in ("pad", "nested", "list")],  # (packed needs fixed trailing dimensions)
)
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # (strided layout: two dims vary)
def test_runs_equal_batches_assembled_one_by_one(mode, shape):
    rng = np.random.default_rng(3)
    sizes_of = [[int(rng.integers(0, 6)) if d is None else d for d in shape] for _ in range(40)]
    samples = [rng.integers(1, 100, size=size).astype(np.int32) for size in sizes_of]
    array = RaggedArray.from_samples(samples, len(shape), np.dtype(np.int32))
    buffer = np.concatenate([array.values, np.zeros(64, np.int32)])
    rows = RaggedTensors(array.shapes, array.offsets, buffer[: len(array.values)], torch.int32, "ragged", shape, buffer)
    index = torch.from_numpy(rng.permutation(40))
    sizes = _cuts(40, 6)
    run = assemble_run([(rows, index)], sizes, Collate(mode, pad_value=-1), pin_memory=False)
    starts = np.cumsum([0, *sizes])
    for got, a, b in zip(run, starts, starts[1:]):
        alone = assemble([(rows, index[a:b])], Collate(mode, pad_value=-1))
        assert _same(got, alone)


@pytest.mark.parametrize("pin", [False, True])
def test_packed_runs_of_long_rows_hold_each_batchs_rows(pin):
    """Long rows are packed for a whole run at once (row starts and lengths worked out once):
    each batch holds exactly its rows, in order, with their cu_seqlens and longest length."""
    if pin and not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    rng = np.random.default_rng(11)
    samples = [rng.integers(-500, 500, size=int(rng.integers(0, 900))).astype(np.int32) for _ in range(50)]
    array = RaggedArray.from_samples(samples, 1, np.dtype(np.int32))
    rows = RaggedTensors(array.shapes, array.offsets, array.values, torch.int32, "ragged", (None,))
    index = torch.from_numpy(rng.permutation(50))
    sizes = [7, 0, 13, 30]
    run = assemble_run([(rows, index)], sizes, Collate("packed"), pin_memory=pin)
    starts = np.cumsum([0, *sizes])
    for batch, a, b in zip(run, starts, starts[1:]):
        expected = [samples[i] for i in index[a:b].tolist()]
        assert isinstance(batch, Packed) and batch.cu_seqlens.dtype == torch.int32
        assert batch.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum([len(e) for e in expected])]).tolist()
        assert np.array_equal(batch.values.numpy(), np.concatenate(expected) if expected else np.zeros(0, np.int32))
        assert batch.max_seqlen == max((len(e) for e in expected), default=0)
        assert batch.values.is_pinned() == pin
        assert _same(batch, assemble([(rows, index[a:b])], Collate("packed")))


@pytest.mark.parametrize("high", [0, 3, 40, 3000])  # (short rows by element index or view; long by slices)
@pytest.mark.parametrize("buffered", [False, True])
def test_take_gathers_rows_of_every_length(high, buffered):
    rng = np.random.default_rng(high)
    samples = [rng.integers(-50, 50, size=int(rng.integers(0, high + 1))).astype(np.int32) for _ in range(60)]
    array = RaggedArray.from_samples(samples, 1, np.dtype(np.int32))
    buffer = np.concatenate([array.values, np.zeros(high + 1, np.int32)]) if buffered else None
    values = array.values if buffer is None else buffer[: len(array.values)]
    rows = RaggedTensors(array.shapes, array.offsets, values, torch.int32, "ragged", (None,), buffer)
    first, second = rng.permutation(60)[:25], rng.permutation(60)[:17]
    got, lengths = take([(rows, torch.from_numpy(first)), (rows, torch.from_numpy(second))])
    expected = [samples[i] for i in [*first, *second]]
    assert lengths.tolist() == [len(e) for e in expected]
    assert np.array_equal(got.values, np.concatenate(expected))
    assert np.array_equal(got.offsets, np.concatenate([[0], np.cumsum(lengths)]))


def _same(x, y) -> bool:
    """Equal batches: tensors (nested ones row by row), tuples and lists of them, ints, None."""
    if isinstance(x, torch.Tensor) and x.is_nested:
        return _same(list(x.unbind()), list(y.unbind()))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, (tuple, list)):
        return type(x) is type(y) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return x == y


def _spec(shape):
    from datalflash.format.manifest import FieldSpec

    return FieldSpec("x", "int32", shape, "ragged")


# ------------------------------------------------------------------ token budgets
@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    """Real text of varied length: stdlib documents, tokenized by bytes (zarr store)."""

    class Docs(Dataset):
        def __init__(self):
            self.docs = stdlib_documents(600)

        def __len__(self):
            return len(self.docs)

        def __getitem__(self, i):
            return {"tokens": torch.from_numpy(self.docs[i][1]), "index": i}

    path = tmp_path_factory.mktemp("docs") / "store"
    return DatasetConverter.create_chunked_dataset(
        Docs(), path, chunk_size=50, split_ratios={"train": 1.0}, progress=False
    )


def token_epoch(store: Path, **options) -> list[dict]:
    options = {"batch_size": None, "shuffle": True, "seed": 2, **options}
    loader = FlashDataLoader(ChunkedDataset(store, "train"), **options)
    count = len(loader)  # (of the epoch about to run)
    batches = list(loader)
    assert count == len(batches)
    return batches


@pytest.mark.parametrize("bucket", [None, 32])
def test_token_budget_bounds_every_batch_and_serves_each_sample_once(documents, bucket):
    batches = token_epoch(documents, max_tokens=8192, bucket_size=bucket)
    served = [int(i) for b in batches for i in b["index"]]
    assert sorted(served) == list(range(len(ChunkedDataset(documents, "train"))))
    for b in batches:
        padded = b["tokens"]
        assert padded.data.numel() <= 8192 or len(b["index"]) == 1
    packed = token_epoch(documents, max_tokens=8192, collate="packed", batch_size=12)
    for b in packed:
        assert len(b["index"]) <= 12
        assert int(b["tokens"].cu_seqlens[-1]) <= 8192 or len(b["index"]) == 1


def test_bucketing_cuts_padding(documents):
    def padding(batches):
        stored = sum(b["tokens"].data.numel() for b in batches)
        return 1 - sum(int(b["tokens"].lengths.sum()) for b in batches) / stored

    plain, bucketed = token_epoch(documents, max_tokens=8192), token_epoch(documents, max_tokens=8192, bucket_size=64)
    assert padding(bucketed) < padding(plain) - 0.05, (padding(bucketed), padding(plain))
    assert token_epoch(documents, max_tokens=8192, bucket_size=64)[3]["index"].tolist() == bucketed[3]["index"].tolist()


@pytest.mark.parametrize("drop_last", [False, True])
def test_token_budget_ranks_get_the_same_number_of_batches(documents, drop_last):
    shares = [
        token_epoch(documents, max_tokens=6000, bucket_size=16, rank=r, world_size=3, drop_last=drop_last)
        for r in range(3)
    ]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) > 0
    served = [int(i) for s in shares for b in s for i in b["index"]]
    n = len(ChunkedDataset(documents, "train"))
    if drop_last:
        longest = max(len(b["index"]) for s in shares for b in s)
        assert len(set(served)) == len(served) and len(served) >= n - 2 - 2 * longest  # (a rank's extra batches)
    else:
        assert set(served) == set(range(n)) and len(served) <= n + 2


def test_token_budget_resumes_exactly(documents):
    data = ChunkedDataset(documents, "train")

    def loader(**options):
        return FlashDataLoader(data, batch_size=None, shuffle=True, seed=4, max_tokens=8192, bucket_size=32, **options)

    full = [b["index"].tolist() for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it)["index"].tolist() for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))
    again = loader()
    again.load_state_dict(state)
    assert len(again) == len(full) - 4
    assert head + [b["index"].tolist() for b in again] == full
    with pytest.raises(ValueError, match="world size and drop_last it was saved with"):
        loader(rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="different data or settings"):
        FlashDataLoader(data, batch_size=None, shuffle=True, seed=4, max_tokens=4096).load_state_dict(state)


def test_token_budget_arguments_are_checked(documents, store):
    data = ChunkedDataset(documents, "train")
    with pytest.raises(ValueError, match="sampler"):
        FlashDataLoader(data, batch_size=None, max_tokens=100, sampler=range(10))
    with pytest.raises(ValueError, match="go with max_tokens"):
        FlashDataLoader(data, batch_size=4, bucket_size=8)
    with pytest.raises(ValueError, match="max_tokens must be"):
        FlashDataLoader(data, batch_size=None, max_tokens=0)
    with pytest.raises(ValueError, match="length_field"):
        FlashDataLoader(ChunkedDataset(store, "train"), batch_size=None, max_tokens=100)  # two ragged fields
    with pytest.raises(ValueError, match="not a ragged field"):
        FlashDataLoader(data, batch_size=None, max_tokens=100, length_field="index")


def test_a_tokenized_corpus_trains_on_packed_batches(documents):
    """Real text, variable-length token ids, packed batches straight into an EmbeddingBag: the
    loss falls (the target, whether a document's mean byte is above the median, is learnable)."""
    data = ChunkedDataset(documents, "train")
    samples = [data[row] for row in range(len(data))]
    means = {int(s["index"]): float(s["tokens"].float().mean()) for s in samples}
    median = float(np.median(list(means.values())))
    torch.manual_seed(0)
    bag, head = torch.nn.EmbeddingBag(256, 8, mode="mean"), torch.nn.Linear(8, 2)
    optimizer = torch.optim.Adam([*bag.parameters(), *head.parameters()], lr=0.05)
    loader = FlashDataLoader(data, batch_size=32, shuffle=True, seed=0, collate={"tokens": "packed"})
    losses = []
    for _epoch in range(6):
        total = 0.0
        for batch in loader:
            packed = batch["tokens"]
            target = torch.tensor([int(means[int(i)] > median) for i in batch["index"]])
            logits = head(bag(packed.values.long(), packed.cu_seqlens[:-1].long()))
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(target)
        losses.append(total / len(data))
    assert losses[-1] < 0.8 * losses[0], losses
