"""A local on-disk cache of remote chunk objects, with a byte budget, shared by processes.

Objects are files named by a hash of (store, object key). A file appears only whole: it is
written under a unique temporary name and renamed into place, so a reader sees the whole object
or none, and two processes caching the same object both write the same bytes. Hits refresh a
file's modification time; when the cache grows past its budget, the process that noticed takes
an exclusive ``flock`` on ``.lock`` and deletes the least recently used files until it fits.
What comes out of the cache is checked like what comes from the network (the chunk's CRC-32C),
and a cached object that fails the check is dropped and fetched again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import uuid
from pathlib import Path

from datalflash.arguments import require_int


class ChunkCache:
    """Files under ``directory``, at most about ``budget_bytes`` in all (one object over while
    an eviction runs)."""

    def __init__(self, directory: str | os.PathLike, budget_bytes: int):
        require_int("cache budget (bytes)", budget_bytes, 0)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget = budget_bytes
        self._estimate: int | None = None  # bytes in the cache as last counted, plus what we added
        self._lock = threading.Lock()

    def _path(self, namespace: str, key: str) -> Path:
        digest = hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()
        return self.directory / digest[:2] / digest[2:]

    def get(self, namespace: str, key: str) -> bytes | None:
        """The cached object, or None."""
        path = self._path(namespace, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # most recently used
        except FileNotFoundError:  # never cached, or evicted meanwhile by another process
            return None
        return data

    def put(self, namespace: str, key: str, data: bytes) -> None:
        """Cache ``data`` (skipped when one object alone exceeds the budget)."""
        if len(data) > self.budget:
            return
        path = self._path(namespace, key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            self._estimate = (self._count() if self._estimate is None else self._estimate) + len(data)
            if self._estimate > self.budget:
                self._evict()

    def drop(self, namespace: str, key: str) -> None:
        """Forget an object (it failed its checksum)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(namespace, key))

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.directory.glob("??/*"):
            if path.name.startswith("."):  # an object still being written
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_mtime, st.st_size, path))
        return found

    def _count(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _evict(self) -> None:
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = sorted(self._files())
            total = sum(size for _, size, _ in files)
            for _, size, path in files:
                if total <= self.budget:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                total -= size
            self._estimate = total

    def size(self) -> int:
        """Bytes cached now."""
        return self._count()
