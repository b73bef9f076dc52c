"""Backends by id, as numcodecs registers codecs: built-ins here, third parties through the
``datalflash.stores`` entry-point group (``myid = "mypkg.module:MyChunkStore"``)."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from datalflash.errors import BackendError
from datalflash.store.base import ChunkStore
from datalflash.store.generations import open_current

ENTRY_POINT_GROUP = "datalflash.stores"
_BUILTIN = {
    "zarr": "datalflash.store.zarr.store:ZarrChunkStore",
    "hdf5": "datalflash.store.hdf5:HDF5ChunkStore",
    "memmap": "datalflash.store.memmap:MemmapChunkStore",
}
_registry: dict[str, type[ChunkStore]] = {}


def register_backend(cls: type[ChunkStore]) -> type[ChunkStore]:
    """Register a :class:`ChunkStore` subclass under its ``backend_id`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, ChunkStore)):
        raise BackendError(f"{cls!r} is not a ChunkStore subclass")
    _registry[cls.backend_id] = cls
    return cls


def _load(target: str) -> type[ChunkStore]:
    from importlib import import_module

    module, _, name = target.partition(":")
    return register_backend(getattr(import_module(module), name))


def get_backend(backend_id: str) -> type[ChunkStore]:
    """The backend class registered under ``backend_id``."""
    if backend_id in _registry:
        return _registry[backend_id]
    if backend_id in _BUILTIN:
        return _load(_BUILTIN[backend_id])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == backend_id:
            cls = ep.load()
            if getattr(cls, "backend_id", None) != backend_id:
                raise BackendError(f"entry point {ep.value} does not declare backend_id {backend_id!r}")
            return register_backend(cls)
    raise BackendError(f"unknown backend {backend_id!r}; available: {', '.join(available_backends())}")


def available_backends() -> list[str]:
    """Ids of the built-in, registered and entry-point backends."""
    names = set(_BUILTIN) | set(_registry)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def open_store(
    path: str | os.PathLike,
    *,
    verify: str = "first",
    storage_options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_bytes: int = 10 * 2**30,
    remote_timeout: float = 30.0,
) -> ChunkStore:
    """Open the store at ``path`` read-only; the manifest names its backend. ``verify``: when
    chunk checksums are checked (``"first"`` read of each chunk in this process, ``"always"``,
    ``"never"``). ``path`` may be a URL (``s3://bucket/store``, ``memory://...``) of a Zarr
    store, opened through fsspec with ``storage_options``; its chunks are then kept in
    ``cache_dir`` (if given, at most ``cache_bytes``), and a request that gets no answer within
    ``remote_timeout`` seconds is a StoreReadError."""
    from datalflash.store.zarr.remote import is_url, open_remote_store

    if isinstance(path, str) and is_url(path):
        return open_remote_store(
            path,
            verify=verify,
            storage_options=storage_options,
            cache_dir=cache_dir,
            cache_bytes=cache_bytes,
            timeout=remote_timeout,
        )
    if cache_dir is not None:
        raise ValueError(f"{path}: a chunk cache is for stores opened by URL; a local store needs none")
    pin = open_current(os.fspath(path))
    try:
        cls = get_backend(pin.manifest.backend_id)
        cls.config_from_manifest(pin.manifest.backend_config)
        return cls(path, pin.manifest, verify=verify, pin=pin)
    except BaseException:
        pin.close()
        raise
