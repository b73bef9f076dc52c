"""Raw ``.npy`` backend: ``<store>/<split>/<field>.npy`` per field; a chunk is a row range.

Files are plain ``.npy`` (``numpy.load(path, mmap_mode="r")`` reads them). Rows are read with
``os.preadv`` straight into the caller's buffer: no page-fault-per-page mmap path, no extra copy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from datalflash.errors import BackendError, StoreFormatError, StoreReadError
from datalflash.format.manifest import checksum_keys
from datalflash.store.base import ChunkStore, Fetched
from datalflash.store.files import preallocate
from datalflash.store.integrity import crc32c, open_regular, pread_into
from datalflash.store.rows import checked_pieces


def read_npy_header(fd: int, path: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, data offset)`` of the ``.npy`` file open as ``fd``."""
    with os.fdopen(os.dup(fd), "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read[version](f)
        except ValueError as e:
            raise StoreFormatError(f"{path}: not a valid .npy file: {e}") from None
        if fortran:
            raise StoreFormatError(f"{path}: Fortran-ordered .npy files are not supported")
        return dtype, shape, f.tell()


class MemmapChunkStore(ChunkStore):
    """One uncompressed ``.npy`` file per field and split; the CRC-32C of each chunk of each
    field is kept in the manifest (``checksums``) and checked on reading."""

    backend_id = "memmap"
    streams_writes = True

    @functools.cached_property
    def _ragged(self) -> dict[str, Any]:
        return {name: spec for name, spec in self.fields.items() if spec.ragged}

    @classmethod
    def normalize_config(cls, compression: Any = "default", **options: Any) -> dict:
        """``{}``: memmap stores take no options and are never compressed."""
        cls._unknown_options(options)
        if compression not in ("default", None, "none"):
            raise BackendError(f"memmap stores are uncompressed; got compression {compression!r}")
        return {}

    def has_checksums(self, split: str) -> bool:
        """Whether ``split``'s chunks carry checksums."""
        return split in self.manifest.checksums

    def field_path(self, split: str, field: str) -> str:
        """The ``.npy`` file of the array ``field`` (one of :attr:`arrays`) in ``split``."""
        return os.path.join(self.path, split, f"{field}.npy")

    def values_path(self, split: str, field: str, chunk: int) -> str:
        """The ``.npy`` file of the values of chunk ``chunk`` of the ragged ``field`` in ``split``."""
        return os.path.join(self.path, split, field, "values", f"{chunk}.npy")

    def _create_split(self, split: str) -> None:
        self._checksum_slots(split)
        os.mkdir(os.path.join(self.path, split))
        for name in self._ragged:
            os.makedirs(os.path.join(self.path, split, name, "values"))
        n = self.num_samples(split)
        for name, spec in self.arrays.items():
            header = {
                "descr": np.lib.format.dtype_to_descr(spec.storage_dtype),
                "fortran_order": False,
                "shape": (n, *spec.fixed_shape),
            }
            with open(self.field_path(split, name), "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                preallocate(f.fileno(), f.tell(), n * spec.sample_nbytes)
                f.truncate(f.tell() + n * spec.sample_nbytes)

    def _open_split(self, split: str) -> dict[str, tuple[int, int]]:
        """``{field: (fd, data offset)}``, headers checked against the manifest."""
        handles: dict[str, tuple[int, int]] = {}
        try:
            for name, spec in self.arrays.items():
                path = self.field_path(split, name)  # (named in errors; opened through the pinned root)
                fd = open_regular(
                    self.file(split, f"{name}.npy"), path, self.writable, f"split {split!r} field {name!r}"
                )
                handles[name] = (fd, 0)
                dtype, shape, offset = read_npy_header(fd, path)
                expected = (self.num_samples(split), *spec.fixed_shape)
                if dtype != spec.storage_dtype or shape != expected:
                    raise StoreFormatError(
                        f"{path}: holds {shape} {dtype}, manifest says {expected} {spec.storage_dtype}"
                    )
                needed = offset + expected[0] * spec.sample_nbytes
                size = os.fstat(fd).st_size
                if size < needed and not self.writable:
                    raise StoreFormatError(
                        f"{path}: file is truncated: {size} bytes, split {split!r} field {name!r} needs {needed}"
                    )
                handles[name] = (fd, offset)
        except BaseException:
            self._close(handles)
            raise
        return handles

    def will_need(self, split: str, chunks: Sequence[int]) -> None:
        """Ask the kernel to start reading the chunks' byte ranges now (``POSIX_FADV_WILLNEED``)."""
        handles = self._handle(split)
        for chunk in chunks:
            start, stop = self.chunk_bounds(split, chunk)
            for name, (fd, offset) in handles.items():
                nbytes = self.arrays[name].sample_nbytes
                os.posix_fadvise(fd, offset + start * nbytes, (stop - start) * nbytes, os.POSIX_FADV_WILLNEED)

    def _close(self, handle: dict[str, tuple[int, int]]) -> None:
        for fd, _ in handle.values():
            os.close(fd)

    def write_chunk_pieces(self, split: str, chunk: int, pieces: Iterable[Mapping[str, Any]]) -> None:
        """Write each piece of the chunk's rows at its place as it comes, checksumming as it goes
        (a piece is written while it is still in the CPU's cache); a ragged field's values are
        gathered and written at the end."""
        start, stop = self._writable_chunk(split, chunk)
        sums = dict.fromkeys(checksum_keys(self.fields), 0)
        values: dict[str, list[np.ndarray]] = {name: [] for name in self._ragged}
        for offset, arrays in checked_pieces(self.fields, split, chunk, stop - start, pieces):
            for name, data in arrays.items():
                if name in values:
                    values[name].append(data.values.copy())  # (the piece may be overwritten next)
                    data, name = data.shapes, self.fields[name].shapes_array.name
                sums[name] = crc32c(data, sums[name])
                self._write_rows(split, name, start + offset, data)
        for name, parts in values.items():
            flat = np.concatenate(parts) if parts else np.empty(0, self.fields[name].storage_dtype)
            sums[f"{name}/values"] = crc32c(flat)
            self._write_values(split, name, chunk, flat)
        slots = self._checksum_slots(split)
        for name, crc in sums.items():
            slots[name][chunk] = crc

    def write_chunk(self, split: str, chunk: int, arrays: Mapping[str, Any]) -> None:
        """Write one whole chunk: ``arrays[field]`` holds its rows in storage dtype."""
        self.write_chunk_pieces(split, chunk, [arrays])

    def _write_values(self, split: str, field: str, chunk: int, values: np.ndarray) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(values.dtype), "fortran_order": False, "shape": values.shape}
        with open(self.values_path(split, field, chunk), "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(values.data)

    def _read_values(self, split: str, field: str, chunk: int, out: np.ndarray, fetched: Fetched | None) -> None:
        path = self.values_path(split, field, chunk)
        where = f"split {split!r} field {field!r} chunk {chunk}"
        fd = open_regular(self.file(split, field, "values", f"{chunk}.npy"), path, False, where)
        try:
            dtype, shape, offset = read_npy_header(fd, path)
            if dtype != out.dtype or shape != out.shape:
                raise StoreFormatError(
                    f"{path}: {where} holds values {shape} {dtype}; its shape table needs {out.shape} {out.dtype}"
                )
            got = pread_into(fd, out, offset)
            if got < out.nbytes:
                raise StoreReadError(f"{path}: file ends at byte {offset + got}; {where} is truncated")
        finally:
            os.close(fd)
        sums = self.manifest.checksums.get(split)
        if sums is not None and self.checksums.due(split, chunk):
            self.compare_checksums(split, f"{field}/values", chunk, sums[f"{field}/values"][chunk], crc32c(out), path)

    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        fd, offset = self._handle(split)[field]
        view = data.reshape(-1).view(np.uint8).data
        position = offset + start * self.arrays[field].sample_nbytes
        while len(view):
            written = os.pwrite(fd, view, position)
            view, position = view[written:], position + written

    def _read_rows(
        self, split: str, field: str, start: int, stop: int, out: np.ndarray, fetched: Fetched | None
    ) -> None:
        fd, offset = self._handle(split)[field]
        position = offset + start * self.arrays[field].sample_nbytes
        got = pread_into(fd, out, position)
        if got < out.nbytes:
            raise StoreReadError(
                f"{self.field_path(split, field)}: file ends at byte {position + got}; "
                f"rows {start}..{stop - 1} of split {split!r} field {field!r} are missing (truncated file)"
            )
        sums = self.manifest.checksums.get(split)
        if sums is None:  # a store written before checksums
            return
        for chunk in self.manifest.chunks_of_rows(start, stop):
            if self.checksums.due(split, chunk):
                a, b = self.chunk_bounds(split, chunk)
                actual = crc32c(out[a - start : b - start])
                self.compare_checksums(split, field, chunk, sums[field][chunk], actual, self.field_path(split, field))
