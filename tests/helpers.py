"""Small shared test helpers."""

import os
import subprocess
import sys
import time

import torch
from torch.utils.data import Dataset, TensorDataset

from datalflash.utils import DatasetConverter


class Samples(Dataset):
    """A map-style dataset over a list of ready-made samples."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def torchrun(nproc, script, *args, cwd=None):
    """Run ``script`` with ``args`` on ``nproc`` local ranks (torch.distributed.run, one intra-op
    thread each) in ``cwd``; returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def indexed_store(path, n):
    """A one-split store of ``n`` samples ``(features (4,), label, index)``, chunks of 16."""
    g = torch.Generator().manual_seed(0)
    samples = TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n))
    return DatasetConverter.create_chunked_dataset(
        samples, path, chunk_size=16, split_ratios={"train": 1.0}, progress=False
    )


def alive(pid):
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # (no /proc to tell: it exists)
        return True


def survivors(pids, seconds=10.0):
    """Which of ``pids`` still run after waiting up to ``seconds`` for them all to be gone."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]
