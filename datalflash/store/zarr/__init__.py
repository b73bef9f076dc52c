"""The Zarr v3 backend (the default): local stores, stores by URL through fsspec, and the local
chunk cache of the latter."""

from datalflash.store.zarr.remote import RemoteZarrChunkStore, is_url, open_remote_store
from datalflash.store.zarr.store import ZarrChunkStore

__all__ = ["RemoteZarrChunkStore", "ZarrChunkStore", "is_url", "open_remote_store"]
