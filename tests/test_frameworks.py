"""The loaders inside real training frameworks: Lightning's DDP (2 CPU processes, gloo) with the
loader built before ``fit`` or inside ``train_dataloader``, and mid-epoch resume through
Lightning's own checkpoint; Accelerate and Hugging Face's Trainer under torchrun."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import indexed_store, torchrun
from torch.utils.data import Dataset

from datalflash.utils import DatasetConverter

pytest.importorskip("lightning", reason="lightning is a test extra (pip install -e '.[frameworks]')")

SCRIPT = Path(__file__).parent / "scripts" / "lightning_ddp.py"
N = 96


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return indexed_store(tmp_path_factory.mktemp("lightning") / "store", N)


def lightning(store: Path, out: Path, *args: str) -> list[dict[str, list[int]]]:
    """Run the script (Lightning starts the second process itself); each rank's ids per epoch."""
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(store), str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text())["seen"] for r in range(2)]


@pytest.mark.parametrize("build", ["before", "inside"])
def test_ddp_ranks_share_each_epoch(store, tmp_path, build):
    """Built before fit (ranks unknown until the process group starts) or inside the hook: each
    epoch every sample is trained on once, half on each rank, in a new order each epoch."""
    ranks = lightning(store, tmp_path / "out", "--build", build, "--epochs", "2")
    for epoch in ("0", "1"):
        seen = [r[epoch] for r in ranks]
        assert [len(s) for s in seen] == [N // 2, N // 2]
        assert sorted(seen[0] + seen[1]) == list(range(N))
    assert ranks[0]["0"] != ranks[0]["1"], "a new order each epoch"


def test_mid_epoch_resume_through_lightning_checkpoint(store, tmp_path):
    """Stopped after 3 steps (checkpointed mid-epoch by ModelCheckpoint), resumed from that
    checkpoint: the two runs together train on every sample once."""
    first = lightning(store, tmp_path / "first", "--stop", "3", "--epochs", "1")
    checkpoint = tmp_path / "first" / "stopped.ckpt"
    assert checkpoint.exists()
    rest = lightning(store, tmp_path / "rest", "--resume", str(checkpoint), "--epochs", "1")
    assert [len(r["0"]) for r in first] == [24, 24]
    seen = Counter(i for run in (first, rest) for r in run for i in r["0"])
    assert sorted(seen) == list(range(N)) and set(seen.values()) == {1}


ACCELERATE = Path(__file__).parent / "scripts" / "accelerate_train.py"


@pytest.mark.parametrize("n", [801, 800])
def test_accelerate_accumulation_and_metrics(tmp_path, n):
    """Under Accelerate (2 processes): gradients sync every 4 batches and on the epoch's last
    batch, gather_for_metrics counts every sample once (801: the last batches carry a padded
    repeat, which Accelerate drops), and skip_first_batches serves each rank's batches from the
    fourth on."""
    pytest.importorskip("accelerate", reason="accelerate is a test extra (pip install -e '.[frameworks]')")
    path = indexed_store(tmp_path / "store", n)
    run = torchrun(2, ACCELERATE, path, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    batches = math.ceil(math.ceil(n / 2) / 4)  # (each rank: ceil(n / 2) samples, 4 a batch)
    assert result["batches"] == batches
    assert result["syncs"] == math.ceil(batches / 4), "a sync every 4 batches and on the last"
    assert sorted(result["gathered"]) == list(range(n))
    for rank in range(2):  # skip_first_batches (a torch DataLoader over the loader's batch_sampler)
        skip = json.loads((tmp_path / f"skip{rank}.json").read_text())
        assert skip["skipped"] == skip["served"][3:] and len(skip["served"]) == batches


HF_TRAINER = Path(__file__).parent / "scripts" / "hf_trainer.py"


class Records(Dataset):
    """Dict samples as Hugging Face models take them: features, a float label, the sample id."""

    def __len__(self):
        return 100

    def __getitem__(self, i):
        return {"features": torch.full((4,), i / 100), "label": float(i % 3), "index": i}


def test_hugging_face_trainer_trains_each_rank_on_its_share(tmp_path):
    """HF ``Trainer`` (2 processes under torchrun, DDP) training from a FlashDataLoader over a
    store split: each epoch every sample reaches exactly one rank's model."""
    pytest.importorskip("transformers", reason="transformers is a test extra (pip install -e '.[frameworks]')")
    store = DatasetConverter.create_chunked_dataset(
        Records(), tmp_path / "store", chunk_size=16, split_ratios={"train": 1.0}, progress=False
    )
    run = torchrun(2, HF_TRAINER, store, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    assert [len(r) for r in ranks] == [100, 100]  # 50 a rank, 2 epochs
    for epoch in range(2):
        first, second = (r[epoch * 50 : (epoch + 1) * 50] for r in ranks)
        assert sorted(first + second) == list(range(100))
