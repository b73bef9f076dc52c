"""Conversion split across ranks under torchrun (gloo): the very store one process writes."""

import json
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers import torchrun

from datalflash.utils import DatasetConverter

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from convert_dist import RaggedSamples, Samples

SCRIPT = Path(__file__).parent / "scripts" / "convert_dist.py"
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def run_ranks(nproc, out, *args):
    return torchrun(nproc, SCRIPT, out, *args)


def files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def manifest_without_time(path):
    doc = json.loads((Path(path) / "manifest.json").read_text())
    doc["created"].pop("at")
    doc.pop("generation")  # new for every store written
    return doc


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("backend", ["zarr", "memmap"])
def test_two_ranks_write_the_store_one_process_writes(tmp_path, backend, ragged):
    source = RaggedSamples() if ragged else Samples()
    single = DatasetConverter.create_chunked_dataset(
        source, tmp_path / "single", chunk_size=64, backend=backend, progress=False
    )
    run = run_ranks(2, tmp_path / "dist", "--backend", backend, *(["--ragged"] if ragged else []))
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = files(single), files(tmp_path / "dist")
    assert a.keys() == b.keys()
    differ = [name for name in a if a[name] != b[name] and name != "manifest.json"]
    assert not differ, differ
    assert manifest_without_time(single) == manifest_without_time(tmp_path / "dist")
    assert DatasetConverter.verify(tmp_path / "dist", progress=False).ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_dead_rank_publishes_nothing_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "dist"
    died = run_ranks(2, out, "--die-rank", "1")
    assert died.returncode != 0
    assert not out.exists()
    rerun = run_ranks(2, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert DatasetConverter.verify(out, progress=False).ok
    assert [p.name for p in tmp_path.iterdir()] == ["dist"], "the dead run's staging directory was removed"


def test_ranks_need_torch_distributed_and_a_concurrent_backend(tmp_path):
    from datalflash.errors import ConversionError

    with pytest.raises(ConversionError, match=r"needs torch.distributed initialized"):
        DatasetConverter.create_chunked_dataset(Samples(), "/nonexistent/x", rank=0, world_size=2)
    with pytest.raises(ConversionError, match="rank"):
        DatasetConverter.create_chunked_dataset(Samples(), "/nonexistent/x", rank=3, world_size=2)
    out = DatasetConverter.create_chunked_dataset(Samples(), tmp_path / "one", rank=0, world_size=1, progress=False)
    assert DatasetConverter.verify(out, progress=False).ok  # one process of a job converting alone
