"""Store generations: a reader reads the store it opened, never a mix of two.

Every conversion writes a new *generation* (the manifest's ``generation`` id). Re-converting with
``overwrite=True`` sets the store at the path aside as ``.<name>.gen-<generation>`` beside it and
renames the new one into place. A reader *pins* the generation it opened: it holds the store's
directory open and reads every file relative to it, so a rename of the directory under it changes
nothing it reads. A process that opens the same store object later (a spawned worker, a reopen
after ``close()``) finds its generation at the path or set aside beside it, and otherwise gets a
:class:`~datalflash.errors.StoreChangedError`.

Each pin holds a shared ``flock`` on the generation's manifest. A generation set aside is removed
by the next conversion into that path once no process holds it (an exclusive ``flock`` succeeds);
until then it keeps its disk space. Where a filesystem has no ``flock`` (some FUSE mounts), old
generations are kept and a warning names them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from datalflash.errors import StoreChangedError, StoreFormatError
from datalflash.format.manifest import MANIFEST_NAME, Manifest, manifest_from_bytes, not_a_store
from datalflash.store.integrity import open_file

PROC_FD = "/proc/self/fd"


def generation_dir(path: str | os.PathLike, generation: str) -> Path:
    """Where the generation ``generation`` of the store at ``path`` is kept once replaced."""
    path = Path(path)
    return path.with_name(f".{path.name}.gen-{generation}")


def read_regular(path: str, dir_fd: int | None = None, limit: int = 16 * 2**20) -> tuple[int, bytes]:
    """``(fd, first limit + 1 bytes)`` of the regular file at ``path`` (relative to ``dir_fd``);
    special files (FIFOs, devices, sockets) are refused before anything could block on them."""
    fd, _ = open_file(path, path, dir_fd=dir_fd)
    try:
        data = os.pread(fd, limit + 1, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, data


@dataclass
class Pin:
    """An open generation of a store: its directory and the locked manifest, both held open."""

    dir_fd: int
    lock_fd: int
    directory: str  # where it was found (the store's path, or its set-aside generation)
    manifest: Manifest  # as read from it
    closed: bool = False

    @property
    def root(self) -> str:
        """A path to open the generation's files by, whatever was renamed since."""
        return f"{PROC_FD}/{self.dir_fd}" if os.path.isdir(PROC_FD) else self.directory

    def close(self) -> None:
        """Release the directory and the shared lock (once: the numbers may be reused after)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.lock_fd, self.dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # a store dropped without close() must not keep its generation
        self.close()


def _open_generation(directory: str, manifest: Manifest | None) -> Pin | None:
    """The pin of ``directory`` if it holds ``manifest``'s generation (any, when None), else None."""
    with contextlib.ExitStack() as opened:  # closes what was opened unless the pin keeps it
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        opened.callback(os.close, dir_fd)
        try:
            lock_fd, raw = read_regular(MANIFEST_NAME, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        opened.callback(os.close, lock_fd)
        found = manifest_from_bytes(raw, os.path.join(directory, MANIFEST_NAME))
        if manifest is not None and (
            found.generation != manifest.generation if manifest.generation else found != manifest
        ):
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held exclusively: being removed
            return None
        except OSError:  # no flock on this filesystem: read it unlocked
            pass
        opened.pop_all()
        return Pin(dir_fd, lock_fd, directory, found)


def open_current(path: str) -> Pin:
    """Pin the store at ``path`` as it is now (its manifest read through the pin)."""
    try:
        pin = _open_generation(path, None)
    except FileNotFoundError:
        pin = None
    except StoreFormatError:
        raise
    except OSError as e:
        raise StoreFormatError(f"{os.path.join(path, MANIFEST_NAME)}: cannot read manifest: {e}") from e
    if pin is None:
        raise StoreFormatError(not_a_store(path))
    return pin


def pin_generation(path: str, manifest: Manifest) -> Pin:
    """Pin the generation of the store at ``path`` that ``manifest`` describes: at ``path``, or
    set aside beside it after a newer one replaced it; else StoreChangedError."""
    candidates = [path]
    if manifest.generation:
        candidates.append(str(generation_dir(path, manifest.generation)))
    for directory in candidates:
        pin = _open_generation(directory, manifest)
        if pin is not None:
            return pin
    raise StoreChangedError(
        f"{path}: the store was replaced after it was opened, and its generation "
        f"{manifest.generation or '(unnamed)'} is gone; open the store again to read the new one"
    )


_warned_no_flock: set[str] = set()


def remove_unused_generations(path: str | os.PathLike) -> list[Path]:
    """Remove the set-aside generations of the store at ``path`` that no process has open;
    returns those kept (in use, or on a filesystem without ``flock``)."""
    path = Path(path)
    kept = []
    for old in sorted(path.parent.glob(f".{path.name}.gen-*")):
        try:
            fd = os.open(old / MANIFEST_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:  # half removed before: finish
            shutil.rmtree(old, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            kept.append(old)
            os.close(fd)
            continue
        except OSError as e:  # no flock here: whether a reader has it open cannot be known
            kept.append(old)
            os.close(fd)
            if str(old) not in _warned_no_flock:
                _warned_no_flock.add(str(old))
                warnings.warn(f"{old}: cannot lock ({e}); this old generation is kept", stacklevel=3)
            continue
        try:
            shutil.rmtree(old, ignore_errors=True)
        finally:
            os.close(fd)
    return kept
