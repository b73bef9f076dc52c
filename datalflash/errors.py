"""Exception classes. Every error DataLFlash raises on purpose is a :class:`DataLFlashError`."""

from __future__ import annotations


class DataLFlashError(Exception):
    """Base class of all DataLFlash errors."""


class ConversionError(DataLFlashError, ValueError):
    """A dataset cannot be converted: bad samples, bad arguments. Names the sample index and field."""


class StoreFormatError(DataLFlashError, ValueError):
    """A store's manifest is missing, not JSON, of an unknown version, hostile or inconsistent."""


class StoreExistsError(DataLFlashError, FileExistsError):
    """The output directory already exists and ``overwrite`` was not given (or it is not a store)."""


class StoreReadError(DataLFlashError, OSError):
    """Reading a chunk failed; the message names the store, split, field and chunk."""


class StoreWriteError(DataLFlashError, OSError):
    """Writing a store failed (a full disk, a permission, an I/O error): names the store, split and
    chunk, with the operating system's error as cause (and its ``errno``). A failed conversion
    leaves nothing behind."""

    @classmethod
    def caused_by(cls, error: OSError, message: str) -> StoreWriteError:
        """``message`` as a StoreWriteError carrying ``error``'s errno (raise it ``from error``)."""
        raised = cls(message)
        raised.errno = error.errno
        return raised


class BackendError(DataLFlashError, ValueError):
    """An unknown backend id, a bad backend config, or an option the backend does not support."""


class StoreChangedError(StoreReadError):
    """The store was replaced by a newer generation and the one this reader opened is gone: open
    it again to read the new one (a reader never mixes the chunks of two generations)."""


class ChecksumError(StoreReadError):
    """A chunk's bytes do not match their checksum: the store is corrupt there."""


class LoaderTimeoutError(DataLFlashError, RuntimeError, TimeoutError):
    """A batch took longer than the loader's ``timeout=``: a ``RuntimeError`` whose message starts
    as torch's DataLoader's ("DataLoader timed out after N seconds"), and a ``TimeoutError``;
    the message then names the store, split and chunk that were late."""

    def __init__(self, timeout: float, where: str):
        super().__init__(
            f"DataLoader timed out after {timeout:g} seconds: {where} took longer than timeout={timeout:g}s"
        )
        self.timeout, self.where = timeout, where

    def __reduce__(self) -> tuple:
        return type(self), (self.timeout, self.where)


class ImageError(DataLFlashError, ValueError):
    """An image cannot be read, identified or decoded; the message names its file or its split and
    sample."""
