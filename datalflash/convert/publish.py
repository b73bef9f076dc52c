"""Publishing a store: written in a staging directory beside its final path, renamed into place
when complete; what a killed conversion left beside that path is cleaned up by the next one."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from datalflash.errors import StoreExistsError
from datalflash.format.manifest import MANIFEST_NAME
from datalflash.store.generations import generation_dir, remove_unused_generations


def check_output(output_dir: Path, overwrite: bool) -> None:
    """Raise StoreExistsError unless a store may be written at ``output_dir``."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir() or not ((output_dir / MANIFEST_NAME).is_file() or not any(output_dir.iterdir())):
        raise StoreExistsError(
            f"{output_dir} exists and is not a datalflash store; choose another output path "
            "(overwriting replaces stores only)"
        )
    if not overwrite:
        raise StoreExistsError(f"{output_dir} already exists; pass overwrite=True to replace it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_leftovers(output_dir: Path) -> None:
    """Clean what a killed conversion into ``output_dir`` left beside it, saying so: staging
    directories of dead processes are removed; an old store set aside for replacement is put
    back if the new one never arrived, else removed."""
    for leftover in sorted(output_dir.parent.glob(f".{output_dir.name}.*-*")):
        kind, _, rest = leftover.name[len(output_dir.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not output_dir.exists() and (leftover / MANIFEST_NAME).is_file():
            os.rename(leftover, output_dir)
            warnings.warn(
                f"restored the previous store {output_dir} from {leftover.name} (an interrupted conversion)",
                stacklevel=3,
            )
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            warnings.warn(f"removed {leftover}, left by an interrupted conversion into {output_dir}", stacklevel=3)
    remove_unused_generations(output_dir)


def staging_dir(output_dir: Path) -> Path:
    """A new staging directory name beside ``output_dir`` (its parent created)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


PUBLISH_ATTEMPTS = 8  # set-aside-and-rename rounds when overwriting races other publishers
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def rename_exclusive(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists: one
    atomic ``renameat2(RENAME_NOREPLACE)`` where the filesystem has it; elsewhere (NFS, say) a
    plain rename, which refuses a non-empty directory at ``target`` (an empty one is replaced)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        at_cwd = -100  # AT_FDCWD
        if renameat2(at_cwd, os.fsencode(source), at_cwd, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(source))
    try:
        os.rename(source, target)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        raise


def _generation_of(directory: Path) -> str:
    try:
        return str(json.loads((directory / MANIFEST_NAME).read_bytes()).get("generation") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _set_aside(output_dir: Path) -> Path | None:
    """Move the store at ``output_dir`` aside (None if another publisher moved it first)."""
    old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(output_dir, old)
    except FileNotFoundError:
        return None
    return old


def publish_store(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished store at ``staging`` into place, atomically.

    Without ``overwrite`` the rename itself is the check: if anything appeared at ``output_dir``
    while this conversion ran (a racing conversion that published first), StoreExistsError, and
    nothing there is touched. With ``overwrite`` the store there is set aside and the new one
    renamed in; the last publisher wins. A store set aside becomes an older generation, kept
    beside the path while readers have it open (see :mod:`datalflash.store.generations`)."""
    set_aside: list[Path] = []
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                rename_exclusive(staging, output_dir)
                break
            except FileExistsError:
                if not overwrite:
                    raise StoreExistsError(
                        f"{output_dir} was published by another writer while this conversion ran; "
                        "this store was not published (pass overwrite=True to replace it)"
                    ) from None
                if output_dir.exists() and not (output_dir / MANIFEST_NAME).is_file():
                    raise StoreExistsError(
                        f"{output_dir} appeared while this conversion ran and is not a datalflash store; "
                        "refusing to overwrite it (this store was not published)"
                    ) from None
                old = _set_aside(output_dir)
                if old is not None:
                    set_aside.append(old)
        else:
            raise StoreExistsError(f"{output_dir}: other writers kept publishing there; this store was not published")
    finally:
        if set_aside and not output_dir.exists():  # not published after all: the last store goes back
            os.rename(set_aside.pop(), output_dir)
        for old in set_aside:
            _retire(old, output_dir)
    remove_unused_generations(output_dir)


def _retire(old: Path, output_dir: Path) -> None:
    """Keep the store set aside at ``old`` as an older generation of ``output_dir``."""
    generation = _generation_of(old)
    target = generation_dir(output_dir, generation or f"0000{uuid.uuid4().hex}")
    try:
        os.rename(old, target)
    except OSError:  # that generation is kept already (a copied store published twice): drop this one
        shutil.rmtree(old, ignore_errors=True)
