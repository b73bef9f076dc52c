"""Zarr v3 backend (the default): ``<store>/<split>.zarr`` is a Zarr group, one array per field,
chunked ``chunk_size`` samples along axis 0 (a smaller split is one chunk of its own size),
Blosc-compressed (lz4 by default), each chunk ending in its CRC-32C (Zarr's ``crc32c`` codec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer.cpu import NDBuffer
from zarr.storage import LocalStore

from datalflash.errors import BackendError, StoreFormatError
from datalflash.store.base import ChunkStore
from datalflash.store.zarr_chunks import DirectChunkIO, direct_io

COMPRESSIONS = ("lz4", "zstd", "none")
ALLOWED_CODECS = frozenset({"bytes", "blosc", "crc32c", "zstd", "gzip", "transpose"})


def check_codecs(array: zarr.Array, where: str) -> None:
    """Refuse an array whose metadata names a codec outside :data:`ALLOWED_CODECS` (a store
    from elsewhere must not make us run, e.g., numcodecs' pickle codec)."""
    raw = array.metadata.to_dict().get("codecs", [])
    names = [c.get("name") if isinstance(c, dict) else getattr(c, "codec_name", None) or type(c).__name__ for c in raw]
    bad = [n for n in names if n not in ALLOWED_CODECS]
    if bad:
        raise StoreFormatError(f"{where}: codecs {bad} are not allowed (allowed: {sorted(ALLOWED_CODECS)})")
SHUFFLES = ("shuffle", "bitshuffle", "noshuffle")


class ZarrChunkStore(ChunkStore):
    """Zarr v3 arrays, readable with plain ``zarr.open_group(store / f"{split}.zarr")``."""

    backend_id = "zarr"

    @classmethod
    def normalize_config(
        cls, compression: Any = "default", clevel: int = 5, shuffle: str = "shuffle"
    ) -> dict:
        """``{"compression": "lz4"|"zstd"|"none", "clevel": 0..9, "shuffle": ...}``."""
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
            any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs) for array, _ in self._handle(split).values()
        )

    def split_path(self, split: str) -> str:
        """The Zarr group of ``split``."""
        return str(self.path / f"{split}.zarr")

    def _compressors(self) -> tuple:
        config = self.manifest.backend_config
        if config["compression"] == "none":
            return (Crc32cCodec(),)
        return (BloscCodec(cname=config["compression"], clevel=config["clevel"], shuffle=config["shuffle"]), Crc32cCodec())

    def _create_split(self, split: str) -> None:
        group = zarr.open_group(self.split_path(split), mode="w-", zarr_format=3)
        n = self.num_samples(split)
        handles = {}
        for name, spec in self.fields.items():
            array = group.create_array(
                name,
                shape=(n, *spec.shape),
                chunks=(self._chunk_rows(split), *(max(d, 1) for d in spec.shape)),
                dtype=spec.storage_dtype,
                compressors=self._compressors(),
                fill_value=0,
                attributes={"datalflash_dtype": spec.dtype},
                config={"write_empty_chunks": True},
            )
            handles[name] = (array, self._direct(split, name, array))
        self._handles[split] = handles

    def _chunk_rows(self, split: str) -> int:
        """Zarr chunk length along axis 0: ``chunk_size``, or the split's size when it is smaller
        (no padding to store for a split that is one short chunk)."""
        return max(1, min(self.chunk_size, self.num_samples(split)))

    def _chunk_dir(self, split: str, field: str) -> tuple[Path, Path | None]:
        """Where ``field``'s chunk files of ``split`` are, and the root they must resolve inside."""
        return Path(self.inside(Path(self.split_path(split)) / field)), self.path

    def _direct(self, split: str, field: str, array: zarr.Array) -> DirectChunkIO | None:
        spec = self.fields[field]
        path, root = self._chunk_dir(split, field)
        # Stores written before small splits got short chunks hold chunk_size rows there.
        for rows in {self._chunk_rows(split), self.chunk_size}:
            direct = direct_io(array, path, (rows, *spec.shape), root=root)
            if direct is not None:
                return direct
        return None

    def _open_group(self, split: str) -> zarr.Group:
        """The Zarr group of ``split``, opened for this process."""
        path = self.inside(self.split_path(split))
        try:
            store = LocalStore(path, read_only=not self.writable)
            return zarr.open_group(store, mode="r+" if self.writable else "r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise StoreFormatError(f"{path}: split {split!r} is missing or not a Zarr v3 group: {e}") from None

    def _open_split(self, split: str) -> dict[str, tuple[zarr.Array, DirectChunkIO | None]]:
        """``{field: (zarr array, direct chunk I/O or None)}``, each array checked against the
        manifest and the codec allow-list."""
        group, path = self._open_group(split), self.split_path(split)
        handles = {}
        for name in self.fields:
            try:
                array = group[name]
            except KeyError:
                raise StoreFormatError(f"{path}: split {split!r} has no array for field {name!r}") from None
            except Exception as e:  # metadata zarr cannot parse (e.g. an unknown codec)
                raise StoreFormatError(f"{path}/{name}: split {split!r} field {name!r}: unusable Zarr metadata: {e}") from None
            direct = self._direct(split, name, array)
            check_codecs(array, f"{path}/{name}")
            self.check_array(split, name, array.shape, array.dtype, f"{path}/{name}")
            handles[name] = (array, direct)
        return handles

    def _close(self, handle: Any) -> None:
        pass  # zarr arrays and DirectChunkIO hold no open files

    def _write_rows(self, split: str, field: str, start: int, data: np.ndarray) -> None:
        array, direct = self._handle(split)[field]
        if direct is None:
            array[start : start + len(data)] = data
        else:
            direct.write(start // self.chunk_size, data)

    def _read_rows(self, split: str, field: str, start: int, stop: int, out: np.ndarray) -> None:
        array, direct = self._handle(split)[field]
        if direct is None:
            array.get_basic_selection(np.s_[start:stop], out=NDBuffer.from_numpy_array(out))
            return
        for row in range(start, stop, self.chunk_size):
            rows, chunk = min(self.chunk_size, stop - row), row // self.chunk_size
            direct.read(chunk, out[row - start : row - start + rows], verify=self.needs_check(split, chunk))
