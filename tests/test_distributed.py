"""Real DistributedDataParallel runs under torchrun (gloo, CPU): the ranks' samples, their
batch counts, and resuming a 2-rank state on 1 and 4 ranks."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers import indexed_store, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
N = 203

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return indexed_store(tmp_path_factory.mktemp("ddp") / "store", N)


def run_ranks(nproc, store, out, *args):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    run = torchrun(nproc, SCRIPT, store, out, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_ddp_epoch_covers_every_sample_once(store, tmp_path):
    """With a worker process per rank, reading chunks into shared memory."""
    ranks = run_ranks(2, store, tmp_path / "out", "--workers", "1")
    assert {r["batches"] for r in ranks} == {7}, "both ranks step the same number of times"
    assert len({r["seed"] for r in ranks}) == 1, "rank 0's seed reaches every rank"
    assert len({r["checksum"] for r in ranks}) == 1, "DDP kept the replicas equal"
    seen = Counter(i for r in ranks for i in r["seen"])
    assert set(seen) == set(range(N))
    assert sum(seen.values()) - N <= 1, "at most world_size - 1 repeats, as padding"


@pytest.fixture(scope="module")
def stopped(store, tmp_path_factory):
    """Two ranks train 3 batches each; rank 0 saves the loader state."""
    out = tmp_path_factory.mktemp("ddp-first") / "out"
    return run_ranks(2, store, out, "--stop", "3"), out / "state.json"


@pytest.mark.parametrize("resumed_world", [1, 4])
def test_ddp_resume_on_another_world_size(store, stopped, tmp_path, resumed_world):
    first, state = stopped
    assert all(r["batches"] == 3 for r in first)
    rest = run_ranks(resumed_world, store, tmp_path / "rest", "--resume", str(state))
    assert len({r["batches"] for r in rest}) == 1
    before = [i for r in first for i in r["seen"]]
    after = [i for r in rest for i in r["seen"]]
    assert len(before) == len(set(before)) == 2 * 3 * 16
    assert set(before).isdisjoint(after)
    assert set(before) | set(after) == set(range(N))
    assert len(after) - len(set(after)) <= resumed_world - 1


def test_a_flash_dataset_loader_follows_torch_across_ranks(tmp_path):
    """Under a process group, a FlashDataset loader gives every rank all the data, as torch's
    DataLoader does (a store split shards, as streaming loaders do); explicit ranks shard it."""
    run = torchrun(2, Path(__file__).parent / "scripts" / "flash_ranks.py", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["flash"] == r["torch"] == list(range(50))
    assert sorted(ranks[0]["sharded"] + ranks[1]["sharded"]) == list(range(50))
    assert len(ranks[0]["sharded"]) == 25
