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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from datalflash.errors import BackendError, ChecksumError, StoreChangedError, StoreFormatError, StoreReadError
from datalflash.format.manifest import MANIFEST_NAME, Manifest, manifest_from_bytes, parse_manifest
from datalflash.store.base import Fetched
from datalflash.store.zarr.cache import ChunkCache
from datalflash.store.zarr.chunks import DirectChunkIO
from datalflash.store.zarr.store import ZarrChunkStore

REMOTE_READ_THREADS = 32  # chunk reads in flight (threads wait on the network, not the CPU)
REMOTE_TIMEOUT = 30.0  # seconds one request (or one batch of them) may take before it is an error


def request(fs: Any, method: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)``, bounded by ``timeout`` seconds on asynchronous
    filesystems (s3fs, gcsfs, http: fsspec runs them on its event loop and gives up then, however
    the endpoint stalls); a timeout is a ``TimeoutError``. Synchronous filesystems run unbounded."""
    if getattr(fs, "async_impl", False):
        try:
            return getattr(fs, method)(*args, timeout=timeout, **kwargs)
        except TimeoutError as e:  # (fsspec's FSTimeoutError is one)
            raise TimeoutError(f"no answer within {timeout:g} s") from e
    return getattr(fs, method)(*args, **kwargs)


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
    timeout: float = REMOTE_TIMEOUT,
) -> RemoteZarrChunkStore:
    """Open the Zarr store at ``url`` read-only; ``storage_options`` go to fsspec (endpoint, keys).
    With ``cache_dir``, chunk objects are kept there (at most ``cache_bytes``, shared safely by
    processes; see :mod:`datalflash.store.zarr.cache`). A request (a batch of chunk requests) that
    takes longer than ``timeout`` seconds is a StoreReadError (see :func:`request`)."""
    fs, root = _filesystem(url, storage_options)
    where = f"{url.rstrip('/')}/{MANIFEST_NAME}"
    try:
        raw = bytes(request(fs, "cat_file", f"{root}/{MANIFEST_NAME}", timeout=timeout))
    except FileNotFoundError:
        raise StoreFormatError(f"{url}: not a datalflash store (no {MANIFEST_NAME})") from None
    except OSError as e:
        raise StoreReadError(f"{where}: cannot read the manifest: {e}") from e
    manifest = manifest_from_bytes(raw, where)
    if manifest.backend_id != "zarr":
        raise BackendError(f"{url}: only zarr stores open by URL, this one is {manifest.backend_id!r}")
    return RemoteZarrChunkStore(
        url,
        manifest,
        verify=verify,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_bytes=cache_bytes,
        timeout=timeout,
    )


class RemoteZarrChunkStore(ZarrChunkStore):
    """A Zarr store behind a URL (see :func:`open_remote_store`); read-only."""

    read_threads = REMOTE_READ_THREADS

    def __init__(
        self,
        url: str,
        manifest: Manifest,
        *,
        writable: bool = False,
        verify: str = "first",
        storage_options: dict | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_bytes: int = 10 * 2**30,
        timeout: float = REMOTE_TIMEOUT,
    ) -> None:
        if writable:
            raise BackendError(f"{url}: stores opened by URL are read-only")
        super().__init__(url.rstrip("/"), manifest, verify=verify)
        self.storage_options = dict(storage_options or {})
        self.timeout = timeout  # seconds a request (or batch) may take
        self.fs, self.prefix = _filesystem(self.path, self.storage_options)
        self.cache_dir, self.cache_bytes = (os.fspath(cache_dir) if cache_dir is not None else None), cache_bytes
        self.cache = ChunkCache(cache_dir, cache_bytes) if cache_dir is not None else None
        doc = json.dumps(self.manifest.to_json(), sort_keys=True)
        self._namespace = f"{self.path}\0{hashlib.sha256(doc.encode()).hexdigest()}"

    def split_path(self, split: str) -> str:
        return f"{self.path}/{split}.zarr"

    def _open_group(self, split: str) -> zarr.Group:
        from zarr.storage import FsspecStore

        # this process's filesystem: fsspec caches one per process, and s3fs's cannot cross a fork
        self.fs, self.prefix = _filesystem(self.path, self.storage_options)
        where = self.split_path(split)
        try:  # a stalled endpoint would hang zarr: one bounded request first
            request(self.fs, "cat_file", f"{self.prefix}/{split}.zarr/zarr.json", timeout=self.timeout)
        except TimeoutError as e:
            raise StoreReadError(f"{where}: cannot open split {split!r}: {e}") from e
        except OSError:
            pass  # missing or unreadable: zarr says which, below
        try:
            store = FsspecStore.from_url(where, storage_options=self.storage_options or None, read_only=True)
            return zarr.open_group(store, mode="r", zarr_format=3)
        except Exception as e:  # zarr and fsspec raise many types for a missing or bad group
            raise StoreFormatError(f"{where}: split {split!r} is missing or not a Zarr v3 group: {e}") from None

    def _has_metadata(self, split: str, field: str) -> bool:
        return bool(request(self.fs, "exists", f"{self.prefix}/{split}.zarr/{field}/zarr.json", timeout=self.timeout))

    def root(self) -> str:
        """The store's URL (objects have no directory to pin; a changed generation is detected
        by reading the manifest with each batch of chunks, see :meth:`_fetch`)."""
        return self.path

    def _chunk_dir(self, split: str, field: str) -> tuple[Path, None, Path]:
        key = Path(f"{self.prefix}/{split}.zarr/{field}")
        return key, None, key  # object keys: no local links to follow

    def _fetch(self, split: str, chunks: Sequence[int]) -> Fetched:
        """Every field's objects of ``chunks`` (``{key: (bytes, from the cache)}``): from the
        local cache where it has them, the rest in one ``fs.cat`` (concurrent requests on async
        filesystems such as s3fs). Objects a failed batch misses are fetched one by one later."""
        paths = [
            str(direct.chunk_path(c))
            for _, direct in self._handle(split).values()
            if direct is not None
            for c in chunks
        ]
        paths += [  # the values of ragged fields (an empty chunk's values have no object: omitted)
            str(self._values_io(split, name, c, 1).chunk_path(0))
            for name, spec in self.fields.items()
            if spec.ragged
            for c in chunks
        ]
        objects: dict[str, tuple[bytes, bool]] = {}
        if self.cache is not None:
            for path in paths:
                data = self.cache.get(self._namespace, path.lstrip("/"))
                if data is not None:
                    objects[path.lstrip("/")] = (data, True)
        missing = [path for path in paths if path.lstrip("/") not in objects]
        manifest_key = f"{self.prefix}/{MANIFEST_NAME}"
        if missing and self.manifest.generation:  # read along with the chunks: still our generation?
            missing.append(manifest_key)
        try:
            fetched = request(self.fs, "cat", missing, on_error="omit", timeout=self.timeout) if missing else {}
        except TimeoutError as e:  # a stalled endpoint: no point asking again chunk by chunk
            raise StoreReadError(f"{self.path}: split {split!r} chunks {list(chunks)}: {e}") from e
        except Exception:  # a failed batch: each chunk is fetched alone, with retries, when read
            fetched = {}
        manifest_keys = [k for k in fetched if k.lstrip("/") == manifest_key.lstrip("/")]
        self._check_generation(fetched.pop(manifest_keys[0]) if manifest_keys else None)
        for key, data in fetched.items():
            objects[key.lstrip("/")] = (bytes(data), False)
            if self.cache is not None:
                self.cache.put(self._namespace, key.lstrip("/"), bytes(data))
        return objects

    def _check_generation(self, raw: bytes | None) -> None:
        """StoreChangedError if the manifest ``raw`` (read with a batch of chunks) names another
        generation than the one this store opened (best effort: object stores have no rename)."""
        if raw is None:
            return
        try:
            generation = json.loads(raw).get("generation", "")
        except (ValueError, AttributeError):
            generation = None
        if generation != self.manifest.generation:
            raise StoreChangedError(
                f"{self.path}: the store was replaced (generation {self.manifest.generation} opened, "
                f"{generation or 'another'} there now); open it again to read the new one"
            )

    @staticmethod
    def _key(direct: DirectChunkIO, chunk: int) -> str:
        return str(direct.chunk_path(chunk)).lstrip("/")

    def _read_chunk(
        self,
        split: str,
        field: str,
        direct: DirectChunkIO,
        chunk: int,
        out: np.ndarray,
        fetched: Fetched | None,
        key: str,
        index: int | None = None,
    ) -> None:
        """Decode one chunk object (fetched with a batch, from the cache, or fetched alone) into
        ``out``: see :meth:`ZarrChunkStore._read_chunk`."""
        recorded = self._recorded_checksum(split, key, chunk)
        index = chunk if index is None else index
        name = self._key(direct, index)
        where = f"{self.path}: {name}"
        data, cached = (fetched or {}).get(name, (None, False))
        try:
            if data is None:
                data = request(self.fs, "cat_file", str(direct.chunk_path(index)), timeout=self.timeout)
        except FileNotFoundError:
            raise StoreReadError(
                f"{self.path}: split {split!r} field {field!r} chunk {chunk}: {name} is missing"
            ) from None
        if cached and self.cache is not None:
            try:  # from the local cache: always checked, dropped and fetched again if bad
                direct.decode(np.frombuffer(data, dtype=np.uint8), out, True, where, recorded)
                return
            except StoreReadError:
                self.cache.drop(self._namespace, name)
                data = request(self.fs, "cat_file", str(direct.chunk_path(index)), timeout=self.timeout)
                self._decode(direct, data, out, True, where, recorded)
                self.cache.put(self._namespace, name, bytes(data))  # (the good copy, cached again)
                return
        self._decode(direct, data, out, self.checksums.due(split, chunk), where, recorded)

    def _manifest_now(self) -> bytes | None:
        """The manifest's bytes as the object store has them now (None if it cannot say)."""
        try:
            return bytes(request(self.fs, "cat_file", f"{self.prefix}/{MANIFEST_NAME}", timeout=self.timeout))
        except Exception:  # (gone mid-upload, or unreachable: the caller's error stands)
            return None

    def _decode(
        self, direct: DirectChunkIO, data: bytes, out: np.ndarray, verify: bool, where: str, recorded: int | None
    ) -> None:
        """Decode an object fetched from the store; one that is not the chunk the manifest lists
        may be a new store's, uploaded over this one: StoreChangedError if the manifest says so."""
        try:
            direct.decode(np.frombuffer(data, dtype=np.uint8), out, verify, where, recorded)
        except ChecksumError:
            self._check_generation(self._manifest_now())
            raise

    def __reduce__(self) -> tuple[Any, tuple]:
        """Pickle by URL, manifest and options: the copy opens its own filesystem."""
        options = (self.storage_options, self.cache_dir, self.cache_bytes, self.timeout)
        return _reopen_remote, (self.path, self.manifest.to_json(), self.verify, options)


def _reopen_remote(url: str, manifest: dict, verify: str, options: tuple) -> RemoteZarrChunkStore:
    """A pickled remote store, opened anew in this process."""
    storage_options, cache_dir, cache_bytes, timeout = options
    return RemoteZarrChunkStore(
        url,
        parse_manifest(manifest),
        verify=verify,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_bytes=cache_bytes,
        timeout=timeout,
    )
