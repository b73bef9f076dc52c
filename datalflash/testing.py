"""A reusable test class for :class:`~datalflash.store.ChunkStore` backends (needs pytest).

Subclass :class:`ChunkStoreTests` in your test suite, set ``backend`` (and optionally
``compression``), and implement :meth:`~ChunkStoreTests.read_plain` with the backend's own
library; every test then runs against your backend. zarr ships ``zarr.testing.store`` the same way.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datalflash.batching.tensors import as_storage
from datalflash.convert import DatasetConverter
from datalflash.format.manifest import parse_manifest
from datalflash.store import ChunkStore, open_store


class ChunkReaderDataset(Dataset):
    """Item ``i`` is chunk ``i`` of a split, read through the store (for worker start-method tests)."""

    def __init__(self, store: ChunkStore, split: str):
        self.store, self.split = store, split

    def __len__(self) -> int:
        return self.store.num_chunks(self.split)

    def __getitem__(self, chunk: int) -> dict[str, np.ndarray]:
        return self.store.read_chunks(self.split, [chunk])


class DictSamples(Dataset):
    """Dict samples covering every dtype family, including bfloat16, complex and scalars."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.image = torch.randint(0, 256, (n, 3, 4, 5), dtype=torch.uint8, generator=g)
        self.label = torch.randint(-(2**40), 2**40, (n,), dtype=torch.int64, generator=g)
        self.mask = torch.rand(n, 6, generator=g) > 0.5
        self.half = torch.randn(n, 2, generator=g).half()
        self.bf16 = torch.randn(n, 3, generator=g).bfloat16()
        self.vector = torch.randn(n, 7, generator=g, dtype=torch.float64).numpy()
        self.wave = torch.randn(n, 4, generator=g, dtype=torch.complex64)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": self.image[i],
            "label": int(self.label[i]),
            "mask": self.mask[i],
            "half": self.half[i],
            "bf16": self.bf16[i],
            "vector": self.vector[i],
            "score": float(self.vector[i, 0]),
            "small": np.int16(i % 1000),
            "wave": self.wave[i],
            "phase": complex(self.vector[i, 1], self.vector[i, 2]),
        }

    def expected(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Storage arrays the store must hold for samples ``index``, in that order."""
        idx = torch.as_tensor(index)
        return {
            "image": self.image[idx].numpy(),
            "label": self.label[idx].numpy(),
            "mask": self.mask[idx].numpy(),
            "half": self.half[idx].numpy(),
            "bf16": as_storage(self.bf16[idx], "bfloat16"),
            "vector": self.vector[index],
            "score": self.vector[index, 0],
            "small": (np.asarray(index) % 1000).astype(np.int16),
            "wave": self.wave[idx].numpy(),
            "phase": self.vector[index, 1] + 1j * self.vector[index, 2],
        }


class ChunkStoreTests:
    """Round-trip and interface tests every backend must pass."""

    backend: ClassVar[str]
    compression: ClassVar[Any] = "default"

    def read_plain(self, path: Path, split: str, field: str) -> np.ndarray:
        """Read a whole field of a split with the backend's own library (not datalflash)."""
        raise NotImplementedError

    def convert(self, dataset: Any, path: Path, **kwargs: Any) -> ChunkStore:
        """Convert ``dataset`` with this backend and open the result."""
        kwargs.setdefault("progress", False)
        DatasetConverter.create_chunked_dataset(
            dataset, path, backend=self.backend, compression=self.compression, **kwargs
        )
        return open_store(path)

    def split_order(self, store: ChunkStore, n: int, seed: int, shuffle: bool) -> dict[str, np.ndarray]:
        """Source indices each split must hold, by the format's splitting rule."""
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        result, offset = {}, 0
        for split, info in store.splits.items():
            result[split] = order[offset : offset + info.num_samples]
            offset += info.num_samples
        return result

    def test_round_trip_all_dtypes(self, tmp_path: Path) -> None:
        data = DictSamples(53)
        store = self.convert(data, tmp_path / "s", chunk_size=8, seed=3)
        assert store.backend_id == self.backend
        assert {f.dtype for f in store.fields.values()} >= {
            "uint8",
            "int64",
            "bool",
            "float16",
            "bfloat16",
            "float64",
            "int16",
            "complex64",
            "complex128",
        }
        assert store.fields["score"].shape == () and store.fields["image"].shape == (3, 4, 5)
        for split, index in self.split_order(store, 53, seed=3, shuffle=True).items():
            got = store.read_chunks(split, range(store.num_chunks(split)))
            store.close()  # HDF5 refuses a second open of a file with other locking flags
            for name, values in data.expected(index).items():
                np.testing.assert_array_equal(got[name], values, err_msg=f"{split}/{name}")
                np.testing.assert_array_equal(self.read_plain(tmp_path / "s", split, name), values)

    def test_tuple_samples_and_partial_last_chunk(self, tmp_path: Path) -> None:
        x = torch.arange(23 * 2, dtype=torch.float32).reshape(23, 2)
        y = torch.arange(23)
        samples = [(x[i], int(y[i])) for i in range(23)]
        store = self.convert(samples, tmp_path / "s", chunk_size=5, split_ratios={"all": 1.0}, shuffle=False)
        assert store.num_samples("all") == 23 and store.num_chunks("all") == 5
        assert store.chunk_bounds("all", 4) == (20, 23)
        last = store.read_chunks("all", [4])
        np.testing.assert_array_equal(last["0"], x[20:].numpy())
        np.testing.assert_array_equal(last["1"], np.arange(20, 23))
        assert store.structure["kind"] == "tuple"

    def test_several_chunks_in_one_call_into_buffers(self, tmp_path: Path) -> None:
        x = torch.arange(40 * 3, dtype=torch.int32).reshape(40, 3)
        store = self.convert(
            list(zip(x, torch.arange(40))), tmp_path / "s", chunk_size=6, split_ratios={"train": 1.0}, shuffle=False
        )
        out = store.allocate(64)
        chunks = [6, 2, 3, 4, 0]  # out of order, a run in the middle, the partial last chunk first
        got = store.read_chunks("train", chunks, out=out)
        rows = np.concatenate([np.arange(*store.chunk_bounds("train", c)) for c in chunks])
        np.testing.assert_array_equal(got["0"], x.numpy()[rows])
        np.testing.assert_array_equal(got["1"], rows)
        assert np.shares_memory(got["0"], out["0"])
        with pytest.raises(ValueError, match="needs a C-contiguous"):
            store.read_chunks("train", [0, 1], out=store.allocate(5))
        with pytest.raises(IndexError):
            store.read_chunks("train", [7])
        with pytest.raises(KeyError, match="no split 'nope'"):
            store.read_chunks("nope", [0])

    def test_chunks_written_in_pieces(self, tmp_path: Path) -> None:
        data = DictSamples(29)
        reference = self.convert(data, tmp_path / "ref", chunk_size=8, seed=1)
        manifest = dataclasses.replace(parse_manifest(reference.manifest.to_json()), checksums={})  # computed anew
        store = type(reference).create(tmp_path / "s", manifest)
        with pytest.raises(ValueError, match="pieces hold 2 rows, expected 8"):
            store.write_chunk_pieces("train", 0, [{k: v[:2] for k, v in reference.read_chunks("train", [0]).items()}])
        with pytest.raises(ValueError, match="more than"):
            store.write_chunk_pieces("train", 0, [reference.read_chunks("train", [0, 1])])
        without_label = {k: v for k, v in reference.read_chunks("train", [0]).items() if k != "label"}
        with pytest.raises(ValueError, match="no rows for field 'label'"):
            store.write_chunk_pieces("train", 0, [without_label])
        with pytest.raises(ValueError, match="no rows for field 'label'"):
            store.write_chunk("train", 0, without_label)
        for split in store.splits:  # (a failed call leaves its chunk to be written again)
            for chunk in range(store.num_chunks(split)):
                rows = reference.read_chunks(split, [chunk])
                n = len(rows["label"])
                pieces = [{k: v[a : a + 3] for k, v in rows.items()} for a in range(0, n, 3)]
                store.write_chunk_pieces(split, chunk, iter(pieces))
        store.finish()
        reference.close()
        copy = open_store(tmp_path / "s", verify="always")
        assert copy.manifest.checksums == reference.manifest.checksums
        for split, index in self.split_order(copy, 29, seed=1, shuffle=True).items():
            got = copy.read_chunks(split, range(copy.num_chunks(split)))
            copy.close()
            for name, values in data.expected(index).items():
                np.testing.assert_array_equal(got[name], values, err_msg=f"{split}/{name}")
                np.testing.assert_array_equal(self.read_plain(tmp_path / "s", split, name), values)

    def test_read_field_alone_equals_read_chunks(self, tmp_path: Path) -> None:
        store = self.convert(DictSamples(23), tmp_path / "s", chunk_size=4)
        for split in store.splits:
            everything = store.read_chunks(split, range(store.num_chunks(split)))
            for name, spec in store.fields.items():
                if not spec.ragged:
                    np.testing.assert_array_equal(store.read_field(split, name), everything[name])

    def test_pickles_by_path(self, tmp_path: Path) -> None:
        store = self.convert(DictSamples(20), tmp_path / "s", chunk_size=4)
        before = store.read_chunks("train", [1])
        clone = pickle.loads(pickle.dumps(store))
        assert len(pickle.dumps(store)) < 10_000
        for name, values in clone.read_chunks("train", [1]).items():
            np.testing.assert_array_equal(values, before[name])

    @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
    def test_worker_start_methods(self, tmp_path: Path, method: str) -> None:
        data = DictSamples(30)
        store = self.convert(data, tmp_path / "s", chunk_size=4, shuffle=False)
        store.read_chunks("train", [0])  # handles opened in the parent must not leak into workers
        loader = DataLoader(
            ChunkReaderDataset(store, "train"),
            batch_size=None,
            num_workers=2,
            multiprocessing_context=method,
        )
        got = list(loader)
        assert len(got) == store.num_chunks("train")
        labels = np.concatenate([chunk["label"].numpy() for chunk in got])
        np.testing.assert_array_equal(labels, data.label[: store.num_samples("train")].numpy())

    def test_config_round_trip(self, tmp_path: Path) -> None:
        store = self.convert(DictSamples(5), tmp_path / "s", chunk_size=2)
        config = store.get_config()
        assert config["id"] == self.backend
        cls = type(store)
        rest = {k: v for k, v in config.items() if k != "id"}
        assert cls.config_from_manifest(rest) == rest
