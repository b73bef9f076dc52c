"""Direct chunk I/O for Zarr arrays whose codecs are exactly what datalflash writes.

zarr-python costs about a millisecond and several buffer copies per call. For arrays with a
regular chunk grid split only along axis 0, default chunk keys, and codecs ``bytes`` (little
endian) optionally followed by ``blosc``, a chunk is one file holding one Blosc frame (or the raw
bytes). :class:`DirectChunkIO` reads such a file into a reused buffer and decodes it with numcodecs
straight into the caller's array, and encodes chunks the same way zarr would. Arrays with any
other layout return None from :func:`direct_io` and are read through zarr.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec

from datalflash.errors import StoreReadError

_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


def direct_io(array: zarr.Array, path: Path, expected_chunks: tuple[int, ...]) -> "DirectChunkIO | None":
    """A :class:`DirectChunkIO` for ``array`` stored at ``path`` if its chunks are
    ``expected_chunks`` (rows per chunk, then the per-sample shape) and its codecs are ours; else None."""
    meta = array.metadata
    codecs = tuple(meta.codecs)
    chunk_shape = tuple(array.chunks)
    if (
        getattr(meta, "zarr_format", None) != 3
        or type(meta.chunk_key_encoding).__name__ != "DefaultChunkKeyEncoding"
        or chunk_shape != expected_chunks
        or 0 in expected_chunks
        or not codecs
        or not isinstance(codecs[0], BytesCodec)
        or (codecs[0].endian is not None and codecs[0].endian.value != "little")
        or len(codecs) > 2
        or (len(codecs) == 2 and not isinstance(codecs[1], BloscCodec))
    ):
        return None
    blosc = None
    if len(codecs) == 2:
        c = codecs[1]
        blosc = numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=_SHUFFLE[c.shuffle.value], blocksize=c.blocksize)
    return DirectChunkIO(path, chunk_shape, meta.chunk_key_encoding, blosc)


class DirectChunkIO:
    """Reads and writes whole chunks of one array as files, bypassing zarr's machinery."""

    def __init__(self, path: Path, chunk_shape: tuple[int, ...], key_encoding, blosc: numcodecs.Blosc | None):
        self.path = Path(path)
        self.chunk_shape = chunk_shape
        self.key_encoding = key_encoding
        self.blosc = blosc

    def chunk_path(self, chunk: int) -> Path:
        """The file holding chunk ``chunk``."""
        key = self.key_encoding.encode_chunk_key((chunk,) + (0,) * (len(self.chunk_shape) - 1))
        return self.path / key

    def read(self, chunk: int, out: np.ndarray) -> None:
        """Decode chunk ``chunk`` into ``out`` (its first ``len(out)`` rows; the rest is padding).

        A compressed chunk is decoded straight from a read-only mapping of its file, so its bytes
        are copied once, by the decoder, from the page cache into ``out``.
        """
        path = self.chunk_path(chunk)
        try:
            with open(path, "rb", buffering=0) as f:
                if self.blosc is None:
                    self._read_exactly(f, memoryview(out.reshape(-1).view(np.uint8)), path)
                    return
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise StoreReadError(f"{path}: chunk file is empty")
                frame = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise StoreReadError(f"{path}: chunk file is missing") from None
        try:
            if len(out) == self.chunk_shape[0]:
                self.blosc.decode(frame, out=out)
            else:  # a partial last chunk is stored padded to the full chunk shape
                padded = np.empty((self.chunk_shape[0], *out.shape[1:]), dtype=out.dtype)
                self.blosc.decode(frame, out=padded)
                out[...] = padded[: len(out)]
        except (RuntimeError, ValueError) as e:
            raise StoreReadError(f"{path}: cannot decode chunk: {e}") from None
        finally:
            frame.close()

    @staticmethod
    def _read_exactly(f, view: memoryview, path: Path) -> None:
        while len(view):
            got = f.readinto(view)
            if not got:
                raise StoreReadError(f"{path}: chunk file ends early (truncated)")
            view = view[got:]

    def write(self, chunk: int, data: np.ndarray) -> None:
        """Encode ``data`` (the chunk's rows; a short last chunk is zero-padded) and write it."""
        if len(data) < self.chunk_shape[0]:
            padded = np.zeros((self.chunk_shape[0], *data.shape[1:]), dtype=data.dtype)
            padded[: len(data)] = data
            data = padded
        data = np.ascontiguousarray(data)
        path = self.chunk_path(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data.view(np.uint8) if self.blosc is None else self.blosc.encode(data))
