"""Under torchrun: what each rank's FlashDataset loader serves, next to torch's DataLoader over the
same tensors (all of it on every rank) and with explicit ranks (a share each). Writes
``<out>/rank<r>.json``."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import FlashDataLoader, FlashDataset

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
ids = torch.arange(50)
data = FlashDataset(ids * 10, ids)


def served(loader):
    return sorted(int(i) for _, batch in loader for i in batch)


result = {
    "flash": served(FlashDataLoader(data, batch_size=8, shuffle=True)),
    "torch": served(DataLoader(TensorDataset(ids * 10, ids), batch_size=8, shuffle=True)),
    "sharded": served(FlashDataLoader(data, batch_size=8, shuffle=True, seed=1, rank=rank, world_size=world)),
}
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(result))
dist.destroy_process_group()
