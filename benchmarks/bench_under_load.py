"""Loader speed that holds under load, side by side in one run: FlashDataset (RAM), a Zarr store
split (warm) and torch's DataLoader over the same samples in RAM (0 workers), each idle and with
one busy process per core (the model keeping the CPU busy), over several runs; torch keeps its
default intra-op threads, as a training script does.

Data: scikit-learn's real handwritten digits (1x8x8 float32, int64 labels) repeated to 60,000
samples, and 50,000 CIFAR-shaped images (3x32x32 uint8, image-like), batch 64, shuffled.

Usage: ``python benchmarks/bench_under_load.py [--runs 5] [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench_collate import digits
from bench_ragged import BATCH, _nothing, busy_cores, rate
from common import cifar_like, save_results
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import FlashDataLoader, FlashDataset
from datalflash.loading import ChunkedDataset
from datalflash.utils import DatasetConverter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    sets = {"digits": digits(60_000), "cifar-shaped": TensorDataset(*cifar_like(50_000))}
    loaders = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, data in sets.items():
            options = {"split_ratios": {"train": 1.0}, "progress": False}
            split = ChunkedDataset(DatasetConverter.create_chunked_dataset(data, Path(tmp) / key, **options), "train")
            memory = FlashDataset(*data.tensors)
            loaders[(key, "FlashDataset")] = lambda m=memory: FlashDataLoader(m, BATCH, shuffle=True)
            loaders[(key, "zarr store split")] = lambda s=split: FlashDataLoader(s, BATCH, shuffle=True)
            loaders[(key, "torch DataLoader (RAM)")] = lambda d=data: DataLoader(d, BATCH, shuffle=True)
        for run in range(args.runs):
            for load in ("idle", "under load"):
                with busy_cores() if load == "under load" else _nothing():
                    for (key, name), make in loaders.items():
                        value = rate(make, args.seconds)
                        rows.append({"run": run, "set": key, "load": load, "loader": name, "samples_per_s": value})
                        print(f"  run {run} {load:>10}  {key:<12} {name:<24} {value:>12,.0f} samples/s", flush=True)
    summary = {}
    for key, name in loaders:
        mine = [r for r in rows if (r["set"], r["loader"]) == (key, name)]
        idle = [r["samples_per_s"] for r in mine if r["load"] == "idle"]
        busy = [r["samples_per_s"] for r in mine if r["load"] == "under load"]
        summary[f"{key}: {name}"] = {
            "idle median": statistics.median(idle),
            "under load median": statistics.median(busy),
            "under load / idle (>= 0.5)": statistics.median(busy) / statistics.median(idle),
            "slowest / fastest run under load (>= 0.5)": min(busy) / max(busy),
        }
    for key in sets:
        torch_busy = summary[f"{key}: torch DataLoader (RAM)"]["under load median"]
        for name in ("FlashDataset", "zarr store split"):
            entry = summary[f"{key}: {name}"]
            entry["/ torch DataLoader under load (>= 5)"] = entry["under load median"] / torch_busy
    print(json.dumps(summary, indent=2))
    table = "\n".join(f"| {name} | {k} | {v:,.2f} |" for name, r in summary.items() for k, v in r.items())
    save_results("under_load", [*rows, {"summary": summary}], "| loader | figure | value |\n|---|---|---|\n" + table)


if __name__ == "__main__":
    main()
