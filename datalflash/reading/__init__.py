"""Read: threads or worker processes fetch planned chunks ahead of use, bounded in memory."""

from datalflash.reading.prefetcher import WindowPrefetcher
from datalflash.reading.readers import ProcessReader, SpareBuffers, ThreadReader, make_reader

__all__ = ["ProcessReader", "SpareBuffers", "ThreadReader", "WindowPrefetcher", "make_reader"]
