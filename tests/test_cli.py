"""The datalflash command: convert from every kind of source, info, verify, bench, errors."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr

from datalflash.cli import main as cli
from datalflash.store import open_store


def all_samples(path, field):
    """Every sample of ``field`` over all splits, with its source index order restored."""
    store = open_store(path)
    return np.concatenate([store.read_chunks(s, range(store.num_chunks(s)))[field] for s in store.splits])


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x, y = rng.random((300, 2, 3), dtype=np.float32), np.arange(300)
    np.save("x.npy", x)
    np.save("y.npy", y)
    np.savez("d.npz", image=x, label=y)
    with h5py.File("d.h5", "w") as f:
        f["image"], f["label"] = x, y
    z = zarr.create_array("a.zarr", shape=x.shape, dtype=x.dtype, chunks=(64, 2, 3))
    z[...] = x
    (tmp_path / "factory_mod.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def make():\n    return TensorDataset(torch.arange(300, dtype=torch.float32)[:, None], torch.arange(300))\n"
    )
    return x, y


@pytest.mark.parametrize(
    "source, field, expected",
    [
        ("x.npy,y.npy", "0", "x"),
        ("x.npy,y.npy", "1", "y"),
        ("d.npz", "image", "x"),
        ("d.h5", "label", "y"),
        ("d.h5:image", "0", "x"),
        ("a.zarr", "0", "x"),
        ("factory_mod:make", "1", "y"),
    ],
)
def test_convert_from_each_source_reads_back_the_source(sources, tmp_path, source, field, expected):
    x, y = sources
    assert cli(["convert", source, "store", "--no-shuffle", "--chunk-size", "64", "-q"]) == 0
    assert np.array_equal(all_samples(tmp_path / "store", field), {"x": x, "y": y}[expected])


def test_convert_options(sources, tmp_path, capsys):
    assert (
        cli(
            [
                "convert",
                "x.npy,y.npy",
                "s",
                "--backend",
                "memmap",
                "--splits",
                "a=0.5,b=0.5",
                "--chunk-size",
                "32",
                "--seed",
                "3",
                "-q",
            ]
        )
        == 0
    )
    store = open_store(tmp_path / "s")
    assert store.backend_id == "memmap" and sorted(store.splits) == ["a", "b"] and store.chunk_size == 32
    assert cli(["convert", "x.npy,y.npy", "s", "-q"]) == 2  # exists, no --overwrite
    assert "already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert cli(["convert", "x.npy,y.npy", ".", "--overwrite", "-q"]) == 2  # not a store: never replaced
    assert "is not a datalflash store; choose another output path" in capsys.readouterr().err
    assert cli(["convert", "x.npy,y.npy", "s", "--overwrite", "--backend", "hdf5", "--compression", "gzip", "-q"]) == 0
    assert open_store(tmp_path / "s").manifest.backend_config["compression"] == "gzip"
    assert cli(["convert", "x.npy,y.npy", "s", "--overwrite", "--compression", "zstd", "--level", "1", "-q"]) == 0
    assert open_store(tmp_path / "s").manifest.backend_config == {
        "compression": "zstd",
        "clevel": 1,
        "shuffle": "shuffle",
    }
    assert (
        cli(
            [
                "convert",
                "x.npy,y.npy",
                "s",
                "--overwrite",
                "--backend",
                "hdf5",
                "--compression",
                "gzip",
                "--level",
                "7",
                "-q",
            ]
        )
        == 0
    )
    assert open_store(tmp_path / "s").manifest.backend_config == {"compression": "gzip", "level": 7}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "missing.npy", "o"], "missing.npy: no such file"),
        (["convert", "nomodule:make", "o"], "cannot import module 'nomodule'"),
        (["convert", "factory_mod:absent", "o"], "has no callable 'absent'"),
        (["convert", "x.npy,y.npy", "o", "--backend", "parquet"], "unknown backend 'parquet'"),
        (["convert", "x.npy,y.npy", "o", "--splits", "train=0.7"], "sum"),
        (["convert", "x.npy,y.npy", "o", "--chunk-size", "0"], "chunk_size"),
        (["convert", "notasource", "o"], "not a source"),
        (
            ["convert", "x.npy,y.npy", "o", "--backend", "memmap", "--level", "3"],
            "backend 'memmap' takes no compression level",
        ),
        (["convert", "x.npy,y.npy", "o", "--level", "12"], "clevel 12 is not an integer in 0..9"),
        (["info", "nowhere"], "nowhere: does not exist"),
        (["verify", "nowhere"], "nowhere: does not exist"),
        (["bench", "nowhere"], "nowhere: does not exist"),
        (["info", "."], "not a datalflash store (no manifest.json)"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(sources, capsys, argv, message):
    assert cli(argv) == 2
    assert message in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["convert", "--splits", "oops", "a", "b"])
    assert e.value.code == 2 and "is not like train=0.8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["frobnicate"])
    assert e.value.code == 2


def test_info_and_bench(sources, tmp_path, capsys):
    cli(["convert", "x.npy,y.npy", "store", "--chunk-size", "64", "-q"])
    capsys.readouterr()
    assert cli(["info", "store"]) == 0
    text = capsys.readouterr().out
    assert "zarr" in text and "train" in text and "240 samples" in text and "compression ratio" in text
    assert cli(["info", "store", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"] == {"samples": 240, "chunks": 4} and info["raw_bytes"] == 300 * (24 + 8)
    assert info["fields"]["0"] == {"dtype": "float32", "shape": [2, 3], "kind": "array"} and all(
        info["checksums"].values()
    )
    assert cli(["bench", "store", "--epochs", "1", "--max-seconds", "5", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "FlashDataLoader (store)" in out and "torch DataLoader, items from the store" in out
    baseline = next(line for line in out.splitlines() if "TensorDataset" in line)
    assert baseline.rstrip().endswith("1.0x")  # (the 1.0x: torch's DataLoader over the data in RAM)


@pytest.mark.parametrize("command", ["convert", "info", "verify", "bench", "demo"])
def test_help_for_each_command_from_the_module_and_the_script(command):
    for prefix in ([sys.executable, "-m", "datalflash"], ["datalflash"]):
        run = subprocess.run([*prefix, command, "--help"], capture_output=True, text=True)
        assert run.returncode == 0 and f"datalflash {command}" in run.stdout
