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


def test_original_import_paths_work_without_warnings():
    script = textwrap.dedent(
        """
        from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset, get_dataloaders
        from datalflash.utils import DatasetConverter, split_sizes
        from datalflash.loading import FlashDataLoader as loader
        from datalflash.convert import DatasetConverter as converter
        assert loader is FlashDataLoader and converter is DatasetConverter
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


def test_every_top_level_name_the_readme_shows_is_in_all():
    import importlib
    import re
    from pathlib import Path

    import datalflash

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text() + (root / "README.es.md").read_text()
    shown = set(re.findall(r"datalflash\.([A-Za-z_]\w*)", text)) - {"__all__", "stores"}  # (an entry-point group)
    names = set()
    for name in shown:
        try:
            importlib.import_module(f"datalflash.{name}")  # a subpackage or module, not an export
        except ModuleNotFoundError:
            names.add(name)
    assert {"DataLFlashError", "open_store", "shuffle_quality"} <= names
    missing = sorted(n for n in names if n not in datalflash.__all__)
    assert not missing, f"the README shows datalflash.{missing} but __all__ lacks them"
    assert all(hasattr(datalflash, n) for n in datalflash.__all__)


def test_top_level_names_load_on_first_use_and_the_command_needs_no_torch(tmp_path):
    """``import datalflash`` and the commands that read only a store (``--help``, ``info``,
    ``verify``) do not import torch; every exported name resolves to its module's object."""
    import torch
    from torch.utils.data import TensorDataset

    from datalflash.utils import DatasetConverter

    store = DatasetConverter.create_chunked_dataset(
        TensorDataset(torch.zeros(10, 4)), tmp_path / "s", split_ratios={"train": 1.0}, progress=False
    )
    script = textwrap.dedent(
        f"""
        import sys
        import datalflash
        from datalflash.cli import main
        assert main(["info", {str(store)!r}]) == 0
        assert main(["verify", "-q", {str(store)!r}]) == 0
        print("torch" in sys.modules, sorted(set(datalflash.__all__) - set(dir(datalflash))))
        import datalflash.loading, datalflash.convert, datalflash.store
        assert datalflash.FlashDataLoader is datalflash.loading.FlashDataLoader
        from datalflash import DatasetConverter, open_store, shuffle_quality
        assert DatasetConverter is datalflash.convert.DatasetConverter and open_store is datalflash.store.open_store
        try:
            datalflash.NoSuchThing
        except AttributeError as e:
            print(e)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2] == "False []" and lines[-1] == "module 'datalflash' has no attribute 'NoSuchThing'"
