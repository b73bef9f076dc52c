"""Reading samples of a user's dataset into per-field blocks, with checks naming sample and field.

Parallel reading is torch's DataLoader's job: blocks of indices go out as batches, and
:class:`BlockCollator` (run inside the workers) turns each block of samples into one storage
array per field, checking every sample against the schema of the first.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from datalflash.batching.tensors import as_storage, from_storage, torch_dtype_name
from datalflash.errors import ConversionError
from datalflash.format.dtypes import RAW_BITS_DTYPES, numpy_dtype_name, storage_dtype
from datalflash.format.images import EncodedImage, decoded_pixels, encoded, image_size, is_image, parse_encoding
from datalflash.format.manifest import FIELD_KINDS, FieldSpec, allocate, sample_nbytes
from datalflash.format.ragged import RaggedArray
from datalflash.format.structure import field_names, flatten, image_sizes, infer_structure

Signature = tuple[str, str, tuple[int, ...]]
"""``(kind, dtype name, shape)`` of one leaf value: kind ``array``, ``str``, ``bytes`` or ``image``
(shape: the encoded bytes, estimated for a decoded image), or ``empty``."""

PROBES = 32  # samples looked at (spread over the dataset) to tell fixed-shape fields from ragged ones


def leaf_signature(value: Any) -> Signature | None:
    """``(kind, dtype name, shape)`` of one leaf value, or None if the format cannot store it."""
    if is_image(value):  # (a decoded image's encoded size: estimated, a quarter of its pixels' bytes)
        nbytes = len(value.data) if isinstance(value, EncodedImage) else int(np.prod(image_size(value))) // 4
        return ("image", "uint8", (nbytes,))
    if isinstance(value, torch.Tensor):
        name = torch_dtype_name(value.dtype)
        return ("array", name, tuple(value.shape)) if _storable(name) else None
    if isinstance(value, np.ndarray) and value.dtype.kind == "O" and value.size == 0:
        return ("empty", "", tuple(value.shape))  # (an empty list, as Hugging Face formats it): fits any ragged field
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind not in "USO":
        numpy_name = numpy_dtype_name(value.dtype)
        return ("array", numpy_name, tuple(np.shape(value))) if numpy_name else None
    if isinstance(value, str):
        return ("str", "uint8", (len(value.encode("utf-8")),))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", "uint8", (memoryview(value).nbytes,))
    if isinstance(value, bool):
        return ("array", "bool", ())
    if isinstance(value, numbers.Integral):
        return ("array", "int64", ())
    if isinstance(value, numbers.Real):
        return ("array", "float64", ())
    if isinstance(value, numbers.Complex):
        return ("array", "complex128", ())
    return None


def leaf_values(value: Any, spec: FieldSpec) -> np.ndarray:
    """A leaf as its storage array (a str as its UTF-8 bytes, bytes as uint8)."""
    if spec.kind == "str":
        return np.frombuffer(value.encode("utf-8"), dtype=np.uint8)
    if spec.kind == "bytes":
        return np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
    if spec.kind == "image":
        return np.frombuffer(encoded(value, spec.encoding or "png"), dtype=np.uint8)
    if is_image(value):  # (an image field kept as decoded pixels)
        return decoded_pixels(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":  # an empty sample
        return np.zeros([0 if d is None else d for d in spec.shape], dtype=spec.storage_dtype)
    return as_storage(value, spec.dtype)


def _storable(name: str) -> bool:
    try:
        storage_dtype(name)
    except ValueError:
        return False
    return True


def infer_schema(
    samples: Sequence[tuple[int, Any]], declared: Mapping[str, Any] | None = None
) -> tuple[dict, dict[str, FieldSpec]]:
    """Structure spec and field specs from a few samples (the first one's structure): a field
    whose shape differs between them is ragged; ``declared`` (``{field: kind or {"kind",
    "dtype", "shape"}}``) overrides what they suggest."""
    index, first = samples[0]
    try:
        structure = infer_structure(first)
    except ValueError as e:
        raise ConversionError(f"sample {index}: {e}") from None
    declared = dict(declared or {})
    for image in image_sizes(structure):  # (an image kept as decoded pixels has no size field)
        if _kind_of(declared.get(image)) == "ragged":
            structure = _without_size(structure, image)
    names = field_names(structure)
    unknown = sorted(set(declared) - set(names))
    if unknown:
        raise ConversionError(f"fields= names {unknown}, but the samples' fields are {names}")
    seen: dict[str, list[Signature]] = {name: [] for name in names}
    files: dict[str, bool] = {}  # (whether a field's leaves are all image files: stored verbatim)
    for i, sample in samples:
        try:
            leaves = flatten(sample, structure)
        except ValueError as e:
            raise ConversionError(f"sample {i}: {e}") from None
        for name, leaf in zip(names, leaves):
            signature = leaf_signature(leaf)
            if signature is None:
                raise ConversionError(
                    f"sample {i} field {name!r}: unsupported type {_describe(leaf)}; "
                    "use tensors, numpy arrays, Python numbers, str or bytes"
                )
            seen[name].append(signature)
            files[name] = files.get(name, True) and isinstance(leaf, EncodedImage)
    fields = {name: _field_spec(name, seen[name], declared.get(name), samples, files[name]) for name in names}
    return structure, fields


def with_classes(structure: dict, fields: dict[str, FieldSpec], dataset: Any) -> tuple[dict, dict[str, FieldSpec]]:
    """``(structure, fields)``, the label field of ``(input, label)`` samples given the names of
    its classes when the dataset lists them (``dataset.classes``, as torchvision's datasets do)."""
    classes = getattr(dataset, "classes", None)
    items = structure.get("items") or []
    if not (
        isinstance(classes, (list, tuple))
        and classes
        and all(isinstance(c, str) for c in classes)
        and structure["kind"] == "tuple"
        and len(items) == 2
        and items[1]["kind"] == "field"
    ):
        return structure, fields
    label = fields[items[1]["name"]]
    if label.kind != "array" or label.shape != () or not label.dtype.startswith(("int", "uint")):
        return structure, fields
    return structure, {**fields, label.name: dataclasses.replace(label, classes=tuple(classes))}


def _kind_of(declared: Any) -> Any:
    return declared.get("kind") if isinstance(declared, Mapping) else declared


def _without_size(structure: dict, image: str) -> dict:
    """``structure`` with the image field ``image``'s node holding no size field."""
    if structure["kind"] == "field":
        return {"kind": "field", "name": image} if structure["name"] == image else structure
    items = structure["items"]
    if isinstance(items, list):
        return {**structure, "items": [_without_size(item, image) for item in items]}
    return {**structure, "items": {key: _without_size(item, image) for key, item in items.items()}}


def _field_spec(
    name: str, seen: list[Signature], declared: Any, samples: Sequence[tuple[int, Any]], files_only: bool = False
) -> FieldSpec:
    empty = any(k == "empty" for k, _, _ in seen)
    pairs = [(p, sig) for p, sig in zip(samples, seen) if sig[0] != "empty"]
    if not pairs:
        raise ConversionError(f"field {name!r}: every sample looked at is an empty list; its dtype is unknown")
    samples, seen = [p for p, _ in pairs], [sig for _, sig in pairs]
    kind, dtype, shape = seen[0]
    if isinstance(declared, str):
        declared = {"kind": declared}
    if declared is not None and not isinstance(declared, Mapping):
        raise ConversionError(f"fields[{name!r}] is {declared!r}: give a kind ({FIELD_KINDS}) or a dict with 'kind'")
    declared = dict(declared or {})
    want = declared.pop("kind", None)
    dtype = declared.pop("dtype", dtype)
    declared_shape = declared.pop("shape", None)
    encoding = declared.pop("encoding", "")
    if declared or (want is not None and want not in FIELD_KINDS):
        raise ConversionError(
            f"fields[{name!r}]: kind {want!r} or keys {sorted(declared)} not understood; kinds are {FIELD_KINDS}, "
            "keys 'kind', 'dtype', 'shape', 'encoding' (image fields)"
        )
    if kind == "image":
        return _image_spec(name, want, encoding or ("" if files_only else "png"), seen)
    if encoding or want == "image":
        raise ConversionError(f"field {name!r} holds {_signature_text(seen[0])}, not images; fields= declares an image")
    for (index, _), (k, d, sh) in zip(samples, seen):
        if k != kind or (kind == "array" and (d != seen[0][1] or len(sh) != len(shape))):
            raise ConversionError(
                f"sample {index} field {name!r}: got {_signature_text((k, d, sh))}, but sample {samples[0][0]} had "
                f"{_signature_text(seen[0])}; a field keeps one kind, dtype and number of dimensions"
            )
    typical = int(np.mean([np.prod(sh) for _, _, sh in seen]) * storage_dtype(dtype).itemsize)
    if kind in ("str", "bytes"):
        if want not in (None, kind):
            raise ConversionError(f"field {name!r} holds {kind} values; fields= declares it {want}")
        return FieldSpec(name, "uint8", (None,), kind, typical)
    if want in ("str", "bytes"):
        raise ConversionError(f"field {name!r} holds arrays ({dtype} {shape}); fields= declares it {want}")
    varying = [len({sh[d] for _, _, sh in seen}) > 1 for d in range(len(shape))]
    if empty and shape:
        varying[0] = True  # (empty samples: the first dimension varies)
    if want == "array" or (want is None and not any(varying)):
        return FieldSpec(name, dtype, shape)
    if declared_shape is not None:  # e.g. [3, None, None]: which dimensions vary
        if len(declared_shape) != len(shape) or None not in declared_shape:
            raise ConversionError(
                f"fields[{name!r}]: shape {declared_shape} must have the samples' {len(shape)} dimensions, "
                "None where they vary"
            )
        ragged_shape = tuple(None if d is None else int(d) for d in declared_shape)
    elif want == "ragged" and not any(varying):
        ragged_shape = (None,) * len(shape) if shape else ()
    else:
        ragged_shape = tuple(None if v else size for v, size in zip(varying, shape))
    if not ragged_shape:
        raise ConversionError(f"field {name!r} holds scalars; a ragged field's samples have at least one dimension")
    return FieldSpec(name, dtype, ragged_shape, "ragged", typical)


def _image_spec(name: str, want: Any, encoding: Any, seen: list[Signature]) -> FieldSpec:
    """The field of image leaves: encoded (kind ``image``) or, declared ``"ragged"``, decoded
    RGB pixels ``(height, width, 3)``."""
    typical = int(np.mean([sh[0] for _, _, sh in seen]))
    if want == "ragged":
        return FieldSpec(name, "uint8", (None, None, 3), "ragged", typical * 4)
    if want not in (None, "image"):
        raise ConversionError(f"field {name!r} holds images; fields= declares it {want} (use 'image' or 'ragged')")
    try:
        if encoding:
            parse_encoding(encoding, name)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    return FieldSpec(name, "uint8", (None,), "image", typical, encoding)


def _signature_text(signature: Signature) -> str:
    kind, dtype, shape = signature
    return f"{dtype} {shape}" if kind == "array" else kind


def _describe(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of dtype {dtype}" if dtype is not None else type(value).__name__


class ShapeVariesError(ConversionError):
    """A field taken for fixed-shape met a sample of another shape (the converter then converts
    again with the field ragged, unless ``fields=`` declared it fixed)."""

    @property
    def field(self) -> str | None:
        """The field whose shape varies."""
        match = re.search(r" field '([^']+)': got ", str(self))
        return match.group(1) if match else None


class WorkerTraceback(Exception):
    """Where a conversion failed in a DataLoader worker process: the traceback it printed (the
    exception object itself cannot cross processes)."""


def _from_worker(error: ConversionError) -> ConversionError:
    """The ConversionError a worker raised, without torch's "Caught ... in DataLoader worker"
    wrapping: its own message, the worker's traceback as its cause."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    last = text.strip().splitlines()[-1]  # "datalflash.errors.ConversionError: reading sample 7 failed: ..."
    kind = ShapeVariesError if last.startswith(f"{__name__}.ShapeVariesError") else ConversionError
    clean = kind(last.split(": ", 1)[1] if ": " in last else last)
    clean.__cause__ = WorkerTraceback(text.split("Original ", 1)[1])
    return clean


class IndexedDataset(Dataset):
    """Yields ``(index, sample)``, and turns a failing ``__getitem__`` into a ConversionError."""

    def __init__(self, dataset: Any):  # any map-style dataset: __len__ and __getitem__
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            return index, self.dataset[index]
        except Exception as e:
            raise ConversionError(f"reading sample {index} failed: {type(e).__name__}: {e}") from e

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[int, Any]]:
        """The samples at ``indices``: by the dataset's own ``__getitems__`` where it has one
        (a batched read), else one by one."""
        many = getattr(self.dataset, "__getitems__", None)
        if many is None:
            return [self[i] for i in indices]
        try:
            return list(zip(indices, many(list(indices))))
        except Exception as e:
            where = f"sample {indices[0]}" if len(indices) == 1 else f"samples {indices[0]}..{indices[-1]}"
            raise ConversionError(f"reading {where} failed: {type(e).__name__}: {e}") from e


class BlockCollator:
    """Collate ``[(index, sample), ...]`` into ``{field: storage array}``, checking each sample."""

    def __init__(self, structure: dict, fields: dict[str, FieldSpec]):
        self.structure = structure
        self.fields = fields
        # (numeric fields whose storage is the dtype itself: plain tensors and arrays take a short path)
        self._plain = [(name, spec, _plain_dtypes(spec)) for name, spec in fields.items()]

    def __call__(self, items: Sequence[tuple[int, Any]]) -> dict[str, Any]:
        arrays = allocate(self.fields, len(items))
        ragged: dict[str, list[np.ndarray]] = {name: [] for name, spec in self.fields.items() if spec.ragged}
        for row, (index, sample) in enumerate(items):
            try:
                leaves = flatten(sample, self.structure)
            except ValueError as e:
                raise ConversionError(f"sample {index}: {e}") from None
            for (name, spec, dtypes), leaf in zip(self._plain, leaves):
                values = None if dtypes is None else _plain_values(leaf, spec, *dtypes)
                if values is None:
                    self._check(index, spec, leaf_signature(leaf), leaf)
                    values = leaf_values(leaf, spec) if spec.ragged else as_storage(leaf, spec.dtype)
                if spec.ragged:
                    ragged[name].append(values)
                else:
                    arrays[name][row] = values
        for name, samples in ragged.items():
            spec = self.fields[name]
            arrays[name] = RaggedArray.from_samples(samples, len(spec.shape), spec.storage_dtype)
        return arrays

    @staticmethod
    def _check(index: int, spec: FieldSpec, signature: Signature | None, leaf: Any) -> None:
        """ConversionError unless the leaf of sample ``index`` fits field ``spec``."""
        if signature is None:
            found = _describe(leaf)
        else:
            kind, dtype, shape = signature
            if kind == "empty" and spec.kind == "ragged":
                return
            if kind == "image" and (spec.kind == "image" or (spec.kind == "ragged" and spec.dtype == "uint8")):
                return
            if spec.kind in ("str", "bytes", "image"):
                if kind == spec.kind:
                    return
            elif kind == "array" and dtype == spec.dtype and len(shape) == len(spec.shape):
                if _shape_fits(spec, shape):
                    return
                if not spec.ragged:
                    raise ShapeVariesError(
                        f"sample {index} field {spec.name!r}: got {dtype} {shape}, but the first sample had "
                        f"{spec.dtype} {spec.shape}; every sample must have the same dtype and shape "
                        "(declare the field ragged with fields= to store samples of varying shape)"
                    )
            found = f"{kind} {dtype} {shape}" if kind == "array" else kind
        expected = spec.kind if spec.kind in ("str", "bytes", "image") else f"{spec.dtype} of shape {list(spec.shape)}"
        raise ConversionError(
            f"sample {index} field {spec.name!r}: got {found}, but the field holds {expected} "
            "(None: a dimension that varies); every sample must have the same kind and dtype"
        )


def _plain_dtypes(spec: FieldSpec) -> tuple[torch.dtype, np.dtype] | None:
    """``(torch dtype, numpy dtype)`` of a numeric field stored as that same dtype (None: another
    kind of field, or a dtype kept as raw bits)."""
    if spec.kind not in ("array", "ragged") or spec.dtype in RAW_BITS_DTYPES:
        return None
    return getattr(torch, spec.dtype), spec.storage_dtype


def _plain_values(leaf: Any, spec: FieldSpec, tensor_dtype: torch.dtype, array_dtype: np.dtype) -> np.ndarray | None:
    """The storage array of a CPU tensor or numpy array of exactly the field's dtype and a shape
    it takes (the usual sample, checked in a few attribute reads); None: anything else, for the
    full check (:meth:`BlockCollator._check`) to accept or name."""
    if type(leaf) is torch.Tensor:
        if leaf.dtype != tensor_dtype or not leaf.is_cpu:
            return None
        values = leaf.detach().numpy() if leaf.requires_grad else leaf.numpy()
    elif type(leaf) is np.ndarray and leaf.dtype == array_dtype:
        values = leaf
    else:
        return None
    return values if len(values.shape) == len(spec.shape) and _shape_fits(spec, values.shape) else None


def _shape_fits(spec: FieldSpec, shape: tuple[int, ...]) -> bool:
    """Whether a sample of ``shape`` (as many dimensions as the field's) fits the field's shape
    (``None``: any size)."""
    if spec.kind == "ragged" and len(shape) == 1:  # (one varying dimension: any length fits)
        return True
    return all(f is None or f == d for f, d in zip(spec.shape, shape))


BLOCK_BYTES = 4 * 2**20
MAX_BLOCK = 1024


def block_size(dataset: Dataset, fields: dict[str, FieldSpec], chunk_size: int) -> int:
    """Samples per read block: a whole chunk for a TensorDataset (one vectorized gather), else
    blocks of <= ~4 MB and <= 1024 samples, small enough to spread over workers."""
    if isinstance(dataset, TensorDataset):
        return chunk_size
    return max(1, min(MAX_BLOCK, chunk_size, BLOCK_BYTES // max(1, sample_nbytes(fields))))


class BlockReader:
    """Reads blocks of samples into the caller's storage buffers.

    A TensorDataset is :attr:`vectorized`: any block can be read at any time, from any thread,
    with one ``index_select(out=...)`` per field, or viewed without a copy when its indices are an
    ascending run. Any other dataset is read through torch's DataLoader (``num_workers``
    processes, whose workers run :class:`BlockCollator`), so its blocks must be read in the order
    they were given.
    """

    def __init__(
        self,
        dataset: Dataset,
        blocks: Sequence[np.ndarray],
        structure: dict,
        fields: dict[str, FieldSpec],
        num_workers: int = 0,
    ):
        self.fields = fields
        self._tensors: list[torch.Tensor] | None = None
        self._stream: Iterator[dict[str, np.ndarray]] | None = None
        if isinstance(dataset, TensorDataset) and _tensor_dataset_matches(dataset, structure, fields):
            self._tensors = [t.cpu() for t in dataset.tensors]
        else:
            self._stream = iter(
                DataLoader(
                    IndexedDataset(dataset),
                    batch_sampler=[b.tolist() for b in blocks],
                    num_workers=num_workers,
                    collate_fn=BlockCollator(structure, fields),
                    prefetch_factor=2 if num_workers > 0 else None,
                )
            )

    def close(self) -> None:
        """Let go of the DataLoader reading the source: its workers stop now (the iterator's last
        reference), not whenever the garbage collector gets to it."""
        self._stream = None

    @property
    def vectorized(self) -> bool:
        """Whether blocks can be read in any order and from several threads."""
        return self._tensors is not None

    def view(self, block: np.ndarray) -> dict[str, np.ndarray] | None:
        """``block`` as read-only views of the source tensors, when it is an ascending run of
        indices of a vectorized source (an unshuffled conversion); else None."""
        tensors = self._tensors
        if (
            tensors is None
            or len(block) == 0
            or block[-1] - block[0] != len(block) - 1
            or not np.all(np.diff(block) == 1)
            or not all(t.is_contiguous() for t in tensors)
        ):
            return None
        start, stop = int(block[0]), int(block[-1]) + 1
        return {
            name: as_storage(tensor[start:stop], spec.dtype)
            for (name, spec), tensor in zip(self.fields.items(), tensors)
        }

    def pieces(self, blocks: Sequence[np.ndarray], rows: int) -> Iterator[dict[str, np.ndarray]]:
        """The samples of ``blocks``, in order, as pieces of at most ``rows`` samples: views of
        the source where indices ascend, else gathered into one small buffer that the next piece
        overwrites (use each piece before asking for the next). Vectorized sources only."""
        if not self.vectorized:
            raise TypeError("pieces() needs a vectorized source (a TensorDataset)")
        buffer = allocate(self.fields, rows)
        for block in blocks:
            for start in range(0, len(block), rows):
                piece = block[start : start + rows]
                view = self.view(piece)
                if view is None:
                    self.read(piece, buffer)
                    view = {name: values[: len(piece)] for name, values in buffer.items()}
                yield view

    def read(self, block: np.ndarray, out: dict[str, np.ndarray], offset: int = 0) -> int:
        """Read ``block`` into rows ``offset:`` of ``out``; returns the number of rows."""
        rows = len(block)
        if self._tensors is not None:
            index = torch.from_numpy(np.ascontiguousarray(block, dtype=np.int64))
            for (name, spec), tensor in zip(self.fields.items(), self._tensors):
                dest = from_storage(out[name][offset : offset + rows], spec.dtype)
                torch.index_select(tensor, 0, index, out=dest)
        elif self._stream is not None:
            clean = None
            try:
                arrays = next(self._stream)
            except ConversionError as e:
                clean = _from_worker(e)
                if clean is e:
                    raise
            if clean is not None:  # raised here, out of the except block: torch's wrapper (and the
                raise clean from clean.__cause__  # iterator its traceback holds) is not kept as context
            for name, values in arrays.items():
                out[name][offset : offset + rows] = values
        return rows


def _tensor_dataset_matches(dataset: TensorDataset, structure: dict, fields: dict[str, FieldSpec]) -> bool:
    specs = list(fields.values())
    return (
        structure["kind"] == "tuple"
        and all(item["kind"] == "field" for item in structure["items"])
        and len(specs) == len(dataset.tensors)
        and all(
            torch_dtype_name(t.dtype) == s.dtype and tuple(t.shape[1:]) == s.shape
            for t, s in zip(dataset.tensors, specs)
        )
    )
