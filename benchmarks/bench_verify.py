"""What checksum verification costs: loader epochs with verify="never" / "first" / "always".

CIFAR-shaped data (50,000 x 3x32x32 uint8 + int64 label), batch 256, shuffled, warm cache, one
store per backend, the three modes side by side in one run (median of ``--repeat``), with a 64 MiB
read-ahead budget so that every epoch reads its chunks again (a split that fits the budget is
kept decoded after its first epoch and not read again, whatever the mode). ``first``
checks each chunk on its first read in the process, so after the first epoch it costs what
``never`` costs; the table shows the first epoch (every chunk checked) and the later ones.
HDF5 checks its fletcher32 filter on a read through HDF5; where no check is due, an uncompressed
chunk's bytes are read straight from the file instead.

Usage: ``python benchmarks/bench_verify.py [--repeat 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import cifar_like, save_results
from torch.utils.data import TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.utils import DatasetConverter

BATCH = 256
BUDGET = 64 * 2**20  # (streamed in 32 MiB windows: every epoch reads and checks as its mode says)


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    x, y = cifar_like(50_000)
    n = len(x)
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        for backend in ("zarr", "memmap", "hdf5"):
            path = DatasetConverter.create_chunked_dataset(
                TensorDataset(x, y), Path(tmp) / backend, split_ratios={"train": 1.0}, backend=backend, progress=False
            )
            first, later = {m: [] for m in ("never", "first", "always")}, {m: [] for m in ("never", "first", "always")}
            for _ in range(args.repeat):
                for mode in first:
                    data = ChunkedDataset(path, verify=mode)
                    loader = FlashDataLoader(data, batch_size=BATCH, shuffle=True, read_ahead_bytes=BUDGET)
                    first[mode].append(epoch_seconds(loader))
                    later[mode].append(epoch_seconds(loader))
            base = n / statistics.median(first["never"])
            for mode in first:
                r1, r2 = n / statistics.median(first[mode]), n / statistics.median(later[mode])
                rows.append(
                    {
                        "backend": backend,
                        "verify": mode,
                        "first_epoch_samples_per_s": round(r1),
                        "later_epochs_samples_per_s": round(r2),
                        "first_epoch_x_never": round(r1 / base, 3),
                    }
                )
    lines = [
        f"{n} CIFAR-shaped samples, batch {BATCH}, shuffled, warm, {BUDGET >> 20} MiB ahead, median of {args.repeat}",
        "",
        "| backend | verify | first epoch samples/s | x never | later epochs samples/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['backend']} | {r['verify']} | {r['first_epoch_samples_per_s']:,} | {r['first_epoch_x_never']:.2f} "
        f"| {r['later_epochs_samples_per_s']:,} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    save_results("verify", rows, table)


if __name__ == "__main__":
    main()
