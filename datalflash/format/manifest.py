"""The JSON manifest of a store (format v1): read, validate, write. Nothing is ever unpickled.

See ``formats/SPEC.md`` for the specification and ``formats/manifest.schema.json`` for the schema.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datalflash.arguments import is_int
from datalflash.errors import StoreFormatError
from datalflash.format.dtypes import SUPPORTED_DTYPES, storage_dtype
from datalflash.format.images import parse_encoding
from datalflash.format.ragged import RaggedBuffer
from datalflash.format.structure import image_sizes, is_valid_field_name, validate_structure

FORMAT_NAME = "datalflash-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_NDIM = 32
MAX_DIM = 2**31
MAX_SAMPLES = 2**40
MAX_CHUNKS = 2**24  # per split: an epoch plan costs a few bytes per chunk
MAX_FIELDS = 4096
CHECKSUM_ALGORITHM = "crc32c"
GENERATION = re.compile(r"(|[0-9a-f]{8,64})")


FIELD_KINDS = ("array", "ragged", "bytes", "str", "image")
"""``array``: one shape for every sample; ``ragged``: the shape varies (``None`` dimensions);
``bytes`` / ``str``: byte strings / text (UTF-8), stored as ragged uint8; ``image``: encoded
images (JPEG, PNG, ...), stored as ``bytes`` are, their sizes in a field of their own."""
BYTE_KINDS = ("bytes", "str", "image")
"""Kinds stored as ragged uint8 of shape ``[None]``."""


@dataclass(frozen=True)
class FieldSpec:
    """One field: its kind, torch dtype name and per-sample shape (``None`` where a ragged
    field's samples differ); ``typical_nbytes`` estimates a ragged sample's bytes (for sizing)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    kind: str = "array"
    typical_nbytes: int = 0
    encoding: str = ""  # image fields: how decoded images were encoded ("png", "jpeg:<quality>")
    classes: tuple[str, ...] = ()  # integer class ids: the name of each (from the source's ``classes``)

    @property
    def ragged(self) -> bool:
        """Whether samples differ in shape (ragged, bytes and str fields)."""
        return self.kind != "array"

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype of the stored bytes (of each element, for a ragged field)."""
        return storage_dtype(self.dtype)

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """The per-sample shape of a fixed-shape field."""
        if self.ragged:
            raise TypeError(f"field {self.name!r} is {self.kind}: its samples have no one shape")
        return tuple(d for d in self.shape if d is not None)

    @property
    def shapes_array(self) -> FieldSpec:
        """The stored table of a ragged field's sample shapes, as a fixed-shape int64 array."""
        return FieldSpec(f"{self.name}/shapes", "int64", (len(self.shape),))

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample of this field (an estimate, for a ragged field)."""
        if self.ragged:
            return 8 * len(self.shape) + max(self.typical_nbytes, self.storage_dtype.itemsize)
        return math.prod(self.fixed_shape) * self.storage_dtype.itemsize

    def to_json(self) -> dict:
        """The field as written in the manifest."""
        doc: dict[str, Any] = {"dtype": self.dtype, "storage_dtype": self.storage_dtype.str, "shape": list(self.shape)}
        if self.ragged:
            doc.update(kind=self.kind, typical_nbytes=self.typical_nbytes)
        if self.encoding:
            doc.update(encoding=self.encoding)
        if self.classes:
            doc.update(classes=list(self.classes))
        return doc


def physical_arrays(fields: Mapping[str, FieldSpec]) -> dict[str, FieldSpec]:
    """The fixed-shape arrays a backend stores for ``fields``: each fixed field, and the shape
    table (``"<field>/shapes"``) of each ragged one (whose values are stored chunk by chunk)."""
    tables = [spec.shapes_array if spec.ragged else spec for spec in fields.values()]
    return {table.name: table for table in tables}


def checksum_keys(fields: Mapping[str, FieldSpec]) -> list[str]:
    """What a store keeps one checksum per chunk of: each physical array, and the values
    (``"<field>/values"``) of each ragged field."""
    return [*physical_arrays(fields), *(f"{n}/values" for n, s in fields.items() if s.ragged)]


def sample_nbytes(fields: Mapping[str, FieldSpec]) -> int:
    """Bytes of one sample of all ``fields`` together (an estimate where fields are ragged)."""
    return sum(spec.sample_nbytes for spec in fields.values())


def allocate(fields: Mapping[str, FieldSpec], rows: int) -> dict[str, Any]:
    """Empty storage for ``rows`` samples of each of ``fields``: an array for a fixed-shape
    field, a :class:`~datalflash.format.ragged.RaggedBuffer` for a ragged one."""
    return {
        name: RaggedBuffer(rows, len(f.shape), f.storage_dtype)
        if f.ragged
        else np.empty((rows, *f.fixed_shape), dtype=f.storage_dtype)
        for name, f in fields.items()
    }


@dataclass(frozen=True)
class SplitInfo:
    """One split: how many samples, and in how many chunks."""

    num_samples: int
    num_chunks: int


@dataclass(frozen=True)
class Manifest:
    """A store's manifest: what it holds and how it is laid out."""

    backend_id: str
    backend_config: dict
    chunk_size: int
    fields: dict[str, FieldSpec]
    structure: dict
    splits: dict[str, SplitInfo]
    created: dict = field(default_factory=dict)
    checksums: dict = field(default_factory=dict)  # {split: {field: [crc32c of each chunk]}} (memmap)
    generation: str = ""  # a new id for every store written ("": a store written before generations)

    def to_json(self) -> dict:
        """The manifest document, ready for ``json.dump``."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "backend": {"id": self.backend_id, "config": self.backend_config},
            "chunk_size": self.chunk_size,
            "fields": {name: spec.to_json() for name, spec in self.fields.items()},
            "structure": self.structure,
            "splits": {
                name: {"num_samples": s.num_samples, "num_chunks": s.num_chunks} for name, s in self.splits.items()
            },
            "created": self.created,
            **({"checksums": {"algorithm": CHECKSUM_ALGORITHM, "splits": self.checksums}} if self.checksums else {}),
            **({"generation": self.generation} if self.generation else {}),
        }

    @functools.cached_property
    def arrays(self) -> dict[str, FieldSpec]:
        """The fixed-shape arrays stored for the fields (see :func:`physical_arrays`)."""
        return physical_arrays(self.fields)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample, all fields together (an estimate where fields are ragged)."""
        return sample_nbytes(self.fields)

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one full chunk, all fields together."""
        return self.chunk_size * self.sample_nbytes

    def chunks_of_rows(self, start: int, stop: int) -> range:
        """The chunks holding rows ``start:stop`` (``stop > start``) of a split."""
        return range(start // self.chunk_size, (stop - 1) // self.chunk_size + 1)

    def chunk_bounds(self, split: str, chunk: int) -> tuple[int, int]:
        """``(start, stop)`` sample rows of ``chunk`` in ``split``."""
        info = self.splits[split]
        if not 0 <= chunk < info.num_chunks:
            raise IndexError(f"chunk {chunk} out of range for split {split!r} ({info.num_chunks} chunks)")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, info.num_samples)


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``manifest.json`` into ``directory`` (durably: written, fsynced, renamed)."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and validate the manifest of the store at ``directory``."""
    path = Path(directory) / MANIFEST_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreFormatError(f"{path}: not a regular file; refusing to read it")
            raw = os.pread(fd, MAX_MANIFEST_BYTES + 1, 0)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise StoreFormatError(not_a_store(directory)) from None
    except OSError as e:
        raise StoreFormatError(f"{path}: cannot read manifest: {e}") from e
    return manifest_from_bytes(raw, path)


def not_a_store(directory: str | os.PathLike) -> str:
    """Why there is no store at ``directory``: it does not exist, or it has no manifest."""
    if not os.path.lexists(directory):
        return f"{directory}: does not exist"
    return f"{directory}: not a datalflash store (no {MANIFEST_NAME})"


def manifest_from_bytes(raw: bytes, path: Any) -> Manifest:
    """Decode and validate the bytes of a manifest read from ``path`` (named in errors)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise StoreFormatError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StoreFormatError(f"{path}: manifest is not valid JSON: {e}") from None
    try:
        return parse_manifest(doc)
    except StoreFormatError as e:
        raise StoreFormatError(f"{path}: {e}") from None


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise StoreFormatError(message)


def parse_manifest(doc: Any) -> Manifest:
    """Validate a decoded manifest document and build a :class:`Manifest`."""
    _require(isinstance(doc, dict), "manifest is not a JSON object")
    _require(doc.get("format") == FORMAT_NAME, f"'format' is not {FORMAT_NAME!r}")
    version = doc.get("format_version")
    _require(is_int(version), "'format_version' is not an integer")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"format_version {version} is newer than this datalflash reads ({FORMAT_VERSION}); "
            "upgrade datalflash to read this store"
        )
    _require(version >= 1, f"format_version {version} is not valid")

    backend = doc.get("backend")
    _require(isinstance(backend, dict), "'backend' is not an object")
    _require(isinstance(backend.get("id"), str), "'backend.id' is not a string")
    _require(isinstance(backend.get("config", {}), dict), "'backend.config' is not an object")

    chunk_size = doc.get("chunk_size")
    _require(is_int(chunk_size) and 1 <= chunk_size <= MAX_SAMPLES, "'chunk_size' is not a positive integer")

    fields = _parse_fields(doc.get("fields"))
    structure = doc.get("structure")
    validate_structure(structure, fields)
    _check_image_sizes(structure, fields)
    splits = _parse_splits(doc.get("splits"), chunk_size)
    created = doc.get("created", {})
    _require(isinstance(created, dict), "'created' is not an object")
    checksums = _parse_checksums(doc.get("checksums"), splits, fields)
    generation = doc.get("generation", "")
    _require(
        isinstance(generation, str) and GENERATION.fullmatch(generation) is not None,
        "'generation' is not 8 to 64 lowercase hexadecimal digits",
    )
    return Manifest(
        backend_id=backend["id"],
        backend_config=dict(backend.get("config", {})),
        chunk_size=chunk_size,
        fields=fields,
        structure=structure,
        splits=splits,
        created=created,
        checksums=checksums,
        generation=generation,
    )


def _parse_checksums(raw: Any, splits: Mapping[str, SplitInfo], fields: Mapping[str, FieldSpec]) -> dict:
    """``{split: {field: [checksum per chunk]}}`` from the optional ``checksums`` key."""
    if raw is None:
        return {}
    _require(isinstance(raw, dict), "'checksums' is not an object")
    _require(raw.get("algorithm") == CHECKSUM_ALGORITHM, f"checksums: algorithm is not {CHECKSUM_ALGORITHM!r}")
    per_split = raw.get("splits")
    _require(isinstance(per_split, dict), "'checksums.splits' is not an object")
    out = {}
    for split, per_field in per_split.items():
        _require(split in splits, f"checksums for unknown split {split!r}")
        _require(
            isinstance(per_field, dict) and set(per_field) == set(checksum_keys(fields)),
            f"checksums of split {split!r} do not list every field",
        )
        for name, values in per_field.items():
            _require(
                isinstance(values, list)
                and len(values) == splits[split].num_chunks
                and all(is_int(v) and 0 <= v < 2**32 for v in values),
                f"checksums of split {split!r} field {name!r}: need one 32-bit integer per chunk",
            )
        out[split] = {name: list(values) for name, values in per_field.items()}
    return out


def _parse_fields(raw: Any) -> dict[str, FieldSpec]:
    _require(isinstance(raw, dict) and 0 < len(raw) <= MAX_FIELDS, "'fields' is not a non-empty object")
    fields = {}
    for name, spec in raw.items():
        _require(is_valid_field_name(name), f"field name {name!r} is not allowed")
        _require(isinstance(spec, dict), f"field {name!r} is not an object")
        dtype = spec.get("dtype")
        _require(
            isinstance(dtype, str) and dtype in SUPPORTED_DTYPES, f"field {name!r}: dtype {dtype!r} is not supported"
        )
        stored = spec.get("storage_dtype")
        if stored is not None:
            _require(
                stored == storage_dtype(dtype).str,
                f"field {name!r}: storage_dtype {stored!r} does not match dtype {dtype!r}",
            )
        kind = spec.get("kind", "array")
        _require(kind in FIELD_KINDS, f"field {name!r}: kind {kind!r} is not one of {list(FIELD_KINDS)}")
        shape = spec.get("shape")
        _require(
            isinstance(shape, list)
            and len(shape) <= MAX_NDIM
            and all((is_int(d) and 0 <= d < MAX_DIM) or (d is None and kind != "array") for d in shape),
            f"field {name!r}: shape {shape!r} is not a list of non-negative integers"
            + (" and nulls" if kind != "array" else ""),
        )
        _require(math.prod(d or 1 for d in shape) < MAX_DIM, f"field {name!r}: shape {shape} is too large")
        if kind != "array":
            _require(None in shape, f"field {name!r}: a {kind} field's shape has a null (varying) dimension")
        if kind in BYTE_KINDS:
            _require(dtype == "uint8" and shape == [None], f"field {name!r}: a {kind} field is uint8 of shape [null]")
        typical = spec.get("typical_nbytes", 0)
        _require(is_int(typical) and 0 <= typical < MAX_DIM, f"field {name!r}: bad typical_nbytes {typical!r}")
        encoding = spec.get("encoding", "")
        _require(
            encoding == "" or (kind == "image" and isinstance(encoding, str) and _known_encoding(encoding)),
            f"field {name!r}: bad image encoding {encoding!r}",
        )
        classes = spec.get("classes", [])
        _require(
            isinstance(classes, list) and len(classes) <= MAX_DIM and all(isinstance(c, str) for c in classes),
            f"field {name!r}: 'classes' is not a list of names",
        )
        fields[name] = FieldSpec(
            name, dtype, tuple(shape), kind, typical if kind != "array" else 0, encoding, tuple(classes)
        )
    return fields


def _known_encoding(encoding: str) -> bool:
    try:
        parse_encoding(encoding)
    except ValueError:
        return False
    return True


def _check_image_sizes(structure: dict, fields: Mapping[str, FieldSpec]) -> None:
    """Each image field has a size field (int32 ``[3]``) named by the structure, and only they."""
    sizes = image_sizes(structure)
    images = sorted(name for name, spec in fields.items() if spec.kind == "image")
    _require(sorted(sizes) == images, f"structure gives sizes of fields {sorted(sizes)}; image fields are {images}")
    for image, size in sizes.items():
        spec = fields[size]
        _require(
            spec.kind == "array" and spec.dtype == "int32" and spec.shape == (3,),
            f"field {size!r} (the sizes of image field {image!r}) is not int32 of shape [3]",
        )


def _parse_splits(raw: Any, chunk_size: int) -> dict[str, SplitInfo]:
    _require(isinstance(raw, dict) and len(raw) > 0, "'splits' is not a non-empty object")
    splits = {}
    for name, spec in raw.items():
        _require(is_valid_field_name(name), f"split name {name!r} is not allowed")
        _require(isinstance(spec, Mapping), f"split {name!r} is not an object")
        n, c = spec.get("num_samples"), spec.get("num_chunks")
        _require(is_int(n) and 0 <= n <= MAX_SAMPLES, f"split {name!r}: bad num_samples {n!r}")
        _require(
            is_int(c) and c == -(-n // chunk_size),
            f"split {name!r}: num_chunks {c!r} does not match {n} samples in chunks of {chunk_size}",
        )
        _require(c <= MAX_CHUNKS, f"split {name!r}: {c} chunks, more than the {MAX_CHUNKS} a split may have")
        splits[name] = SplitInfo(n, c)
    return splits
