"""Backend registry (built-ins, register_backend, entry points) and import without side effects."""

import os
import subprocess
import sys
import textwrap

import pytest

from datalflash.errors import BackendError
from datalflash.store import available_backends, get_backend, register_backend


def test_builtins_are_registered():
    assert {"zarr", "hdf5", "memmap"} <= set(available_backends())
    assert get_backend("memmap").backend_id == "memmap"


def test_register_backend_rejects_non_stores():
    with pytest.raises(BackendError):
        register_backend(dict)


PLUGIN = textwrap.dedent(
    """
    from datalflash.store.memmap import MemmapChunkStore

    class RawStore(MemmapChunkStore):
        backend_id = "raw-plugin"
    """
)


def test_third_party_backend_via_entry_point(tmp_path):
    (tmp_path / "rawplugin.py").write_text(PLUGIN)
    info = tmp_path / "rawplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rawplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datalflash.stores]\nraw-plugin = rawplugin:RawStore\n")
    script = textwrap.dedent(
        f"""
        import torch
        from datalflash.store import available_backends, open_store
        from datalflash.utils import DatasetConverter
        assert "raw-plugin" in available_backends()
        DatasetConverter.create_chunked_dataset([torch.ones(2)] * 5, {str(tmp_path / "s")!r},
            chunk_size=2, backend="raw-plugin", progress=False)
        store = open_store({str(tmp_path / "s")!r})
        print(type(store).__name__, store.read_chunks("train", [0])["data"].sum())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["RawStore", "4.0"]


def test_import_starts_no_thread_and_touches_no_gpu():
    script = textwrap.dedent(
        """
        import threading, sys
        import datalflash, datalflash.core, datalflash.utils, datalflash.store
        import torch
        print(threading.active_count(), torch.cuda.is_initialized())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]
