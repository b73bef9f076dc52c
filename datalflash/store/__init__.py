"""Chunk stores: the :class:`ChunkStore` interface, its backends and their registry."""

from datalflash.store.base import ChunkStore
from datalflash.store.manifest import FieldSpec, Manifest, SplitInfo, read_manifest
from datalflash.store.registry import available_backends, get_backend, open_store, register_backend

__all__ = [
    "ChunkStore",
    "FieldSpec",
    "Manifest",
    "SplitInfo",
    "available_backends",
    "get_backend",
    "open_store",
    "read_manifest",
    "register_backend",
]
