"""HDF5 backend: ``<store>/<split>.h5`` holds one dataset per field, chunked along axis 0.

Files are opened for reading with HDF5 file locking off, so stores on shared or read-only
filesystems open from many processes. Chunks carry HDF5's ``fletcher32`` checksum filter, which
HDF5 checks whenever it reads a chunk. Where the checksum is not due (``verify``: a chunk
already checked, or ``"never"``), an uncompressed chunk is read as it lies in the file instead,
``preadv`` straight into the caller's buffer at the place HDF5's chunk index gives: HDF5's
checksum runs at about 1.6 GB/s here, the raw read at the page cache's speed, and without
h5py's global lock, so reading threads run in parallel.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import h5py
import numpy as np

from datalflash.errors import BackendError, ChecksumError, StoreFormatError, StoreReadError
from datalflash.store.base import ChunkStore, Fetched
from datalflash.store.integrity import open_regular, pread_into

COMPRESSIONS = ("none", "gzip", "lzf")


class HDF5ChunkStore(ChunkStore):
    """h5py datasets, readable with plain ``h5py.File(store / f"{split}.h5")[field]``."""

    backend_id = "hdf5"

    concurrent_writers = False  # one file per split: HDF5 has no concurrent writers

    @classmethod
    def normalize_config(cls, compression: Any = "default", **options: Any) -> dict:
        """``{"compression": "none"|"gzip"|"lzf", "level": gzip level or None}``."""
        level = options.pop("level", None)
        cls._unknown_options(options)
        if compression in ("default", None):
            compression = "none"
        if compression not in COMPRESSIONS:
            raise BackendError(f"hdf5 compression {compression!r} not in {COMPRESSIONS}")
        if compression == "gzip":
            level = 4 if level is None else level
            if not (isinstance(level, int) and 0 <= level <= 9):
                raise BackendError(f"hdf5 gzip level {level!r} is not an integer in 0..9")
        elif level is not None:
            raise BackendError(f"hdf5 compression {compression!r} takes no level")
        return {"compression": compression, "level": level}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw_layouts: dict[tuple[str, str], tuple[int, int] | None] = {}  # (split, field) -> raw_chunk_layout
        self._raw_places: dict[tuple[str, str, int], int] = {}  # (split, field, chunk) -> its bytes' offset

    def has_checksums(self, split: str) -> bool:
        """Whether ``split``'s chunks carry checksums."""
        f = self._handle(split)
        return all(f[name].fletcher32 or f[name].chunks is None for name in self.arrays)

    def split_path(self, split: str) -> str:
        """The HDF5 file of ``split``."""
        return os.path.join(self.path, f"{split}.h5")

    def _create_split(self, split: str) -> None:
        n = self.num_samples(split)
        # no chunk cache: chunks are written whole, and a failed write (a full disk) must raise at
        # the write, not from h5py's deallocation of a dataset whose cache cannot be flushed
        f = h5py.File(self.split_path(split), "w-", rdcc_nbytes=0)
        self._handles[split] = f
        for name, spec in self.arrays.items():
            shape = (n, *spec.fixed_shape)
            self._create_dataset(f, name, shape, spec.storage_dtype, (min(self.chunk_size, n), *spec.fixed_shape))
            f[name].attrs["datalflash_dtype"] = spec.dtype
        for name, spec in self.fields.items():
            if spec.ragged:
                f.create_group(f"{name}/values")
                f[name].attrs["datalflash_dtype"] = spec.dtype
                f[name].attrs["datalflash_kind"] = spec.kind

    def _create_dataset(self, f: h5py.File, name: str, shape: tuple, dtype: np.dtype, chunks: tuple) -> None:
        """A dataset chunked ``chunks`` (contiguous when it holds nothing), compressed as the
        config says, with the fletcher32 checksum filter."""
        config = self.manifest.backend_config
        chunked = 0 not in shape
        f.create_dataset(
            name,
            shape=shape,
            dtype=dtype,
            chunks=chunks if chunked else None,
            compression=None if config["compression"] == "none" or not chunked else config["compression"],
            compression_opts=config["level"] if chunked else None,
            fletcher32=chunked,
        )

    def discard(self) -> None:
        """Close after a failed write. The split files are emptied first (they are being
        removed): HDF5 1.12 crashes the process closing files whose writes failed on a full disk,
        and an empty file gives closing the room its last metadata writes need."""
        if self.writable:
            for split in list(self._handles):
                with contextlib.suppress(OSError):
                    os.truncate(self.split_path(split), 0)
        super().discard()

    def _open_split(self, split: str) -> h5py.File:
        path = self.split_path(split)  # (named in errors; opened through the pinned root)
        opened = self.file(f"{split}.h5")
        os.close(open_regular(opened, path, self.writable, f"split {split!r}"))  # (no FIFO reaches HDF5)
        try:
            f = h5py.File(opened, "r+") if self.writable else h5py.File(opened, "r", locking=False)
        except OSError as e:
            raise StoreFormatError(f"{path}: split {split!r} is not a readable HDF5 file: {e}") from None
        try:
            for name in self.arrays:
                link = f.get(name, getlink=True)
                if link is None:
                    raise StoreFormatError(f"{path}: split {split!r} has no dataset for field {name!r}")
                if not isinstance(link, h5py.HardLink):
                    raise StoreFormatError(
                        f"{path}: field {name!r} is a {type(link).__name__}; only datasets in the file are read"
                    )
                if f[name].external or f[name].is_virtual:
                    raise StoreFormatError(f"{path}: field {name!r} keeps its data in other files; refusing to read it")
                self.ensure_matches_manifest(split, name, f[name].shape, f[name].dtype, f"{path}[{name!r}]")
        except BaseException:
            f.close()
            raise
        return f

    def _write_values(self, split: str, field: str, chunk: int, values: np.ndarray) -> None:
        self._create_dataset(self._handle(split), f"{field}/values/{chunk}", values.shape, values.dtype, values.shape)
        if len(values):
            self._handle(split)[f"{field}/values/{chunk}"].write_direct(values)

    def _read_values(self, split: str, field: str, chunk: int, out: np.ndarray, fetched: Fetched | None) -> None:
        f, key = self._handle(split), f"{field}/values/{chunk}"
        where = f"{self.split_path(split)}: split {split!r} field {field!r} chunk {chunk}"
        link = f.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):
            found = "no dataset" if link is None else f"a {type(link).__name__}"
            raise StoreFormatError(f"{where}: {found} at {key!r}; the chunk's values are a dataset in the file")
        dataset = f[key]
        if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
            raise StoreFormatError(f"{where}: {key!r} is not a dataset kept in the file")
        if dataset.shape != out.shape or dataset.dtype != out.dtype:
            raise StoreFormatError(
                f"{where}: holds values {dataset.shape} {dataset.dtype}; its shape table needs {out.shape} {out.dtype}"
            )
        if len(out):
            self._read_dataset(dataset, out, np.s_[:], split, field, chunk, chunk + 1)

    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        if len(data):
            self._handle(split)[field].write_direct(data, dest_sel=np.s_[start : start + len(data)])

    def _read_rows(
        self, split: str, field: str, start: int, stop: int, out: np.ndarray, fetched: Fetched | None
    ) -> None:
        if stop <= start:
            return
        start_chunk, stop_chunk = start // self.chunk_size, (stop - 1) // self.chunk_size + 1
        f = self._handle(split)
        unchecked = not any(self.checksums.due(split, c) for c in range(start_chunk, stop_chunk))
        if unchecked and not self.writable and self._read_raw(f, split, field, start, stop, out):
            return
        self._read_dataset(f[field], out, np.s_[start:stop], split, field, start_chunk, stop_chunk)

    def _read_raw(self, f: h5py.File, split: str, field: str, start: int, stop: int, out: np.ndarray) -> bool:
        """Read rows ``start:stop`` of ``field`` from the file's bytes, chunk by chunk, where the
        chunks lie in the file as plain rows (see :func:`raw_chunk_layout`); False, having read
        nothing or part, where they do not (the caller reads through HDF5)."""
        key = (split, field)
        if key not in self._raw_layouts:
            self._raw_layouts[key] = raw_chunk_layout(f[field])
        layout = self._raw_layouts[key]
        if layout is None:
            return False
        rows, trailer = layout
        nbytes = self.arrays[field].sample_nbytes
        fd = f.id.get_vfd_handle()
        if not isinstance(fd, int):  # (a driver other than HDF5's POSIX one: no descriptor to read)
            return False
        for chunk in range(start // rows, (stop - 1) // rows + 1):
            place = self._raw_places.get((split, field, chunk))
            if place is None:
                dataset = f[field]
                info = dataset.id.get_chunk_info_by_coord((chunk * rows,) + (0,) * (dataset.ndim - 1))
                if info.byte_offset is None or info.filter_mask != 0 or info.size != rows * nbytes + trailer:
                    return False  # (not written, or not as the pipeline says: HDF5 tells what is wrong)
                place = self._raw_places[(split, field, chunk)] = info.byte_offset
            a, b = max(start, chunk * rows), min(stop, (chunk + 1) * rows)
            rows_out = out[a - start : b - start]
            position = place + (a - chunk * rows) * nbytes
            if pread_into(fd, rows_out, position) < rows_out.nbytes:
                raise StoreReadError(
                    f"{self.split_path(split)}: file ends before byte {position + rows_out.nbytes}; "
                    f"split {split!r} field {field!r} chunk {chunk} is missing (truncated file)"
                )
        return True

    def _read_dataset(
        self, dataset: h5py.Dataset, out: np.ndarray, selection: Any, split: str, field: str, first: int, stop: int
    ) -> None:
        """``dataset[selection]`` into ``out``; a checksum or filter failure is a ChecksumError
        naming chunks ``first..stop-1``."""
        try:
            dataset.read_direct(out, source_sel=selection)
        except OSError as e:
            message = str(e).lower()  # h5py words it "filter"; HDF5 before 1.14, "Fletcher32 checksum"
            if dataset.fletcher32 and ("filter" in message or "fletcher32" in message):
                raise ChecksumError(
                    f"{self.split_path(split)}: split {split!r} field {field!r} chunks {first}..{stop - 1}: "
                    f"HDF5's filters (fletcher32 checksum{', ' + dataset.compression if dataset.compression else ''}) "
                    f"rejected the data: {e}"
                ) from None
            raise


def raw_chunk_layout(dataset: h5py.Dataset) -> tuple[int, int] | None:
    """``(rows per chunk, bytes after each chunk's rows)`` when ``dataset``'s chunks lie in the
    file as plain rows: chunked along the first axis only, with no filter but ``fletcher32``
    (whose 4-byte checksum follows the rows); None when they do not (compressed, shuffled, ...)."""
    if dataset.chunks is None or dataset.chunks[1:] != dataset.shape[1:]:
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if any(f != h5py.h5z.FILTER_FLETCHER32 for f in filters):
        return None
    return dataset.chunks[0], 4 * len(filters)
