"""Zarr v3 backend (the default): ``<store>/<split>.zarr`` is a Zarr group, one array per field,
chunked ``chunk_size`` samples along axis 0 (a smaller split is one chunk of its own size),
Blosc-compressed (lz4 by default), each chunk ending in its CRC-32C (Zarr's ``crc32c`` codec)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.storage import LocalStore

from datalflash.errors import BackendError, StoreFormatError
from datalflash.format.manifest import FieldSpec
from datalflash.store.base import ChunkStore, Fetched
from datalflash.store.rows import checked_pieces
from datalflash.store.zarr.chunks import DirectChunkIO, GatheredChunk, StreamedChunk, blosc_codec, direct_io

COMPRESSIONS = ("lz4", "zstd", "none")
ALLOWED_CODECS = frozenset({"bytes", "blosc", "crc32c", "zstd", "gzip", "transpose"})


def check_codecs(array: zarr.Array, where: str) -> None:
    """Refuse an array whose metadata names a codec outside :data:`ALLOWED_CODECS` (a store
    from elsewhere must not make us run, e.g., numcodecs' pickle codec)."""
    raw = array.metadata.to_dict().get("codecs")
    codecs = raw if isinstance(raw, (list, tuple)) else []
    names = [
        c.get("name") if isinstance(c, dict) else getattr(c, "codec_name", None) or type(c).__name__ for c in codecs
    ]
    bad = [n for n in names if n not in ALLOWED_CODECS]
    if bad:
        raise StoreFormatError(f"{where}: codecs {bad} are not allowed (allowed: {sorted(ALLOWED_CODECS)})")


SHUFFLES = ("shuffle", "bitshuffle", "noshuffle")


GROUP_DOCUMENT = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def _write_node(path: Path, document: dict) -> None:
    """Write the ``zarr.json`` of a new group or array at ``path`` (a new directory)."""
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps(document, indent=2), encoding="utf-8")


def fill_value(dtype: np.dtype) -> Any:
    """Zero as a Zarr v3 ``fill_value`` of ``dtype`` (complex numbers are ``[real, imaginary]``)."""
    return [0.0, 0.0] if dtype.kind == "c" else np.zeros((), dtype).item()


FieldHandle = tuple["zarr.Array | None", "DirectChunkIO | None"]
"""How one field of an open split is read: direct chunk I/O, or (for layouts we do not write) zarr."""


class ZarrChunkStore(ChunkStore):
    """Zarr v3 arrays, readable with plain ``zarr.open_group(store / f"{split}.zarr")``."""

    backend_id = "zarr"
    streams_writes = True

    @classmethod
    def normalize_config(cls, compression: Any = "default", **options: Any) -> dict:
        """``{"compression": "lz4"|"zstd"|"none", "clevel": 0..9, "shuffle": ...}``."""
        clevel, shuffle = options.pop("clevel", 5), options.pop("shuffle", "shuffle")
        cls._unknown_options(options)
        if compression in ("default", None):
            compression = "lz4" if compression == "default" else "none"
        if compression not in COMPRESSIONS:
            raise BackendError(f"zarr compression {compression!r} not in {COMPRESSIONS}")
        if not (isinstance(clevel, int) and 0 <= clevel <= 9):
            raise BackendError(f"zarr clevel {clevel!r} is not an integer in 0..9")
        if shuffle not in SHUFFLES:
            raise BackendError(f"zarr shuffle {shuffle!r} not in {SHUFFLES}")
        return {"compression": compression, "clevel": clevel, "shuffle": shuffle}

    def has_checksums(self, split: str) -> bool:
        """Whether ``split``'s chunks carry checksums."""
        return all(
            direct.checksum if direct is not None else any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs)
            for array, direct in self._handle(split).values()
        )

    def split_path(self, split: str) -> str:
        """The Zarr group of ``split``."""
        return os.path.join(self.path, f"{split}.zarr")

    def _create_split(self, split: str) -> None:
        """Write the group and array metadata documents of ``split`` directly (zarr's store
        machinery costs ~7 ms a split; a test checks the documents equal what zarr writes)."""
        root = Path(self.split_path(split))
        _write_node(root, GROUP_DOCUMENT)
        for name, spec in self.fields.items():
            if spec.ragged:  # a group: the shape table, and a group of each chunk's values
                attributes = {"datalflash_dtype": spec.dtype, "datalflash_kind": spec.kind}
                _write_node(root / name, {**GROUP_DOCUMENT, "attributes": attributes})
                _write_node(root / name / "values", GROUP_DOCUMENT)
        handles: dict[str, FieldHandle] = {}
        for name, spec in self.arrays.items():
            _write_node(root / name, self._array_document(spec, self.num_samples(split), self._chunk_rows(split)))
            if 0 in spec.fixed_shape:  # samples of no bytes: zarr writes (nothing) itself
                handles[name] = (zarr.open_array(root / name, mode="r+"), None)
                continue
            chunk_dir, inside, shown = self._chunk_dir(split, name)
            chunk_shape = (self._chunk_rows(split), *spec.fixed_shape)
            handles[name] = (None, DirectChunkIO(chunk_dir, chunk_shape, "/", self._blosc(), True, inside, shown))
        self._handles[split] = handles

    def _blosc(self) -> numcodecs.Blosc | None:
        """The Blosc codec the config asks for (None: uncompressed)."""
        config = self.manifest.backend_config
        if config["compression"] == "none":
            return None
        return blosc_codec(config["compression"], config["clevel"], config["shuffle"])

    def _array_document(self, spec: FieldSpec, rows: int, chunk_rows: int) -> dict:
        """The Zarr v3 metadata document (``zarr.json``) of an array of ``rows`` samples of
        ``spec`` (a fixed-shape array), in chunks of ``chunk_rows``."""
        config = self.manifest.backend_config
        dtype = spec.storage_dtype
        codecs: list[dict] = [
            {"name": "bytes"} if dtype.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}
        ]
        if config["compression"] != "none":
            codecs.append(
                {
                    "name": "blosc",
                    "configuration": {
                        "typesize": dtype.itemsize,
                        "cname": config["compression"],
                        "clevel": config["clevel"],
                        "shuffle": config["shuffle"],
                        "blocksize": 0,
                    },
                }
            )
        codecs.append({"name": "crc32c"})
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [rows, *spec.fixed_shape],
            "data_type": dtype.name,
            "chunk_grid": {
                "name": "regular",
                "configuration": {
                    "chunk_shape": [max(chunk_rows, 1), *(max(d, 1) for d in spec.fixed_shape)],
                },
            },
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill_value(dtype),
            "codecs": codecs,
            "attributes": {"datalflash_dtype": spec.dtype},
            "storage_transformers": [],
        }

    def _chunk_rows(self, split: str) -> int:
        """Zarr chunk length along axis 0: ``chunk_size``, or the split's size when it is smaller
        (no padding to store for a split that is one short chunk)."""
        return max(1, min(self.chunk_size, self.num_samples(split)))

    def _chunk_dir(self, split: str, field: str) -> tuple[Path, Path | None, Path]:
        """Where ``field``'s chunk files of ``split`` are opened, the root they must resolve
        inside, and where messages say they are."""
        shown = Path(self.split_path(split)) / field
        return Path(self.file(f"{split}.zarr", field)), Path(self.root()), shown

    def _direct(self, split: str, field: str, meta: Any) -> DirectChunkIO | None:
        spec = self.arrays[field]
        path, root, shown = self._chunk_dir(split, field)
        # Stores written before small splits got short chunks hold chunk_size rows there.
        for rows in {self._chunk_rows(split), self.chunk_size}:
            direct = direct_io(meta, path, (rows, *spec.fixed_shape), root=root, shown=shown)
            if direct is not None:
                return direct
        return None

    def _open_group(self, split: str) -> zarr.Group:
        """The Zarr group of ``split``, opened for this process (its metadata documents checked to
        be regular files first: zarr would block on a FIFO)."""
        path = self.file(f"{split}.zarr")
        for document in ["zarr.json", *(f"{name}/zarr.json" for name in self.arrays)]:
            try:
                mode = os.stat(os.path.join(path, document)).st_mode
            except OSError:
                continue  # missing or unreadable: zarr says so
            if not stat.S_ISREG(mode):
                shown = os.path.join(self.split_path(split), document)
                raise StoreFormatError(f"{shown}: not a regular file; refusing to read it")
        try:
            store = LocalStore(path, read_only=not self.writable)
            return zarr.open_group(store, mode="r+" if self.writable else "r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise StoreFormatError(f"{path}: split {split!r} is missing or not a Zarr v3 group: {e}") from None

    def _has_metadata(self, split: str, field: str) -> bool:
        """Whether ``field``'s array metadata document exists in ``split`` (usable or not)."""
        return os.path.isfile(os.path.join(self.root(), f"{split}.zarr", field, "zarr.json"))

    def _open_split(self, split: str) -> dict[str, FieldHandle]:
        """``{field: (zarr array, direct chunk I/O or None)}``, each array checked against the
        manifest and the codec allow-list."""
        group, path = self._open_group(split), self.split_path(split)
        handles: dict[str, FieldHandle] = {}
        for name in self.arrays:
            try:
                array = group[name]
            except KeyError:  # missing; or (zarr < 3.1) present with metadata zarr cannot parse
                if self._has_metadata(split, name):
                    raise StoreFormatError(
                        f"{path}/{name}: split {split!r} field {name!r}: unusable Zarr metadata (zarr cannot open it)"
                    ) from None
                raise StoreFormatError(f"{path}: split {split!r} has no array for field {name!r}") from None
            except Exception as e:  # metadata zarr cannot parse (e.g. an unknown codec)
                raise StoreFormatError(
                    f"{path}/{name}: split {split!r} field {name!r}: unusable Zarr metadata: {e}"
                ) from None
            if not isinstance(array, zarr.Array):
                raise StoreFormatError(f"{path}/{name}: split {split!r} field {name!r} is a Zarr group, not an array")
            direct = self._direct(split, name, array.metadata)
            check_codecs(array, f"{path}/{name}")
            self.ensure_matches_manifest(split, name, array.shape, array.dtype, f"{path}/{name}")
            handles[name] = (array, direct)
        return handles

    def _close(self, handle: Any) -> None:
        pass  # zarr arrays and DirectChunkIO hold no open files

    def write_chunk_pieces(self, split: str, chunk: int, pieces: Iterable[Mapping[str, np.ndarray]]) -> None:
        """Write the chunk's rows as they come: a field's chunk file is streamed when it is
        stored as is (no compression, or a large chunk the codec cannot shrink), else its rows
        are gathered and compressed at the end (see :meth:`DirectChunkIO.start`)."""
        start, stop = self._writable_chunk(split, chunk)
        handles = self._handle(split)
        if any(direct is None for _, direct in handles.values()) or any(f.ragged for f in self.fields.values()):
            return super().write_chunk_pieces(split, chunk, pieces)  # (ragged fields: gathered)
        writers: dict[str, StreamedChunk | GatheredChunk] = {}
        try:
            for _, arrays in checked_pieces(self.fields, split, chunk, stop - start, pieces):
                for name, rows in arrays.items():
                    if name not in writers:
                        writers[name] = handles[name][1].start(chunk, stop - start, rows)
                    writers[name].add(rows)
            slots = self._checksum_slots(split)
            for name, writer in writers.items():
                crc = writer.finish()
                if crc is not None:
                    slots[name][chunk] = crc
        finally:
            for writer in writers.values():
                writer.close()

    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        array, direct = self._handle(split)[field]
        if direct is not None:
            crc = direct.write(start // self.chunk_size, data)
            if crc is not None:
                self._checksum_slots(split)[field][start // self.chunk_size] = crc
        elif array is not None:
            array[start : start + len(data)] = data

    def _read_rows(
        self, split: str, field: str, start: int, stop: int, out: np.ndarray, fetched: Fetched | None
    ) -> None:
        array, direct = self._handle(split)[field]
        if direct is None:  # a layout we do not write: zarr reads it (and checks a crc32c codec)
            if array is not None:
                out[...] = array[start:stop]
            return
        for row in range(start, stop, self.chunk_size):
            rows, chunk = min(self.chunk_size, stop - row), row // self.chunk_size
            self._read_chunk(split, field, direct, chunk, out[row - start : row - start + rows], fetched, field)

    def _values_io(self, split: str, field: str, chunk: int, count: int) -> DirectChunkIO:
        """Direct I/O of the values array of chunk ``chunk`` of the ragged ``field`` (``count`` values)."""
        path, root, shown = self._chunk_dir(split, f"{field}/values/{chunk}")
        return DirectChunkIO(path, (max(count, 1),), "/", self._blosc(), True, root, shown)

    def _write_values(self, split: str, field: str, chunk: int, values: np.ndarray) -> None:
        spec = self.fields[field]
        element = FieldSpec(f"{field}/values/{chunk}", spec.dtype, ())
        node = Path(self.split_path(split)) / field / "values" / str(chunk)
        node.mkdir(exist_ok=True)  # (a chunk written again replaces its values)
        document = self._array_document(element, len(values), len(values))
        (node / "zarr.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
        if len(values):
            crc = self._values_io(split, field, chunk, len(values)).write(0, values)
            if crc is not None:
                self._checksum_slots(split)[f"{field}/values"][chunk] = crc

    def _read_values(self, split: str, field: str, chunk: int, out: np.ndarray, fetched: Fetched | None) -> None:
        if len(out):
            io = self._values_io(split, field, chunk, len(out))
            self._read_chunk(split, field, io, chunk, out, fetched, f"{field}/values", 0)

    def _read_chunk(
        self,
        split: str,
        field: str,
        direct: DirectChunkIO,
        chunk: int,
        out: np.ndarray,
        fetched: Fetched | None,
        key: str,
        index: int | None = None,
    ) -> None:
        """Decode chunk ``chunk`` of ``field`` (the array's chunk ``index``, by default the
        same) into ``out``, checking its CRC when due and that it is the chunk the manifest
        records under ``key`` (an array, or ``"<field>/values"``)."""
        recorded = self._recorded_checksum(split, key, chunk)
        direct.read(chunk if index is None else index, out, self.checksums.due(split, chunk), recorded)
