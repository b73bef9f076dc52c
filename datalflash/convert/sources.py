"""Datasets to convert, named by a string: what ``datalflash convert SRC`` accepts.

* ``module:callable``: ``callable()`` (imported from ``module``) returns a torch Dataset;
* ``a.npy`` or ``a.npy,b.npy,...``: arrays memory-mapped, samples ``(a[i], b[i], ...)``;
* ``data.npz``: its arrays, samples ``{key: array[i]}``;
* ``data.h5`` (every top-level dataset) or ``data.h5:name``: HDF5 datasets;
* ``array.zarr`` (an array, or a group of arrays): Zarr;
* a directory written by Hugging Face ``Dataset.save_to_disk``: that dataset (see :func:`as_dataset`);
* an image folder (``root/<class>/*.jpg``): its images and class ids (see :mod:`datalflash.convert.images`).

Array sources become a ``TensorDataset`` (dict sources a dict-sample dataset), so the converter
copies them in vectorized blocks. ``.npy`` files stay memory-mapped; npz, HDF5 and Zarr arrays
are read into memory, which needs RAM for the whole source.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from datalflash.errors import ConversionError


class SourceError(ConversionError):
    """A conversion source that cannot be used; the message says why."""


class DictDataset(Dataset):
    """Samples ``{name: tensor[i]}`` over equally long tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise SourceError(f"arrays have different lengths: {lengths}")
        self.tensors = tensors
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}


def _tensor(array: Any, where: str) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype.kind not in "biufc":
        raise SourceError(f"{where}: dtype {array.dtype} is not numeric")
    if array.ndim == 0:
        raise SourceError(f"{where}: a 0-d array has no samples")
    with warnings.catch_warnings():  # a read-only memory map is shared, not copied; nothing writes it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def _from_factory(spec: str) -> Dataset:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SourceError(f"{spec}: cannot import module {module_name!r}: {e}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"{spec}: {module_name!r} has no callable {attr!r}")
    dataset = factory()
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise SourceError(f"{spec}: returned {type(dataset).__name__}, not a map-style torch Dataset")
    return dataset


def _from_npy(spec: str) -> Dataset:
    tensors = []
    for part in spec.split(","):
        if not Path(part).is_file():
            raise SourceError(f"{part}: no such file")
        try:
            array = np.load(part, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise SourceError(f"{part}: not a numeric .npy file: {e}") from None
        tensors.append(_tensor(array, part))
    if len({len(t) for t in tensors}) != 1:
        raise SourceError(f"{spec}: arrays have different lengths {[len(t) for t in tensors]}")
    return TensorDataset(*tensors)


def _from_npz(spec: str) -> Dataset:
    try:
        with np.load(spec, allow_pickle=False) as archive:
            return DictDataset({key: _tensor(archive[key], f"{spec}[{key!r}]") for key in archive.files})
    except (OSError, ValueError) as e:
        raise SourceError(f"{spec}: not a readable .npz file: {e}") from None


def _from_hdf5(spec: str) -> Dataset:
    import h5py

    path, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    try:
        with h5py.File(path, "r") as f:
            if name:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise SourceError(f"{path}: no dataset {name!r}")
                return TensorDataset(_tensor(f[name][()], f"{path}:{name}"))
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            if not names:
                raise SourceError(f"{path}: no datasets at the top level")
            return DictDataset({k: _tensor(f[k][()], f"{path}:{k}") for k in names})
    except OSError as e:
        raise SourceError(f"{path}: not a readable HDF5 file: {e}") from None


def _from_zarr(spec: str) -> Dataset:
    import zarr

    try:
        node = zarr.open(spec, mode="r")
    except Exception as e:  # zarr raises several types for a path that is not zarr
        raise SourceError(f"{spec}: not a readable Zarr array or group: {e}") from None
    if isinstance(node, zarr.Array):
        return TensorDataset(_tensor(node[...], spec))
    arrays = dict(node.arrays())
    if not arrays:
        raise SourceError(f"{spec}: the Zarr group holds no arrays")
    return DictDataset({name: _tensor(a[...], f"{spec}/{name}") for name, a in arrays.items()})


def is_hf_dataset(source: Any) -> bool:
    """Whether ``source`` is a Hugging Face ``datasets.Dataset`` (checked without importing it)."""
    return type(source).__module__.startswith("datasets.") and hasattr(source, "with_format")


def as_dataset(source: Any) -> Any:
    """What the converter reads: a Hugging Face ``datasets.Dataset`` in numpy format (list and
    array columns as arrays, so variable-length ones become ragged fields; text as ``str``);
    any other dataset as it is."""
    return source.with_format("numpy") if is_hf_dataset(source) else source


def _from_hf_disk(spec: str) -> Dataset:
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"{spec}: a Hugging Face dataset directory; reading it needs `pip install datasets`"
        ) from None
    loaded = datasets.load_from_disk(spec)
    if not is_hf_dataset(loaded):
        raise SourceError(f"{spec}: holds a {type(loaded).__name__}; convert one of its splits (a Dataset)")
    return loaded


def load_source(spec: str) -> Dataset:
    """The dataset ``spec`` names (see the module docstring); raises SourceError."""
    base = spec.split(",")[0].split(":")[0] if not Path(spec).exists() else spec
    suffix = Path(base).suffix.lower()
    if suffix == ".npy":
        return _from_npy(spec)
    if suffix == ".npz":
        return _from_npz(spec)
    if suffix in (".h5", ".hdf5", ".hdf"):
        return _from_hdf5(spec)
    if suffix == ".zarr" or (Path(spec) / "zarr.json").exists():
        return _from_zarr(spec)
    if (Path(spec) / "dataset_info.json").exists() or (Path(spec) / "state.json").exists():
        return _from_hf_disk(spec)
    if ":" in spec and not Path(spec).exists():
        return _from_factory(spec)
    from datalflash.convert.images import image_folder, is_image_folder  # (it builds on this module)

    if is_image_folder(spec):
        return image_folder(spec)
    raise SourceError(
        f"{spec}: not a source; give module:callable, .npy file(s), a .npz file, an HDF5 file "
        "(file.h5 or file.h5:dataset), a Zarr array/group, a saved Hugging Face dataset directory "
        "or an image folder (root/<class>/<image files>)"
    )
