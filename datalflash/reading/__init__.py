"""Read: background threads fetch planned chunks ahead of use, bounded by a byte budget."""

from datalflash.reading.prefetcher import WindowPrefetcher

__all__ = ["WindowPrefetcher"]
