"""The :class:`ChunkStore` interface: one class per backend, a store = manifest + per-split data.

A store is opened read-only by path, or created empty and filled chunk by chunk. Handles to files
are opened lazily in each process, and a store pickles by path, so DataLoader workers under
``fork``, ``spawn`` and ``forkserver`` each open their own.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import google_crc32c
import numpy as np

from datalflash.errors import BackendError, ChecksumError, DataLFlashError, StoreFormatError, StoreReadError
from datalflash.format.manifest import FieldSpec, Manifest, SplitInfo, allocate, write_manifest

VERIFY_MODES = ("first", "always", "never")
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.ESTALE, errno.EINTR})
READ_RETRIES = 4  # attempts after the first, sleeping RETRY_BACKOFF * 2**attempt between them
RETRY_BACKOFF = 0.05


def inside(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` as a string if it resolves (following links) inside ``root``; else StoreFormatError."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise StoreFormatError(f"{path}: resolves to {real}, outside the store {base}; refusing to read it")
    return str(path)


def crc32c(data: np.ndarray | memoryview | bytes, crc: int = 0) -> int:
    """CRC-32C of the bytes of ``data`` (a C-contiguous array or a buffer); pass the CRC of
    the bytes before them as ``crc`` to checksum a sequence of pieces."""
    if isinstance(data, np.ndarray):
        return google_crc32c.extend(crc, data.reshape(-1).view(np.uint8))
    return google_crc32c.extend(crc, np.frombuffer(data, dtype=np.uint8))


def chunk_runs(chunks: Sequence[int]) -> list[tuple[int, int]]:
    """Group chunk ids into runs of consecutive ids, keeping their order: ``[3,4,5,9]`` -> ``[(3,6),(9,10)]``."""
    runs: list[tuple[int, int]] = []
    for c in chunks:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0], c + 1)
        else:
            runs.append((c, c + 1))
    return runs


class ChunkStore(ABC):
    """A chunked store of samples: fields (name -> dtype, per-sample shape), splits, chunks.

    Subclasses set :attr:`backend_id`, implement :meth:`normalize_config`, :meth:`_create_split`,
    :meth:`_write_rows`, :meth:`_read_rows`, :meth:`_open_split` and may override :meth:`_close`.

    ``verify`` says when a chunk's checksum is checked on reading: ``"first"`` (default) the
    first time this process reads the chunk, ``"always"``, or ``"never"``. Reads failing with a
    transient ``OSError`` (``EIO``, ``EAGAIN``, ``ESTALE``, ``EINTR``, as network filesystems give)
    are retried :data:`READ_RETRIES` times with exponential backoff, reopening the split's files.
    """

    backend_id: ClassVar[str]

    def __init__(self, path: str | os.PathLike, manifest: Manifest, *, writable: bool = False, verify: str = "first"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path = Path(path)
        self.manifest = manifest
        self.writable = writable
        self.verify = verify
        self._verified: set[tuple[str, int]] = set()
        self._handles: dict[str, Any] = {}
        self._stale: list[Any] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- configuration
    @classmethod
    @abstractmethod
    def normalize_config(cls, compression: Any = "default", **options: Any) -> dict:
        """The backend's JSON config for a user's ``compression`` choice; raises BackendError."""

    @classmethod
    def validate_config(cls, config: Mapping) -> dict:
        """Check a config read from a manifest (same rules as :meth:`normalize_config`)."""
        try:
            return cls.normalize_config(**dict(config))
        except TypeError as e:  # an option the backend does not have
            raise BackendError(f"{cls.backend_id} backend config {dict(config)!r} is not valid: {e}") from None

    def get_config(self) -> dict:
        """``{"id": backend_id, **config}``, as numcodecs codecs report themselves."""
        return {"id": self.backend_id, **self.manifest.backend_config}

    # ----------------------------------------------------------------- description
    @property
    def fields(self) -> dict[str, FieldSpec]:
        """``{name: FieldSpec}``: dtype and per-sample shape of each field."""
        return self.manifest.fields

    @property
    def splits(self) -> dict[str, SplitInfo]:
        """``{name: SplitInfo}``: samples and chunks of each split."""
        return self.manifest.splits

    @property
    def chunk_size(self) -> int:
        """Samples per chunk (the last chunk of a split may hold fewer)."""
        return self.manifest.chunk_size

    @property
    def structure(self) -> dict:
        """How fields form a sample (see :mod:`datalflash.format.structure`)."""
        return self.manifest.structure

    def num_samples(self, split: str) -> int:
        """Samples in ``split``."""
        return self._split(split).num_samples

    def num_chunks(self, split: str) -> int:
        """Chunks in ``split``."""
        return self._split(split).num_chunks

    def chunk_bounds(self, split: str, chunk: int) -> tuple[int, int]:
        """``(start, stop)`` rows of ``chunk`` within ``split``."""
        self._split(split)
        return self.manifest.chunk_bounds(split, chunk)

    def _split(self, split: str) -> SplitInfo:
        try:
            return self.manifest.splits[split]
        except KeyError:
            raise KeyError(f"{self.path}: no split {split!r}; splits are {sorted(self.manifest.splits)}") from None

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={v.num_samples}" for k, v in self.splits.items())
        return f"{type(self).__name__}({str(self.path)!r}, fields={list(self.fields)}, {splits})"

    # ----------------------------------------------------------------- reading
    def allocate(self, rows: int) -> dict[str, np.ndarray]:
        """Empty storage buffers for ``rows`` samples of every field."""
        return allocate(self.fields, rows)

    def read_chunks(
        self,
        split: str,
        chunks: Sequence[int],
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Read whole chunks, concatenated in the given order, one array per field.

        ``out`` (from :meth:`allocate`) receives the rows if given: each array needs at least as
        many rows as the chunks hold. Returns views of exactly the rows read.
        """
        bounds = [self.chunk_bounds(split, c) for c in chunks]
        total = sum(stop - start for start, stop in bounds)
        if out is None:
            out = self.allocate(total)
        result = {}
        for name, spec in self.fields.items():
            buf = out[name]
            if (
                buf.shape[0] < total
                or buf.shape[1:] != spec.shape
                or buf.dtype != spec.storage_dtype
                or not buf.flags.c_contiguous
            ):
                raise ValueError(
                    f"out[{name!r}] is {buf.shape} {buf.dtype}, needs a C-contiguous "
                    f"({total}, *{spec.shape}) {spec.storage_dtype} array"
                )
            result[name] = buf[:total]
        try:  # open (and check) the split first: its errors name what they concern
            self._handle(split)
        except DataLFlashError:
            raise
        except Exception as e:
            raise StoreReadError(f"{self.path}: cannot open split {split!r}: {type(e).__name__}: {e}") from e
        offset = 0
        for first, stop_chunk in chunk_runs(chunks):
            start = self.chunk_bounds(split, first)[0]
            stop = self.chunk_bounds(split, stop_chunk - 1)[1]
            for name in self.fields:
                self._read_with_retries(split, name, start, stop, result[name][offset : offset + stop - start])
            if self.verify == "first":
                self._verified.update((split, c) for c in range(first, stop_chunk))
            offset += stop - start
        return result

    def _read_with_retries(self, split: str, field: str, start: int, stop: int, out: np.ndarray) -> None:
        for attempt in range(READ_RETRIES + 1):
            try:
                self._read_rows(split, field, start, stop, out)
                return
            except DataLFlashError as e:  # the backend's own error: add where it happened
                if f"split {split!r}" in str(e) and f"field {field!r}" in str(e):
                    raise
                where = f"split {split!r} field {field!r} chunks {start // self.chunk_size}..{(stop - 1) // self.chunk_size}"
                raise type(e)(f"{self.path}: {where}: {e}") from e
            except OSError as e:
                if e.errno not in TRANSIENT_ERRNOS or attempt == READ_RETRIES:
                    raise self._read_error(split, field, start, stop, e, attempt) from e
                time.sleep(RETRY_BACKOFF * 2**attempt)
                self._reopen(split)
            except Exception as e:
                raise self._read_error(split, field, start, stop, e, 0) from e

    def _read_error(self, split: str, field: str, start: int, stop: int, e: Exception, retries: int) -> StoreReadError:
        first, last = start // self.chunk_size, (stop - 1) // self.chunk_size
        tried = f" (after {retries} retries)" if retries else ""
        return StoreReadError(
            f"{self.path}: cannot read split {split!r} field {field!r} chunks {first}..{last}{tried}: "
            f"{type(e).__name__}: {e}"
        )

    def _reopen(self, split: str) -> None:
        """Open ``split`` anew on the next read (a stale handle is closed with the store)."""
        with self._lock:
            handle = self._handles.pop(split, None)
            if handle is not None:
                self._stale.append(handle)

    def check_array(self, split: str, field: str, shape: tuple, dtype: Any, where: str) -> None:
        """Raise StoreFormatError if a field's stored array disagrees with the manifest."""
        spec = self.fields[field]
        expected = (self.num_samples(split), *spec.shape)
        if tuple(shape) != expected or np.dtype(dtype) != spec.storage_dtype:
            raise StoreFormatError(
                f"{where}: split {split!r} field {field!r} holds {tuple(shape)} {np.dtype(dtype)}, "
                f"the manifest says {expected} {spec.storage_dtype}"
            )

    def inside(self, path: str | os.PathLike) -> str:
        """``path`` as a string if it resolves inside the store (links included), else a
        StoreFormatError: a store must not make us read files outside it."""
        return inside(self.path, path)

    def has_checksums(self, split: str) -> bool:
        """Whether the chunks of ``split`` carry checksums (stores written before them do not)."""
        return False

    def needs_check(self, split: str, chunk: int) -> bool:
        """Whether a read of ``chunk`` should check its checksum now (see ``verify``)."""
        return self.verify == "always" or (self.verify == "first" and (split, chunk) not in self._verified)

    def check(self, split: str, field: str, chunk: int, expected: int, actual: int, where: str) -> None:
        """Raise :class:`ChecksumError` naming store, split, field, chunk and file if they differ."""
        if expected != actual:
            raise ChecksumError(
                f"{self.path}: checksum mismatch in split {split!r} field {field!r} chunk {chunk} "
                f"({where}): stored {expected:#010x}, data {actual:#010x}; the store is corrupt there"
            )

    def will_need(self, split: str, chunks: Sequence[int]) -> None:
        """A hint that ``chunks`` will be read soon (backends may start I/O early); no-op here."""

    def _handle(self, split: str) -> Any:
        """The open handle of ``split`` in this process (reopened after a fork)."""
        if self._pid != os.getpid():  # a forked child: the parent's handles are not ours
            self._handles, self._stale = {}, []
            self._lock = threading.Lock()
            self._pid = os.getpid()
        handle = self._handles.get(split)
        if handle is None:
            with self._lock:  # reading threads may race to open the same split
                handle = self._handles.get(split)
                if handle is None:
                    self._split(split)
                    handle = self._handles[split] = self._open_split(split)
        return handle

    @abstractmethod
    def _open_split(self, split: str) -> Any:
        """Open the data of ``split`` (read-only unless :attr:`writable`)."""

    @abstractmethod
    def _read_rows(self, split: str, field: str, start: int, stop: int, out: np.ndarray) -> None:
        """Read rows ``start:stop`` of ``field`` into the C-contiguous ``out``."""

    # ----------------------------------------------------------------- writing
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Manifest) -> ChunkStore:
        """Lay out an empty store at ``path`` (a new directory) for ``manifest``; fill with
        :meth:`write_chunk`, then call :meth:`finish`."""
        cls.validate_config(manifest.backend_config)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=False)
        store = cls(path, manifest, writable=True)
        for split in manifest.splits:
            store._create_split(split)
        return store

    streams_writes: ClassVar[bool] = False
    """Whether :meth:`write_chunk_pieces` writes rows as they come (else it gathers the chunk)."""

    def write_chunk(self, split: str, chunk: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one whole chunk: ``arrays[field]`` holds its rows in storage dtype."""
        start, stop = self._writable_chunk(split, chunk)
        for name in self.fields:
            self._write_rows(split, name, start, self._checked_rows(split, chunk, name, arrays, stop - start))

    def write_chunk_pieces(self, split: str, chunk: int, pieces: Iterable[Mapping[str, np.ndarray]]) -> None:
        """Write one whole chunk given as consecutive pieces of its rows (a piece may be
        overwritten once the next one is asked for). This gathers them and calls
        :meth:`write_chunk`; backends with :attr:`streams_writes` write each piece as it comes.
        Too many or too few rows raise ValueError; the chunk must then be written again."""
        start, stop = self._writable_chunk(split, chunk)
        buffer = self.allocate(stop - start)
        for offset, arrays in self._checked_pieces(split, chunk, pieces):
            for name, data in arrays.items():
                buffer[name][offset : offset + len(data)] = data
        self.write_chunk(split, chunk, buffer)

    def _checked_pieces(
        self, split: str, chunk: int, pieces: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first row within the chunk, {field: its rows})`` of each piece, checked; raises
        ValueError when the pieces hold more or fewer rows than the chunk."""
        start, stop = self.chunk_bounds(split, chunk)
        offset = 0
        first_field = next(iter(self.fields))
        for piece in pieces:
            rows = len(piece.get(first_field, ()))  # (a missing field is named by _checked_rows)
            if offset + rows > stop - start:
                raise ValueError(f"chunk {chunk} of split {split!r}: pieces hold more than its {stop - start} rows")
            yield offset, {name: self._checked_rows(split, chunk, name, piece, rows) for name in self.fields}
            offset += rows
        if offset != stop - start:
            raise ValueError(f"chunk {chunk} of split {split!r}: pieces hold {offset} rows, expected {stop - start}")

    def _writable_chunk(self, split: str, chunk: int) -> tuple[int, int]:
        """``(start, stop)`` rows of ``chunk``, or BackendError if the store is read-only."""
        if not self.writable:
            raise BackendError(f"{self.path}: store is open read-only")
        return self.chunk_bounds(split, chunk)

    def _checked_rows(
        self, split: str, chunk: int, name: str, arrays: Mapping[str, np.ndarray], rows: int
    ) -> np.ndarray:
        """``arrays[name]`` as a C-contiguous array, or ValueError if it is not ``rows`` rows of the field."""
        spec = self.fields[name]
        if name not in arrays:
            raise ValueError(f"chunk {chunk} of split {split!r}: no rows for field {name!r}")
        data = np.ascontiguousarray(arrays[name])
        if data.shape != (rows, *spec.shape) or data.dtype != spec.storage_dtype:
            raise ValueError(
                f"chunk {chunk} of split {split!r} field {name!r}: got {data.shape} {data.dtype}, "
                f"expected ({rows}, *{spec.shape}) {spec.storage_dtype}"
            )
        return data

    def finish(self) -> None:
        """Flush data, close handles and write the manifest (last, so it marks completeness)."""
        self.close()
        write_manifest(self.path, self.manifest)

    @abstractmethod
    def _create_split(self, split: str) -> None:
        """Create the empty arrays/files of ``split``."""

    @abstractmethod
    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        """Write ``data`` at rows ``start:start+len(data)`` of ``field``."""

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the handles this process opened."""
        if self._pid == os.getpid():
            for handle in [*self._handles.values(), *self._stale]:
                self._close(handle)
        self._handles, self._stale = {}, []

    def _close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        if self.writable:
            raise TypeError(f"{self.path}: a store open for writing cannot be pickled")
        return {"path": str(self.path), "manifest": self.manifest.to_json(), "verify": self.verify}

    def __setstate__(self, state: dict) -> None:
        from datalflash.format.manifest import parse_manifest

        self.__init__(state["path"], parse_manifest(state["manifest"]), verify=state.get("verify", "first"))
