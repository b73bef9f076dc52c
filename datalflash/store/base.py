"""The :class:`ChunkStore` interface: one class per backend, a store = manifest + per-split data.

A store is opened read-only by path, or created empty and filled chunk by chunk. Handles to files
are opened lazily in each process, and a store pickles by path, so DataLoader workers under
``fork``, ``spawn`` and ``forkserver`` each open their own. What a backend can do is declared on
its class (:attr:`ChunkStore.streams_writes`, :attr:`~ChunkStore.concurrent_writers`,
:attr:`~ChunkStore.read_threads`); checksum and retry rules are in :mod:`datalflash.store.integrity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from datalflash.errors import BackendError, DataLFlashError, StoreFormatError, StoreReadError
from datalflash.format.manifest import (
    FieldSpec,
    Manifest,
    SplitInfo,
    allocate,
    checksum_keys,
    parse_manifest,
    write_manifest,
)
from datalflash.format.ragged import RaggedSlot, checked_counts
from datalflash.store import integrity
from datalflash.store.generations import Pin, pin_generation
from datalflash.store.integrity import ChecksumSchedule, ReadAttempt, ReadHook, RetryPolicy
from datalflash.store.rows import as_ragged, checked_out, checked_pieces, checked_rows

Fetched = Mapping[str, Any]
"""Encoded chunk objects a backend fetched for one :meth:`ChunkStore.read_chunks` call, by key."""


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

    Subclasses set :attr:`backend_id` (and the capabilities below where they differ), implement
    :meth:`normalize_config`, :meth:`_create_split`, :meth:`_write_rows`, :meth:`_read_rows`,
    :meth:`_open_split` and may override :meth:`_close`.

    ``verify`` says when a chunk's checksum is checked on reading: ``"first"`` (default) the
    first time this process reads the chunk, ``"always"``, or ``"never"``. Reads failing with a
    transient ``OSError`` are retried as :attr:`retry` says, reopening the split's files.
    """

    backend_id: ClassVar[str]
    streams_writes: ClassVar[bool] = False
    """Whether :meth:`write_chunk_pieces` writes rows as they come (else it gathers the chunk)."""
    concurrent_writers: ClassVar[bool] = True
    """Whether several processes may write chunks of one store at once (a multi-rank conversion)."""
    read_threads: ClassVar[int] = 2
    """Reading threads that suit the store (threads waiting on a network want more)."""

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: Manifest,
        *,
        writable: bool = False,
        verify: str = "first",
        pin: Pin | None = None,
    ) -> None:
        self.checksums = ChecksumSchedule(verify)
        self.path: str = os.fspath(path)
        """Where the store is: a directory, or a URL for stores opened through fsspec."""
        self.manifest = manifest
        self.writable = writable
        self.retry = RetryPolicy()
        """How transient read errors are retried (a :class:`~datalflash.store.integrity.RetryPolicy`)."""
        self.read_hook: ReadHook | None = None
        """Called with a :class:`~datalflash.store.integrity.ReadAttempt` before each attempt to
        read rows; what it raises is handled as an error of the read itself. A seam for fault
        injection in tests; None (the default) costs nothing."""
        self._pin = pin  # the generation read (see datalflash.store.generations); pinned when first needed
        self._pin_lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._stale: list[Any] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def verify(self) -> str:
        """When chunk checksums are checked on reading: ``"first"``, ``"always"`` or ``"never"``."""
        return self.checksums.mode

    # ----------------------------------------------------------------- configuration
    @classmethod
    @abstractmethod
    def normalize_config(cls, compression: Any = "default", **options: Any) -> dict:
        """The backend's JSON config for a user's ``compression`` choice and options (a config
        read back from a manifest gives itself); raises BackendError."""

    @classmethod
    def config_from_manifest(cls, config: Mapping) -> dict:
        """Check a backend config read from a manifest (or given whole by a user)."""
        if not isinstance(config, Mapping):
            raise BackendError(f"{cls.backend_id} backend config {config!r} is not an object")
        return cls.normalize_config(**dict(config))

    @classmethod
    def _unknown_options(cls, options: Mapping[str, Any]) -> None:
        """Raise BackendError naming options the backend does not have."""
        if options:
            raise BackendError(
                f"{cls.backend_id} backend config {dict(options)!r} is not valid: unknown options {sorted(options)}"
            )

    def get_config(self) -> dict:
        """``{"id": backend_id, **config}``, as numcodecs codecs report themselves."""
        return {"id": self.backend_id, **self.manifest.backend_config}

    # ----------------------------------------------------------------- description
    @property
    def fields(self) -> dict[str, FieldSpec]:
        """``{name: FieldSpec}``: dtype and per-sample shape of each field."""
        return self.manifest.fields

    @property
    def arrays(self) -> dict[str, FieldSpec]:
        """The fixed-shape arrays the backend stores: each fixed field, and the shape table
        (``"<field>/shapes"``) of each ragged one (see :func:`~datalflash.format.manifest.physical_arrays`)."""
        return self.manifest.arrays

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
    def allocate(self, rows: int) -> dict[str, Any]:
        """Empty storage buffers for ``rows`` samples of every field (a
        :class:`~datalflash.format.ragged.RaggedBuffer` for a ragged one)."""
        return allocate(self.fields, rows)

    def read_chunks(
        self,
        split: str,
        chunks: Sequence[int],
        out: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Read whole chunks, concatenated in the given order, one array per field (a
        :class:`~datalflash.format.ragged.RaggedArray` per ragged field).

        ``out`` (from :meth:`allocate`) receives the rows if given: each array needs at least as
        many rows as the chunks hold. Returns views of exactly the rows read.
        """
        total = sum(stop - start for start, stop in (self.chunk_bounds(split, c) for c in chunks))
        result = checked_out(self.fields, self.allocate(total) if out is None else out, total)
        self._handle(split)  # open (and check) the split first: its errors name what they concern
        fetched = self._fetch(split, chunks)
        offset = 0
        for first, stop_chunk in chunk_runs(chunks):
            start = self.chunk_bounds(split, first)[0]
            stop = self.chunk_bounds(split, stop_chunk - 1)[1]
            for name, spec in self.fields.items():
                if spec.ragged:
                    self._read_ragged(split, name, range(first, stop_chunk), result[name][offset:], fetched)
                else:
                    rows = result[name][offset : offset + stop - start]
                    self._read_with_retries(split, name, start, stop, rows, fetched)
            self.checksums.read(split, range(first, stop_chunk))
            offset += stop - start
        return {name: as_ragged(rows) if self.fields[name].ragged else rows for name, rows in result.items()}

    def _read_ragged(self, split: str, field: str, chunks: range, out: RaggedSlot, fetched: Fetched | None) -> None:
        """Read a run of chunks of a ragged field into the slot ``out``: the shape table, then,
        with the sizes it gives (checked), each chunk's values."""
        spec = self.fields[field]
        start, stop = self.chunk_bounds(split, chunks[0])[0], self.chunk_bounds(split, chunks[-1])[1]
        table = spec.shapes_array.name
        self._read_with_retries(split, table, start, stop, out.shapes[: stop - start], fetched)
        counts = [
            checked_counts(
                out.shapes[a - start : b - start],
                spec.shape,
                spec.storage_dtype.itemsize,
                f"{self.path}: split {split!r} field {field!r} chunk {chunk}",
            )
            for chunk in chunks
            for a, b in [self.chunk_bounds(split, chunk)]
        ]
        values = out.target(0, stop - start, int(sum(int(c.sum()) for c in counts)))  # (the window's place for them)
        done = 0
        for chunk, chunk_counts in zip(chunks, counts):
            a, b = self.chunk_bounds(split, chunk)
            total = int(chunk_counts.sum())
            read = functools.partial(self._read_values, split, field, chunk, values[done : done + total], fetched)
            self._attempt(split, field, a, b, read)
            done += total
        out.put(values, 0, stop - start)

    def read_field(self, split: str, field: str) -> np.ndarray:
        """Every row of the fixed-shape ``field`` of ``split``, in storage dtype (read alone, as
        :meth:`read_chunks` reads it: checksums and retries apply). For a small field of a large
        store: an image field's sizes, labels."""
        spec = self.fields[field]
        if spec.ragged:
            raise ValueError(f"field {field!r} is {spec.kind}: read it with read_chunks (or read_lengths)")
        n = self.num_samples(split)
        out = np.empty((n, *spec.fixed_shape), spec.storage_dtype)
        self._handle(split)
        self._read_with_retries(split, field, 0, n, out, None)
        return out

    def read_lengths(self, split: str, field: str) -> np.ndarray:
        """Elements of every sample of the ragged ``field`` in ``split`` (int64, from its shape
        table, each chunk's rows checked as when they are read)."""
        spec = self.fields[field]
        if not spec.ragged:
            raise ValueError(f"field {field!r} is not ragged: its samples all have shape {spec.shape}")
        n = self.num_samples(split)
        shapes = np.empty((n, len(spec.shape)), np.int64)
        self._handle(split)
        self._read_with_retries(split, spec.shapes_array.name, 0, n, shapes, None)
        lengths = np.empty(n, np.int64)
        for chunk in range(self.num_chunks(split)):
            a, b = self.chunk_bounds(split, chunk)
            where = f"{self.path}: split {split!r} field {field!r} chunk {chunk}"
            lengths[a:b] = checked_counts(shapes[a:b], spec.shape, spec.storage_dtype.itemsize, where)
        return lengths

    def _fetch(self, split: str, chunks: Sequence[int]) -> Fetched | None:
        """Fetch what reading ``chunks`` needs in one go, before the rows are read (a store
        behind a network fetches every chunk object at once); None here: nothing to fetch."""
        return None

    def _read_with_retries(
        self, split: str, field: str, start: int, stop: int, out: np.ndarray, fetched: Fetched | None
    ) -> None:
        self._attempt(split, field, start, stop, lambda: self._read_rows(split, field, start, stop, out, fetched))

    def _attempt(self, split: str, field: str, start: int, stop: int, read: Callable[[], None]) -> None:
        """Run ``read`` (of rows ``start:stop`` of ``field``), retrying transient errors as
        :attr:`retry` says; errors name store, split, field and chunks."""
        for attempt in range(self.retry.retries + 1):
            try:
                if self.read_hook is not None:
                    self.read_hook(ReadAttempt(split, field, start, stop, attempt))
                read()
                return
            except DataLFlashError as e:  # the backend's own error: add where it happened
                if f"split {split!r}" in str(e) and f"field {field!r}" in str(e):
                    raise
                raise type(e)(f"{self.path}: {self._where(split, field, start, stop)}: {e}") from e
            except OSError as e:
                if not self.retry.is_transient(e) or attempt == self.retry.retries:
                    raise self._read_error(split, field, start, stop, e, attempt) from e
                time.sleep(self.retry.delay(attempt))
                self._reopen(split)
            except Exception as e:
                raise self._read_error(split, field, start, stop, e, 0) from e

    def _where(self, split: str, field: str, start: int, stop: int) -> str:
        chunks = self.manifest.chunks_of_rows(start, stop)
        if len(chunks) == 1:
            return f"split {split!r} field {field!r} chunk {chunks.start}"
        return f"split {split!r} field {field!r} chunks {chunks.start}..{chunks.stop - 1}"

    def _read_error(self, split: str, field: str, start: int, stop: int, e: Exception, retries: int) -> StoreReadError:
        tried = f" (after {retries} retries)" if retries else ""
        cause = str(e)
        if self._pin is not None:  # files are opened through /proc/self/fd/N: name them by their path
            cause = cause.replace(f"{self._pin.root}/", f"{self._pin.directory}/")
        return StoreReadError(
            f"{self.path}: cannot read {self._where(split, field, start, stop)}{tried}: {type(e).__name__}: {cause}"
        )

    def _reopen(self, split: str) -> None:
        """Open ``split`` anew on the next read (a stale handle is closed with the store)."""
        with self._lock:
            handle = self._handles.pop(split, None)
            if handle is not None:
                self._stale.append(handle)

    def ensure_matches_manifest(self, split: str, field: str, shape: tuple, dtype: Any, where: str) -> None:
        """Raise StoreFormatError if a stored array (one of :attr:`arrays`) disagrees with the manifest."""
        spec = self.arrays[field]
        expected = (self.num_samples(split), *spec.fixed_shape)
        if tuple(shape) != expected or np.dtype(dtype) != spec.storage_dtype:
            raise StoreFormatError(
                f"{where}: split {split!r} field {field!r} holds {tuple(shape)} {np.dtype(dtype)}, "
                f"the manifest says {expected} {spec.storage_dtype}"
            )

    def root(self) -> str:
        """The directory to open this store's files in: for a store opened for reading, the
        generation it opened, whatever was renamed since (see :mod:`datalflash.store.generations`)."""
        if self.writable:
            return self.path
        with self._pin_lock:  # (not self._lock: splits are opened under it, and they ask for the root)
            if self._pin is None:
                self._pin = pin_generation(self.path, self.manifest)
            return self._pin.root

    def file(self, *parts: str) -> str:
        """The path to open the store's file ``parts`` by (inside :meth:`root`, links included;
        a store must not make us read files outside it: StoreFormatError)."""
        root = self.root()
        return integrity.inside(root, os.path.join(root, *parts))

    def inside(self, path: str | os.PathLike) -> str:
        """``path`` as a string if it resolves inside the store (links included), else a
        StoreFormatError: a store must not make us read files outside it."""
        return integrity.inside(self.root(), path)

    def has_checksums(self, split: str) -> bool:
        """Whether the chunks of ``split`` carry checksums (stores written before them do not)."""
        return False

    def compare_checksums(self, split: str, field: str, chunk: int, expected: int, actual: int, file: str) -> None:
        """Raise :class:`~datalflash.errors.ChecksumError` naming store, split, field, chunk and
        ``file`` if the stored and computed checksums differ."""
        integrity.compare_checksums(self.path, split, field, chunk, expected, actual, file)

    def will_need(self, split: str, chunks: Sequence[int]) -> None:  # noqa: B027 (a hint: a no-op by default)
        """A hint that ``chunks`` will be read soon (backends may start I/O early); no-op here."""

    def _handle(self, split: str) -> Any:
        """The open handle of ``split`` in this process (reopened after a fork)."""
        if self._pid != os.getpid():  # a forked child: the parent's handles are not ours
            self._handles, self._stale = {}, []
            self._lock, self._pin_lock = threading.Lock(), threading.Lock()
            self._pid = os.getpid()
        handle = self._handles.get(split)
        if handle is None:
            with self._lock:  # reading threads may race to open the same split
                handle = self._handles.get(split)
                if handle is None:
                    self._split(split)
                    try:
                        handle = self._handles[split] = self._open_split(split)
                    except DataLFlashError:
                        raise
                    except Exception as e:  # I/O, permissions, link loops: one vocabulary on every backend
                        raise StoreReadError(
                            f"{self.path}: cannot open split {split!r}: {type(e).__name__}: {e}"
                        ) from e
        return handle

    @abstractmethod
    def _open_split(self, split: str) -> Any:
        """Open the data of ``split`` (read-only unless :attr:`writable`)."""

    @abstractmethod
    def _read_rows(
        self, split: str, field: str, start: int, stop: int, out: np.ndarray, fetched: Fetched | None
    ) -> None:
        """Read rows ``start:stop`` of ``field`` into the C-contiguous ``out`` (``fetched``: what
        :meth:`_fetch` returned for this call)."""

    def _read_values(self, split: str, field: str, chunk: int, out: np.ndarray, fetched: Fetched | None) -> None:
        """Read the values of chunk ``chunk`` of the ragged ``field`` into ``out``, which has the
        size the shape table gives (StoreFormatError when the stored values have another)."""
        raise BackendError(f"the {self.backend_id} backend does not store ragged fields")

    # ----------------------------------------------------------------- writing
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Manifest) -> ChunkStore:
        """Lay out an empty store at ``path`` (a new directory) for ``manifest``; fill with
        :meth:`write_chunk`, then call :meth:`finish`."""
        cls.config_from_manifest(manifest.backend_config)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=False)
        store = cls(path, manifest, writable=True)
        for split in manifest.splits:
            store._create_split(split)
        return store

    def write_chunk(self, split: str, chunk: int, arrays: Mapping[str, Any]) -> None:
        """Write one whole chunk: ``arrays[field]`` holds its rows in storage dtype (a
        :class:`~datalflash.format.ragged.RaggedArray` for a ragged field)."""
        start, stop = self._writable_chunk(split, chunk)
        for name, spec in self.fields.items():
            rows = checked_rows(self.fields, split, chunk, name, arrays, stop - start)
            if spec.ragged:
                self._write_rows(split, spec.shapes_array.name, start, rows.shapes)
                self._write_values(split, name, chunk, np.ascontiguousarray(rows.values))
            else:
                self._write_rows(split, name, start, rows)

    def write_chunk_pieces(self, split: str, chunk: int, pieces: Iterable[Mapping[str, Any]]) -> None:
        """Write one whole chunk given as consecutive pieces of its rows (a piece may be
        overwritten once the next one is asked for). This gathers them and calls
        :meth:`write_chunk`; backends with :attr:`streams_writes` write each piece as it comes.
        Too many or too few rows raise ValueError; the chunk must then be written again."""
        start, stop = self._writable_chunk(split, chunk)
        buffer = self.allocate(stop - start)
        for offset, arrays in checked_pieces(self.fields, split, chunk, stop - start, pieces):
            for name, data in arrays.items():
                buffer[name][offset : offset + len(data)] = data
        self.write_chunk(split, chunk, buffer)

    def _writable_chunk(self, split: str, chunk: int) -> tuple[int, int]:
        """``(start, stop)`` rows of ``chunk``, or BackendError if the store is read-only."""
        if not self.writable:
            raise BackendError(f"{self.path}: store is open read-only")
        return self.chunk_bounds(split, chunk)

    @functools.cached_property
    def _written(self) -> dict[str, dict[str, list[int]]]:
        """``{split: {key: [crc32c per chunk]}}`` of the chunks written by this process (those of
        the manifest it was built with to start with; 0 until written)."""
        return {split: {f: list(v) for f, v in sums.items()} for split, sums in self.manifest.checksums.items()}

    def _checksum_slots(self, split: str) -> dict[str, list[int]]:
        """``{key: [checksum per chunk]}`` of ``split`` being written (0 until written)."""
        return self._written.setdefault(
            split, {name: [0] * self.num_chunks(split) for name in checksum_keys(self.fields)}
        )

    def _recorded_checksum(self, split: str, key: str, chunk: int) -> int | None:
        """The checksum the manifest records for chunk ``chunk`` of ``key`` (an array, or a ragged
        field's ``"<field>/values"``) in ``split``; None when it records none."""
        sums = self.manifest.checksums.get(split)
        return None if sums is None else sums[key][chunk]

    def written_manifest(self) -> Manifest:
        """The manifest to publish once every chunk is written, with the checksums of the chunks
        written when the backend records them as it writes (see :meth:`_checksum_slots`)."""
        return dataclasses.replace(self.manifest, checksums=self._written) if self._written else self.manifest

    def finish(self) -> None:
        """Flush data, close handles and write the manifest (last, so it marks completeness)."""
        self.close()
        write_manifest(self.path, self.written_manifest())

    @abstractmethod
    def _create_split(self, split: str) -> None:
        """Create the empty arrays/files of ``split``."""

    @abstractmethod
    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        """Write ``data`` at rows ``start:start+len(data)`` of the array ``field`` (one of :attr:`arrays`)."""

    def _write_values(self, split: str, field: str, chunk: int, values: np.ndarray) -> None:
        """Write the values of chunk ``chunk`` of the ragged ``field`` (its samples' elements,
        one after the other)."""
        raise BackendError(f"the {self.backend_id} backend does not store ragged fields")

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the handles this process opened."""
        self._close_all(quietly=False)

    def discard(self) -> None:
        """Close after a failed write, ignoring what closing raises (a file that cannot be
        flushed): the caller removes the files, and the first error is the one to report."""
        self._close_all(quietly=True)

    def _close_all(self, quietly: bool) -> None:
        handles, self._handles, self._stale = [*self._handles.values(), *self._stale], {}, []
        if self._pid == os.getpid():
            for handle in handles:
                with contextlib.suppress(OSError) if quietly else contextlib.nullcontext():
                    self._close(handle)
        if self._pin is not None:
            self._pin.close()
            self._pin = None

    def _close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()

    def __del__(self, _quietly: Callable[..., Any] = contextlib.suppress) -> None:
        # (a store dropped without close() must not leak its open files)
        with _quietly(Exception):  # (bound at definition: at interpreter exit module globals may be gone)
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple]:
        """Pickle by path and manifest: the copy opens its own files."""
        if self.writable:
            raise TypeError(f"{self.path}: a store open for writing cannot be pickled")
        return _reopen_store, (type(self), str(self.path), self.manifest.to_json(), self.verify)


def _reopen_store(cls: type[ChunkStore], path: str, manifest: dict, verify: str) -> ChunkStore:
    """A pickled store, opened anew in this process."""
    return cls(path, parse_manifest(manifest), verify=verify)
