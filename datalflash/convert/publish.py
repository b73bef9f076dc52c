"""Publishing a store: written in a staging directory beside its final path, renamed into place
when complete; what a killed conversion left beside that path is cleaned up by the next one."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

from datalflash.errors import StoreExistsError
from datalflash.format.manifest import MANIFEST_NAME


def check_output(output_dir: Path, overwrite: bool) -> None:
    """Raise StoreExistsError unless a store may be written at ``output_dir``."""
    if not output_dir.exists():
        return
    if not overwrite:
        raise StoreExistsError(f"{output_dir} already exists; pass overwrite=True to replace it")
    if not output_dir.is_dir() or not ((output_dir / MANIFEST_NAME).is_file() or not any(output_dir.iterdir())):
        raise StoreExistsError(f"{output_dir} exists and is not a datalflash store; refusing to overwrite it")


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


def staging_dir(output_dir: Path) -> Path:
    """A new staging directory name beside ``output_dir`` (its parent created)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def publish_store(staging: Path, output_dir: Path) -> None:
    """Rename the finished store into place, replacing an old store only once the new one is whole."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(output_dir, old)
    os.rename(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
