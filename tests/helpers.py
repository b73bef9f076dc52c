"""Small shared test helpers."""

import os
import subprocess
import sys

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


def torchrun(nproc, script, *args):
    """Run ``script`` with ``args`` on ``nproc`` local ranks (torch.distributed.run, one intra-op
    thread each); returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def indexed_store(path, n):
    """A one-split store of ``n`` samples ``(features (4,), label, index)``, chunks of 16."""
    g = torch.Generator().manual_seed(0)
    samples = TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n))
    return DatasetConverter.create_chunked_dataset(
        samples, path, chunk_size=16, split_ratios={"train": 1.0}, progress=False
    )
