"""Direct chunk I/O for Zarr arrays whose codecs are exactly what datalflash writes.

zarr-python costs about a millisecond and several buffer copies per call. For arrays with a
regular chunk grid split only along axis 0, default chunk keys, and codecs ``bytes`` (little
endian), optionally ``blosc``, optionally ``crc32c``, a chunk is one file holding one Blosc frame
(or the raw bytes), followed by the CRC-32C of what precedes it. :class:`DirectChunkIO` decodes
such a file with numcodecs straight into the caller's array, checks the CRC when asked, and
encodes chunks the same way zarr would. Arrays with any other layout return None from
:func:`direct_io` and are read through zarr (which checks a ``crc32c`` codec on every read).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from datalflash.errors import ChecksumError, StoreReadError
from datalflash.store.base import crc32c, inside

CRC_BYTES = 4

_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


def direct_io(array: zarr.Array, path: Path, expected_chunks: tuple[int, ...], root: Path | None = None) -> "DirectChunkIO | None":
    """A :class:`DirectChunkIO` for ``array`` stored at ``path`` if its chunks are
    ``expected_chunks`` (rows per chunk, then the per-sample shape) and its codecs are ours; else None."""
    meta = array.metadata
    codecs = tuple(meta.codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    if checksum:
        codecs = codecs[:-1]
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
    return DirectChunkIO(path, chunk_shape, meta.chunk_key_encoding, blosc, checksum, root)


class DirectChunkIO:
    """Reads and writes whole chunks of one array as files, bypassing zarr's machinery."""

    def __init__(
        self, path: Path, chunk_shape: tuple[int, ...], key_encoding, blosc: numcodecs.Blosc | None,
        checksum: bool = False, root: Path | None = None,
    ):
        self.root = root  # chunk files must resolve inside it (when given)
        self.path = Path(path)
        self.chunk_shape = chunk_shape
        self.key_encoding = key_encoding
        self.blosc = blosc
        self.checksum = checksum

    def chunk_path(self, chunk: int) -> Path:
        """The file holding chunk ``chunk``."""
        key = self.key_encoding.encode_chunk_key((chunk,) + (0,) * (len(self.chunk_shape) - 1))
        return self.path / key

    def read(self, chunk: int, out: np.ndarray, verify: bool = False) -> None:
        """Decode chunk ``chunk`` into ``out`` (its first ``len(out)`` rows; the rest is padding),
        checking its CRC-32C first when ``verify`` (and the array has one).

        The chunk is decoded straight from a read-only mapping of its file, so its bytes are
        copied once, by the decoder, from the page cache into ``out``.
        """
        path = self.chunk_path(chunk)
        if self.root is not None:
            inside(self.root, path)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise StoreReadError(f"{path}: chunk file is empty")
                frame = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise StoreReadError(f"{path}: chunk file is missing") from None
        try:
            self.decode(np.frombuffer(frame, dtype=np.uint8), out, verify, str(path))
        finally:
            frame.close()

    def decode(self, encoded: np.ndarray, out: np.ndarray, verify: bool, where: str) -> None:
        """Check (when ``verify``) and decode the stored bytes of one chunk into ``out``."""
        payload = encoded
        try:
            if self.checksum:
                if len(encoded) < CRC_BYTES:
                    raise StoreReadError(f"{where}: chunk file is truncated ({len(encoded)} bytes)")
                payload, stored = encoded[:-CRC_BYTES], int.from_bytes(encoded[-CRC_BYTES:].tobytes(), "little")
                if verify and crc32c(payload) != stored:
                    raise ChecksumError(f"{where}: CRC-32C mismatch: stored {stored:#010x}, data {crc32c(payload):#010x}")
            full = len(out) == self.chunk_shape[0]
            target = out if full else np.empty((self.chunk_shape[0], *out.shape[1:]), dtype=out.dtype)
            if self.blosc is None:
                flat = target.reshape(-1).view(np.uint8)
                if len(payload) != flat.nbytes:
                    raise StoreReadError(f"{where}: chunk holds {len(payload)} bytes, expected {flat.nbytes} (truncated?)")
                flat[...] = payload
            else:
                self.blosc.decode(payload, out=target)
            if not full:  # a partial last chunk is stored padded to the full chunk shape
                out[...] = target[: len(out)]
        except (RuntimeError, ValueError) as e:
            raise StoreReadError(f"{where}: cannot decode chunk: {e}") from None
        finally:
            del payload, encoded

    def write(self, chunk: int, data: np.ndarray) -> None:
        """Encode ``data`` (the chunk's rows; a short last chunk is zero-padded) and write it."""
        if len(data) < self.chunk_shape[0]:
            padded = np.zeros((self.chunk_shape[0], *data.shape[1:]), dtype=data.dtype)
            padded[: len(data)] = data
            data = padded
        data = np.ascontiguousarray(data)
        path = self.chunk_path(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = data.reshape(-1).view(np.uint8) if self.blosc is None else np.frombuffer(self.blosc.encode(data), np.uint8)
        with open(path, "wb") as f:
            f.write(encoded)
            if self.checksum:
                f.write(crc32c(encoded).to_bytes(CRC_BYTES, "little"))
