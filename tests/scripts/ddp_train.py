"""Trains a small model with DistributedDataParallel on a store split; launched by torchrun.

Each rank writes ``rank<r>.json`` into OUT: the sample indices it trained on, its batch count,
the loader's seed and a checksum of the final weights. ``--stop K`` stops after K batches and
rank 0 writes the loader state to ``state.json``; ``--resume FILE`` continues from a state.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datalflash.core import ChunkedDataset, FlashDataLoader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("--stop", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(4, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = FlashDataLoader(ChunkedDataset(args.store, "train"), batch_size=16, shuffle=True, num_workers=args.workers)
    if args.resume:
        loader.load_state_dict(json.loads(Path(args.resume).read_text()))
    seen, batches = [], 0
    for features, label, index in loader:
        loss = torch.nn.functional.cross_entropy(model(features), label)
        optimizer.zero_grad()
        loss.backward()  # all-reduce across ranks: a rank with fewer batches would hang here
        optimizer.step()
        seen.extend(index.tolist())
        batches += 1
        if batches == args.stop:
            if rank == 0:
                Path(args.out, "state.json").write_text(json.dumps(loader.state_dict()))
            break
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    report = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "seen": seen,
        "batches": batches,
        "seed": loader.seed,
        "checksum": checksum,
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
