"""Store: the :class:`ChunkStore` interface, its backends, their registry and integrity checks."""

from datalflash.format.manifest import FieldSpec, Manifest, SplitInfo, read_manifest
from datalflash.store.base import ChunkStore
from datalflash.store.registry import available_backends, get_backend, open_store, register_backend
from datalflash.store.verify import VerifyReport, verify_store

__all__ = [
    "ChunkStore",
    "FieldSpec",
    "Manifest",
    "SplitInfo",
    "VerifyReport",
    "available_backends",
    "get_backend",
    "open_store",
    "read_manifest",
    "register_backend",
    "verify_store",
]
