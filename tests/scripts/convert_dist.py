"""Converts a deterministic dataset into OUT on every rank of a torchrun job (gloo).

``--die-rank R`` makes rank R kill itself (SIGKILL) after writing its first chunk.
"""

import argparse
import os
import signal

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from datalflash.utils import DatasetConverter


class Samples(Dataset):
    """Per-sample dataset (read through torch's DataLoader): an image-like tensor and a label."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g), i % 10


class RaggedSamples(Dataset):
    """Token ids of varying length (0..40) and a str label: ragged and text fields."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"tokens": torch.randint(0, 30000, (i % 41,), generator=g), "label": f"class {i % 10}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--backend", default="zarr")
    parser.add_argument("--die-rank", type=int, default=None)
    parser.add_argument("--ragged", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    if dist.get_rank() == args.die_rank:
        from datalflash.store.base import ChunkStore

        write = ChunkStore.write_chunk

        def write_then_die(self, split, chunk, arrays):
            write(self, split, chunk, arrays)
            os.kill(os.getpid(), signal.SIGKILL)

        ChunkStore.write_chunk = write_then_die
    DatasetConverter.create_chunked_dataset(
        RaggedSamples() if args.ragged else Samples(),
        args.out,
        chunk_size=64,
        backend=args.backend,
        overwrite=True,
        progress=False,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
