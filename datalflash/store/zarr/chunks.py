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
import struct
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from datalflash.errors import ChecksumError, StoreFormatError, StoreReadError
from datalflash.store.files import preallocate
from datalflash.store.integrity import crc32c, inside, open_file

CRC_BYTES = 4
BLOSC_HEADER_BYTES = 16
BLOSC_MEMCPYED = 0x02  # header flag: the frame holds the bytes as they are
BLOSC_MAX_BYTES = 2**31 - 1 - BLOSC_HEADER_BYTES  # the most a Blosc frame holds
MIN_HEADER_SAMPLE = 64 * 1024  # Blosc sizes the blocks of anything this large alike
PROBES = 4  # runs of rows a large chunk's compressibility is judged by
PROBE_BYTES = 256 * 1024  # bytes in those runs together
MIN_PROBED_BYTES = 4 * 2**20  # smaller chunks are simply compressed
INCOMPRESSIBLE = 0.98  # a sample the codec cannot shrink below this fraction: store the chunk as is

_SHUFFLE = {
    "noshuffle": numcodecs.Blosc.NOSHUFFLE,
    "shuffle": numcodecs.Blosc.SHUFFLE,
    "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
}


def direct_io(
    meta: Any, path: Path, expected_chunks: tuple[int, ...], root: Path | None = None, shown: Path | None = None
) -> DirectChunkIO | None:
    """A :class:`DirectChunkIO` for the array with metadata ``meta`` (an array's ``.metadata``)
    stored at ``path`` if its chunks are ``expected_chunks`` (rows per chunk, then the
    per-sample shape) and its codecs are ours; else None."""
    if getattr(meta, "zarr_format", None) != 3:
        return None
    codecs = tuple(meta.codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    if checksum:
        codecs = codecs[:-1]
    chunk_shape = tuple(getattr(meta.chunk_grid, "chunk_shape", ()))
    if (
        type(meta.chunk_key_encoding).__name__ != "DefaultChunkKeyEncoding"
        or getattr(meta.chunk_key_encoding, "separator", None) not in ("/", ".")
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
        blosc = blosc_codec(c.cname.value, c.clevel, c.shuffle.value, c.blocksize)
    return DirectChunkIO(path, chunk_shape, meta.chunk_key_encoding.separator, blosc, checksum, root, shown)


def blosc_codec(cname: str, clevel: int, shuffle: str, blocksize: int = 0) -> numcodecs.Blosc:
    """numcodecs' Blosc codec for a Zarr ``blosc`` codec's configuration."""
    return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=_SHUFFLE[shuffle], blocksize=blocksize)


def check_frame(header: bytes, size: int, nbytes: int, where: str) -> None:
    """Raise StoreFormatError unless a Blosc frame of ``size`` bytes starting with ``header`` is
    whole and decodes to exactly ``nbytes`` bytes (a decoder given a short frame fills only part
    of its output, leaving the rest of a reused buffer as it was)."""
    if size < BLOSC_HEADER_BYTES or len(header) < BLOSC_HEADER_BYTES:
        raise StoreFormatError(f"{where}: a Blosc frame of {size} bytes has no whole header")
    decoded, framed = struct.unpack_from("<I", header, 4)[0], struct.unpack_from("<I", header, 12)[0]
    if decoded != nbytes:
        raise StoreFormatError(f"{where}: the chunk decodes to {decoded} bytes, its shape needs {nbytes}")
    if framed != size:
        raise StoreFormatError(f"{where}: the Blosc frame says {framed} bytes, the chunk file holds {size}")


class DirectChunkIO:
    """Reads and writes whole chunks of one array as files, bypassing zarr's machinery."""

    def __init__(
        self,
        path: Path,
        chunk_shape: tuple[int, ...],
        separator: str,
        blosc: numcodecs.Blosc | None,
        checksum: bool = False,
        root: Path | None = None,
        shown: Path | None = None,
    ):
        self.root = root  # chunk files must resolve inside it (when given)
        self.path = Path(path)
        self.shown = Path(shown) if shown is not None else self.path  # the array's path in messages
        self.chunk_shape = chunk_shape
        self.separator = separator  # of the default chunk key encoding
        self.blosc = blosc
        self.checksum = checksum

    def chunk_path(self, chunk: int) -> Path:
        """The file holding chunk ``chunk``."""
        coords = (chunk,) + (0,) * (len(self.chunk_shape) - 1)
        return self.path / self.separator.join(["c", *map(str, coords)])

    def read(self, chunk: int, out: np.ndarray, verify: bool = False, recorded: int | None = None) -> None:
        """Decode chunk ``chunk`` into ``out`` (its first ``len(out)`` rows; the rest is padding),
        checking its CRC-32C first when ``verify`` (and the array has one), and that the CRC it
        ends with is ``recorded`` (the manifest's) when given.

        The chunk is decoded straight from a read-only mapping of its file, so its bytes are
        copied once, by the decoder, from the page cache into ``out``.
        """
        path, shown = self.chunk_path(chunk), self.shown_path(chunk)
        if self.root is not None:
            inside(self.root, path)
        try:
            fd, st = open_file(path, shown)  # (a FIFO must not block us)
        except FileNotFoundError:
            raise StoreReadError(f"{shown}: chunk file is missing") from None
        try:
            if st.st_size == 0:
                raise StoreReadError(f"{shown}: chunk file is empty")
            frame = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            self.decode(np.frombuffer(frame, dtype=np.uint8), out, verify, str(shown), recorded)
        finally:
            frame.close()

    def shown_path(self, chunk: int) -> Path:
        """Chunk ``chunk``'s file as error messages name it (under the store's own path)."""
        return self.shown / self.chunk_path(chunk).relative_to(self.path)

    def decode(
        self, encoded: np.ndarray, out: np.ndarray, verify: bool, where: str, recorded: int | None = None
    ) -> None:
        """Check (when ``verify``) and decode the stored bytes of one chunk into ``out``. A
        chunk that does not end with the CRC ``recorded`` for it is another chunk (of another
        generation or place): ChecksumError, whatever ``verify`` says (4 bytes compared)."""
        payload = encoded
        try:
            if self.checksum:
                if len(encoded) < CRC_BYTES:
                    raise StoreReadError(f"{where}: chunk file is truncated ({len(encoded)} bytes)")
                payload, stored = encoded[:-CRC_BYTES], int.from_bytes(encoded[-CRC_BYTES:].tobytes(), "little")
                if recorded is not None and stored != recorded:
                    raise ChecksumError(
                        f"{where}: not the chunk the manifest lists (it ends with CRC-32C {stored:#010x}, the "
                        f"manifest records {recorded:#010x}): replaced, or moved from another place or store"
                    )
                if verify and crc32c(payload) != stored:
                    raise ChecksumError(
                        f"{where}: CRC-32C mismatch: stored {stored:#010x}, data {crc32c(payload):#010x}"
                    )
            full = len(out) == self.chunk_shape[0]
            target = out if full else np.empty((self.chunk_shape[0], *out.shape[1:]), dtype=out.dtype)
            if self.blosc is None:
                flat = target.reshape(-1).view(np.uint8)
                if len(payload) != flat.nbytes:
                    raise StoreFormatError(
                        f"{where}: chunk holds {len(payload)} bytes, the chunk's shape {self.chunk_shape} "
                        f"needs {flat.nbytes}"
                    )
                flat[...] = payload
            else:
                check_frame(payload[:BLOSC_HEADER_BYTES].tobytes(), len(payload), target.nbytes, where)
                self.blosc.decode(payload, out=target)
            if not full:  # a partial last chunk is stored padded to the full chunk shape
                out[...] = target[: len(out)]
        except (StoreFormatError, StoreReadError):
            raise
        except (RuntimeError, ValueError) as e:
            raise StoreReadError(f"{where}: cannot decode chunk: {e}") from None
        finally:
            del payload, encoded

    def write(self, chunk: int, data: np.ndarray) -> int | None:
        """Encode ``data`` (the chunk's rows; a short last chunk is zero-padded) and write it;
        returns the CRC-32C the file ends with (None: the array keeps none)."""
        if len(data) < self.chunk_shape[0]:
            padded = np.zeros((self.chunk_shape[0], *data.shape[1:]), dtype=data.dtype)
            padded[: len(data)] = data
            data = padded
        data = np.ascontiguousarray(data)
        path = self.chunk_path(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = data.reshape(-1).view(np.uint8) if self.blosc is None else np.frombuffer(self.encode(data), np.uint8)
        crc = crc32c(encoded) if self.checksum else None
        with open(path, "wb") as f:
            preallocate(f.fileno(), 0, len(encoded) + CRC_BYTES * self.checksum)
            f.write(encoded.data)
            if crc is not None:
                f.write(crc.to_bytes(CRC_BYTES, "little"))
        return crc

    def encode(self, data: np.ndarray) -> bytes:
        """One Blosc frame of ``data``. A large chunk whose sample (:data:`PROBES` runs of rows
        spread through it) the codec cannot shrink below :data:`INCOMPRESSIBLE` of its size is
        stored as Blosc stores what it cannot compress (a frame flagged as a plain copy, which
        every Blosc decoder reads), without compressing it all in vain (~4x the time)."""
        if data.nbytes < MIN_PROBED_BYTES or self._compressible(data):
            return self._codec.encode(data)
        return self._copier().encode(data)

    def start(self, chunk: int, rows: int, first: np.ndarray) -> StreamedChunk | GatheredChunk:
        """A writer of chunk ``chunk`` (``rows`` rows) that takes its rows piece by piece,
        ``first`` being the first piece. Chunks stored as they are (no Blosc; or full, large
        ones whose first piece the codec cannot shrink, see :meth:`encode`) go to the file as
        the pieces come; the others are gathered and compressed by :meth:`write` at the end."""
        nbytes = first.nbytes // max(len(first), 1) * self.chunk_shape[0]
        if self.blosc is None:
            return StreamedChunk(self, chunk, b"", nbytes)
        if (
            rows == self.chunk_shape[0]  # (a short chunk's zero padding may well compress)
            and MIN_PROBED_BYTES <= nbytes <= BLOSC_MAX_BYTES
            and first.nbytes >= MIN_HEADER_SAMPLE
            and not self._compressible(first)
        ):
            header = self._copy_frame_header(first, nbytes)
            if header is not None:
                return StreamedChunk(self, chunk, header, nbytes)
        return GatheredChunk(self, chunk, first)

    @property
    def _codec(self) -> numcodecs.Blosc:
        """The array's Blosc codec (only asked for where there is one)."""
        if self.blosc is None:
            raise RuntimeError(f"{self.path}: the array has no Blosc codec")
        return self.blosc

    def _compressible(self, data: np.ndarray) -> bool:
        """Whether the codec shrinks a sample of ``data`` (runs of rows spread through it)
        below :data:`INCOMPRESSIBLE` of its size."""
        rows = len(data)
        run = max(1, PROBE_BYTES // PROBES // max(data.nbytes // max(rows, 1), 1))
        if rows > 2 * PROBES * run:
            data = np.concatenate([data[s : s + run] for s in np.linspace(0, rows - run, PROBES).astype(np.int64)])
        return len(self._codec.encode(data)) < INCOMPRESSIBLE * data.nbytes

    def _copier(self) -> numcodecs.Blosc:
        """The codec with compression level 0: Blosc frames holding the bytes as they are."""
        b = self._codec
        return numcodecs.Blosc(cname=b.cname, clevel=0, shuffle=b.shuffle, blocksize=b.blocksize)

    def _copy_frame_header(self, sample: np.ndarray, nbytes: int) -> bytes | None:
        """The 16-byte header Blosc gives a plain-copy frame of ``nbytes`` bytes like ``sample``
        (taken from Blosc's own frame of ``sample``, its sizes set to ``nbytes``); None if
        Blosc did not make ``sample`` a plain-copy frame."""
        header = bytearray(self._copier().encode(sample)[:BLOSC_HEADER_BYTES])
        if not header[2] & BLOSC_MEMCPYED:
            return None
        struct.pack_into("<I", header, 4, nbytes)  # uncompressed size
        struct.pack_into("<I", header, 12, nbytes + BLOSC_HEADER_BYTES)  # frame size
        return bytes(header)


class StreamedChunk:
    """Writes one chunk's file as its rows come: ``header``, the rows, zeros up to ``nbytes``
    (a short last chunk's padding), then the CRC-32C of all that when the array has one."""

    def __init__(self, io: DirectChunkIO, chunk: int, header: bytes, nbytes: int):
        path = io.chunk_path(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 (the writer owns it across add() calls; finish/close close it)
        preallocate(self._file.fileno(), 0, len(header) + nbytes + CRC_BYTES * io.checksum)
        self._file.write(header)
        self._crc = crc32c(header)
        self._left = nbytes
        self._checksum = io.checksum

    def add(self, rows: np.ndarray) -> None:
        """Append the next C-contiguous rows."""
        flat = rows.reshape(-1).view(np.uint8)
        if len(flat) > self._left:
            raise ValueError(f"{self._file.name}: more rows than the chunk holds")
        self._crc = crc32c(flat, self._crc)
        self._file.write(flat.data)
        self._left -= len(flat)

    def finish(self) -> int | None:
        """Pad, append the checksum and close the file; returns that checksum (None: none)."""
        if self._left:
            self.add(np.zeros(self._left, np.uint8))
        if self._checksum:
            self._file.write(self._crc.to_bytes(CRC_BYTES, "little"))
        self._file.close()
        return self._crc if self._checksum else None

    def close(self) -> None:
        """Close the file (after :meth:`finish`, or leaving a partial chunk after an error)."""
        self._file.close()


class GatheredChunk:
    """Gathers one chunk's rows as they come, then writes it with :meth:`DirectChunkIO.write`."""

    def __init__(self, io: DirectChunkIO, chunk: int, first: np.ndarray):
        self._io, self._chunk, self._filled = io, chunk, 0
        self._rows = np.empty((io.chunk_shape[0], *first.shape[1:]), dtype=first.dtype)

    def add(self, rows: np.ndarray) -> None:
        """Append the next rows (copied: the caller may reuse them)."""
        self._rows[self._filled : self._filled + len(rows)] = rows
        self._filled += len(rows)

    def finish(self) -> int | None:
        """Encode and write the chunk; returns the CRC-32C its file ends with (None: none)."""
        return self._io.write(self._chunk, self._rows[: self._filled])

    def close(self) -> None:
        """Nothing to release."""
