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
import warnings
from pathlib import Path

from datalflash.arguments import require_int


class ChunkCache:
    """Files under ``directory``, at most about ``budget_bytes`` in all (one object over while
    an eviction runs).

    A cache fault never fails a read: if the directory vanishes, fills up or turns read-only,
    the cache warns once and stays off in this process (chunks then come from the object store).
    """

    def __init__(self, directory: str | os.PathLike, budget_bytes: int):
        require_int("cache budget (bytes)", budget_bytes, 0)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget = budget_bytes
        self._estimate: int | None = None  # bytes in the cache as last counted, plus what we added
        self._lock = threading.Lock()
        self.failed: OSError | None = None  # the fault that turned the cache off

    def _fail(self, error: OSError) -> None:
        if self.failed is None:
            self.failed = error
            warnings.warn(
                f"{self.directory}: the chunk cache failed ({type(error).__name__}: {error}); "
                "reading from the object store without it",
                stacklevel=4,
            )

    def _path(self, namespace: str, key: str) -> Path:
        digest = hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()
        return self.directory / digest[:2] / digest[2:]

    def get(self, namespace: str, key: str) -> bytes | None:
        """The cached object, or None."""
        if self.failed is not None:
            return None
        path = self._path(namespace, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # most recently used
        except FileNotFoundError:  # never cached, or evicted meanwhile by another process
            return None
        except OSError as e:
            self._fail(e)
            return None
        return data

    def put(self, namespace: str, key: str, data: bytes) -> None:
        """Cache ``data`` (skipped when one object alone exceeds the budget)."""
        if len(data) > self.budget or self.failed is not None:
            return
        path = self._path(namespace, key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # (the whole cache, if it vanished)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._fail(e)
            return
        with self._lock:
            self._estimate = (self._count() if self._estimate is None else self._estimate) + len(data)
            if self._estimate > self.budget:
                try:
                    self._evict()
                except OSError as e:
                    self._fail(e)

    def drop(self, namespace: str, key: str) -> None:
        """Forget an object (it failed its checksum)."""
        with contextlib.suppress(OSError):
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
