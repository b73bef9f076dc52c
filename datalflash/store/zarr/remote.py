"""Zarr stores opened by URL (``s3://``, ``gs://``, ``http(s)://``, ``memory://``...), read-only,
through fsspec and zarr's own ``FsspecStore``.

The manifest and the arrays' metadata are read through zarr; each chunk is fetched with one
``cat_file`` request and decoded (CRC-32C checked) by the same code as local chunks. The
filesystem packages are optional: ``pip install 'datalflash[remote]'`` (fsspec, s3fs).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

import numpy as np

from datalflash.errors import BackendError, StoreFormatError, StoreReadError
from datalflash.format.manifest import MANIFEST_NAME, manifest_from_bytes, parse_manifest
from datalflash.store.zarr.cache import ChunkCache
from datalflash.store.zarr.store import ZarrChunkStore

REMOTE_READ_THREADS = 32  # chunk reads in flight (threads wait on the network, not the CPU)


def is_url(path: Any) -> bool:
    """Whether ``path`` names a store by URL (``scheme://...``, not a local file path)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _filesystem(url: str, storage_options: dict | None):
    try:
        import fsspec
    except ImportError:
        raise BackendError("opening stores by URL needs fsspec: pip install 'datalflash[remote]'") from None
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise BackendError(f"{url}: no filesystem for this URL ({e}); pip install 'datalflash[remote]'") from None
    return fs, root.rstrip("/")


def open_remote_store(
    url: str,
    *,
    verify: str = "first",
    storage_options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_bytes: int = 10 * 2**30,
) -> RemoteZarrChunkStore:
    """Open the Zarr store at ``url`` read-only; ``storage_options`` go to fsspec (endpoint, keys).
    With ``cache_dir``, chunk objects are kept there (at most ``cache_bytes``, shared safely by
    processes; see :mod:`datalflash.store.zarr.cache`)."""
    fs, root = _filesystem(url, storage_options)
    where = f"{url.rstrip('/')}/{MANIFEST_NAME}"
    try:
        raw = bytes(fs.cat_file(f"{root}/{MANIFEST_NAME}"))
    except FileNotFoundError:
        raise StoreFormatError(f"{url}: not a datalflash store (no {MANIFEST_NAME})") from None
    except OSError as e:
        raise StoreReadError(f"{where}: cannot read the manifest: {e}") from e
    manifest = manifest_from_bytes(raw, where)
    if manifest.backend_id != "zarr":
        raise BackendError(f"{url}: only zarr stores open by URL, this one is {manifest.backend_id!r}")
    store = RemoteZarrChunkStore(url, manifest, verify=verify)
    store.fs, store.root, store.storage_options = fs, root, dict(storage_options or {})
    store.use_cache(cache_dir, cache_bytes)
    return store


class RemoteZarrChunkStore(ZarrChunkStore):
    """A Zarr store behind a URL (see :func:`open_remote_store`); read-only."""

    read_threads = REMOTE_READ_THREADS

    def __init__(self, url: str, manifest, *, writable: bool = False, verify: str = "first"):
        if writable:
            raise BackendError(f"{url}: stores opened by URL are read-only")
        super().__init__(url, manifest, verify=verify)
        self.path = url.rstrip("/")  # a URL, not a local Path
        self.fs, self.root, self.storage_options = None, "", {}
        self._fetched = threading.local()  # objects fetched for the read_chunks call of this thread
        self.cache: ChunkCache | None = None
        self._cache_args: tuple = (None, 0)

    def use_cache(self, directory: str | os.PathLike | None, budget_bytes: int) -> None:
        """Keep chunk objects in a local :class:`ChunkCache` at ``directory`` (None: no cache)."""
        self._cache_args = (str(directory) if directory is not None else None, budget_bytes)
        self.cache = ChunkCache(directory, budget_bytes) if directory is not None else None
        doc = json.dumps(self.manifest.to_json(), sort_keys=True)
        self._namespace = f"{self.path}\0{hashlib.sha256(doc.encode()).hexdigest()}"

    def split_path(self, split: str) -> str:
        return f"{self.path}/{split}.zarr"

    def _open_group(self, split: str):
        import zarr
        from zarr.storage import FsspecStore

        # this process's filesystem: fsspec caches one per process, and s3fs's cannot cross a fork
        self.fs, self.root = _filesystem(self.path, self.storage_options)
        where = self.split_path(split)
        try:
            store = FsspecStore.from_url(where, storage_options=self.storage_options or None, read_only=True)
            return zarr.open_group(store, mode="r", zarr_format=3)
        except Exception as e:  # zarr and fsspec raise many types for a missing or bad group
            raise StoreFormatError(f"{where}: split {split!r} is missing or not a Zarr v3 group: {e}") from None

    def _chunk_dir(self, split: str, field: str) -> tuple[str, None]:
        return f"{self.root}/{split}.zarr/{field}", None  # object keys: no local links to follow

    def read_chunks(self, split, chunks, out=None):
        """Fetch the chunks' objects of every field in one ``fs.cat`` (concurrent requests on
        async filesystems such as s3fs), then decode them as :meth:`ChunkStore.read_chunks` does."""
        keys = [
            str(direct.chunk_path(c))
            for _, direct in self._handle(split).values()
            if direct is not None
            for c in chunks
        ]
        objects, cached = {}, set()
        if self.cache is not None:
            for key in keys:
                data = self.cache.get(self._namespace, key.lstrip("/"))
                if data is not None:
                    objects[key.lstrip("/")] = data
                    cached.add(key.lstrip("/"))
        missing = [k for k in keys if k.lstrip("/") not in objects]
        try:
            fetched = self.fs.cat(missing, on_error="omit") if missing else {}
        except Exception:  # a failed batch: each chunk is fetched alone, with retries, below
            fetched = {}
        for key, data in fetched.items():
            objects[key.lstrip("/")] = data
            if self.cache is not None:
                self.cache.put(self._namespace, key.lstrip("/"), bytes(data))
        self._fetched.objects, self._fetched.cached = objects, cached
        try:
            return super().read_chunks(split, chunks, out)
        finally:
            self._fetched.objects, self._fetched.cached = {}, set()

    def _read_rows(self, split: str, field: str, start: int, stop: int, out: np.ndarray) -> None:
        array, direct = self._handle(split)[field]
        if direct is None:
            return super()._read_rows(split, field, start, stop, out)
        prefetched = getattr(self._fetched, "objects", {})
        for row in range(start, stop, self.chunk_size):
            rows, chunk = min(self.chunk_size, stop - row), row // self.chunk_size
            key = str(direct.chunk_path(chunk))
            try:
                encoded = prefetched.pop(key.lstrip("/"), None)
                if encoded is None:
                    encoded = self.fs.cat_file(key)
            except FileNotFoundError:
                raise StoreReadError(
                    f"{self.path}: split {split!r} field {field!r} chunk {chunk}: {key} is missing"
                ) from None
            dest = out[row - start : row - start + rows]
            if key.lstrip("/") in getattr(self._fetched, "cached", ()):
                try:  # from the local cache: always checked, dropped and fetched again if bad
                    direct.decode(np.frombuffer(encoded, dtype=np.uint8), dest, True, f"{self.path}: {key}")
                    continue
                except StoreReadError:
                    self.cache.drop(self._namespace, key.lstrip("/"))
                    encoded = self.fs.cat_file(key)
            direct.decode(
                np.frombuffer(encoded, dtype=np.uint8), dest, self.needs_check(split, chunk), f"{self.path}: {key}"
            )

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "storage_options": self.storage_options, "cache": self._cache_args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], parse_manifest(state["manifest"]), verify=state.get("verify", "first"))
        self.storage_options = state.get("storage_options", {})
        self.use_cache(*state.get("cache", (None, 0)))
