"""Integrity rules every backend shares: checksums, when they are checked, transient-error retries,
and the path check that keeps a store from making us read files outside it."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import google_crc32c
import numpy as np

from datalflash.errors import ChecksumError, StoreFormatError, StoreReadError

VERIFY_MODES = ("first", "always", "never")
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.ESTALE, errno.EINTR})


def inside(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` as a string if it resolves (following links) inside ``root``; else StoreFormatError."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise StoreFormatError(f"{path}: resolves to {real}, outside the store {base}; refusing to read it")
    return str(path)


def open_file(
    path: str | os.PathLike, shown: str | os.PathLike, *, writable: bool = False, dir_fd: int | None = None
) -> tuple[int, os.stat_result]:
    """``(descriptor, stat)`` of the regular file at ``path`` (relative to ``dir_fd``), opened
    without blocking: a FIFO, device or socket in its place is refused (StoreFormatError naming
    ``shown``) before anything could block on it. The open's own OSErrors (missing, permissions,
    link loops) are raised as they are, for the caller to name."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StoreFormatError(f"{shown}: not a regular file; refusing to read it")
    return fd, st


def open_regular(path: str, shown: str, writable: bool, what: str) -> int:
    """A descriptor of the regular file at ``path`` (named ``shown`` in errors, as the file of
    ``what``), see :func:`open_file`; a missing file is a StoreFormatError, an unreadable one
    (permissions, a link loop) a StoreReadError."""
    try:
        return open_file(path, f"{shown}: the file of {what}", writable=writable)[0]
    except FileNotFoundError:
        raise StoreFormatError(f"{shown}: the file of {what} is missing") from None
    except StoreFormatError:
        raise
    except OSError as e:
        raise StoreReadError(f"{shown}: cannot open the file of {what}: {type(e).__name__}: {e.strerror or e}") from e


def pread_into(fd: int, out: np.ndarray, position: int) -> int:
    """Read ``out``'s bytes (a C-contiguous array) from ``fd`` at ``position`` on, in as many
    ``preadv`` calls as it takes, straight into ``out``; returns the bytes read: fewer only where
    the file ends."""
    if not out.flags.c_contiguous:  # (reshaping it would read into a copy, and the rows would be lost)
        raise ValueError(f"pread_into reads into C-contiguous arrays; got strides {out.strides}")
    view, done = out.reshape(-1).view(np.uint8).data, 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], position + done)
        if got == 0:
            break
        done += got
    return done


def crc32c(data: np.ndarray | memoryview | bytes, crc: int = 0) -> int:
    """CRC-32C of the bytes of ``data`` (a C-contiguous array or a buffer); pass the CRC of
    the bytes before them as ``crc`` to checksum a sequence of pieces."""
    if isinstance(data, np.ndarray):
        return int(google_crc32c.extend(crc, data.reshape(-1).view(np.uint8)))
    return int(google_crc32c.extend(crc, np.frombuffer(data, dtype=np.uint8)))


@dataclass(frozen=True)
class RetryPolicy:
    """How reads failing with a transient ``OSError`` (``EIO``, ``EAGAIN``, ``ESTALE``, ``EINTR``,
    as network filesystems give) are retried: up to ``retries`` times after the first attempt,
    sleeping ``backoff * 2**attempt`` seconds before each and reopening the split's files."""

    retries: int = 4
    backoff: float = 0.05

    def is_transient(self, error: OSError) -> bool:
        """Whether ``error`` is worth another attempt."""
        return error.errno in TRANSIENT_ERRNOS

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return self.backoff * 2**attempt


@dataclass(frozen=True)
class ReadAttempt:
    """One attempt at reading rows ``start:stop`` of ``field`` in ``split``; ``attempt`` counts
    from 0, and every attempt after the first follows a reopening of the split's files."""

    split: str
    field: str
    start: int
    stop: int
    attempt: int


ReadHook = Callable[[ReadAttempt], None]
"""A function called before each read attempt (see :attr:`ChunkStore.read_hook`)."""


class ChecksumSchedule:
    """When a chunk's checksum is checked on reading, for ``verify`` in :data:`VERIFY_MODES`:
    ``"first"`` the first time this process reads the chunk, ``"always"``, or ``"never"``."""

    def __init__(self, verify: str):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.mode = verify
        self._verified: set[tuple[str, int]] = set()

    def due(self, split: str, chunk: int) -> bool:
        """Whether a read of ``chunk`` should check its checksum now."""
        return self.mode == "always" or (self.mode == "first" and (split, chunk) not in self._verified)

    def read(self, split: str, chunks: Iterable[int]) -> None:
        """``chunks`` were read (and checked where due)."""
        if self.mode == "first":
            self._verified.update((split, c) for c in chunks)


def compare_checksums(store: object, split: str, field: str, chunk: int, expected: int, actual: int, file: str) -> None:
    """Raise :class:`ChecksumError` naming store, split, field, chunk and file if they differ."""
    if expected != actual:
        raise ChecksumError(
            f"{store}: checksum mismatch in split {split!r} field {field!r} chunk {chunk} "
            f"({file}): stored {expected:#010x}, data {actual:#010x}; the store is corrupt there"
        )
