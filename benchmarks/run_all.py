"""The benchmark report: one command, side by side in one run, written to ``benchmarks/report/``.

* loading: the in-RAM limit (bare ``index_select`` loop), torch's DataLoader, FlashDataLoader in
  RAM and on each backend with a warm and a cold page cache (the first epoch of a new loader),
  later epochs of one loader (the split, which fits ``read_ahead_bytes``, kept decoded), and the
  peer loaders that import
  here (LitData, Mosaic Streaming, WebDataset, HF datasets; skipped with the reason otherwise);
* training: a small CNN on CPU for an epoch per loader, and the share of it spent waiting for data.

Writes ``report.json`` (machine, every number), ``report.md`` (tables) and ``report.png`` (the
loading graph). Usage: ``python benchmarks/run_all.py [--samples 50000] [--repeat 3]``
(needs matplotlib: ``pip install 'datalflash[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import bench_training
import torch
from bench_loader import evict, limit_epoch, loader_epoch, sequential_read
from common import cifar_like, machine
from peers import PEERS, Skip
from torch.utils.data import DataLoader, TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader, FlashDataset
from datalflash.utils import DatasetConverter

BATCH = 256
REPORT = Path(__file__).resolve().parent / "report"


def median_rate(n: int, fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def loading(x: torch.Tensor, y: torch.Tensor, tmp: Path, repeat: int, peer_seconds: float) -> list[dict]:
    n = len(x)
    stores = {
        backend: ChunkedDataset(
            DatasetConverter.create_chunked_dataset(
                TensorDataset(x, y), tmp / backend, split_ratios={"train": 1.0}, backend=backend, progress=False
            )
        )
        for backend in ("zarr", "memmap", "hdf5")
    }
    runs = {
        "in-RAM limit (index_select loop)": lambda: limit_epoch(x, y),
        "torch DataLoader, TensorDataset": lambda: loader_epoch(
            DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
        ),
        "FlashDataLoader, FlashDataset (RAM)": lambda: loader_epoch(
            FlashDataLoader(FlashDataset(x, y), batch_size=BATCH, shuffle=True)
        ),
    }
    for backend, data in stores.items():
        runs[f"FlashDataLoader, {backend} store, warm"] = lambda data=data: loader_epoch(
            FlashDataLoader(data, batch_size=BATCH, shuffle=True)
        )
    for backend, data in stores.items():  # (one loader, epoch after epoch: the split is kept decoded)
        kept = FlashDataLoader(data, batch_size=BATCH, shuffle=True)
        loader_epoch(kept)
        runs[f"FlashDataLoader, {backend} store, later epochs"] = lambda kept=kept: loader_epoch(kept)
    rows = [
        {
            "loader": name,
            "kind": "datalflash" if "Flash" in name else "baseline",
            "samples_per_s": round(median_rate(n, fn, repeat)),
        }
        for name, fn in runs.items()
    ]
    disk = statistics.median(sequential_read(tmp / "memmap") for _ in range(repeat))
    rows.append({"loader": "disk sequential read (memmap files)", "kind": "baseline", "samples_per_s": round(n / disk)})
    for backend, data in stores.items():

        def cold(path=tmp / backend, data=data):
            evict(path)
            loader_epoch(FlashDataLoader(data, batch_size=BATCH, shuffle=True))

        rows.append(
            {
                "loader": f"FlashDataLoader, {backend} store, cold",
                "kind": "datalflash",
                "samples_per_s": round(median_rate(n, cold, repeat)),
            }
        )
    for name, measure in PEERS.items():
        try:
            rate = measure(x, y, tmp / f"peer-{len(rows)}", peer_seconds)
            rows.append({"loader": name, "kind": "peer", "samples_per_s": round(rate)})
        except Skip as e:
            rows.append({"loader": name, "kind": "peer", "samples_per_s": None, "skipped": str(e)})
    limit = rows[0]["samples_per_s"]
    torch_rate = rows[1]["samples_per_s"]
    for r in rows:
        if r["samples_per_s"]:
            r["x_limit"], r["x_torch"] = round(r["samples_per_s"] / limit, 3), round(r["samples_per_s"] / torch_rate, 2)
    return rows


def loading_table(rows: list[dict]) -> str:
    lines = ["| loader | samples/s | x in-RAM limit | x torch DataLoader |", "|---|---|---|---|"]
    for r in rows:
        if r["samples_per_s"] is None:
            lines.append(f"| {r['loader']} | skipped: {r['skipped'][:90]} | | |")
        else:
            lines.append(f"| {r['loader']} | {r['samples_per_s']:,} | {r['x_limit']:.2f} | {r['x_torch']:.2g} |")
    return "\n".join(lines)


def graph(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["samples_per_s"]]
    colors = {"datalflash": "#1f77b4", "baseline": "#7f7f7f", "peer": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(shown) + 1.4))
    ax.barh([r["loader"] for r in shown], [r["samples_per_s"] for r in shown], color=[colors[r["kind"]] for r in shown])
    for i, r in enumerate(shown):
        ax.text(r["samples_per_s"], i, f" {r['samples_per_s'] / 1e3:,.0f} k", va="center", fontsize=8)
    from matplotlib.patches import Patch

    labels = {"datalflash": "DataLFlash", "baseline": "limits and torch", "peer": "peer libraries"}
    ax.legend(handles=[Patch(color=colors[k], label=v) for k, v in labels.items()], loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (log scale)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--peer-seconds", type=float, default=10.0, help="cap on each peer's timed pass")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args()
    x, y = cifar_like(args.samples)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        load_rows = loading(x, y, Path(tmp), args.repeat, args.peer_seconds)
        train_rows = bench_training.measure(x[: args.train_samples], y[: args.train_samples], Path(tmp))
    info = machine()
    where = f"{info['processor']}, {info['cpus']} CPUs, torch {info['torch']}, {'CUDA' if info['cuda'] else 'no GPU'}"
    title = f"{args.samples:,} CIFAR-shaped samples, batch {BATCH}, shuffled ({where})"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(
        json.dumps({"machine": info, "loading": load_rows, "training": train_rows}, indent=2) + "\n"
    )
    text = (
        f"## Loading\n\n{title}; median of {args.repeat}; peers capped at {args.peer_seconds:g} s\n\n"
        f"{loading_table(load_rows)}\n\n"
        f"## Training\n\nSmall CNN on CPU, {args.train_samples:,} samples, one epoch after a warm-up epoch\n\n"
        f"{bench_training.table(train_rows)}\n"
    )
    (args.out / "report.md").write_text(text)
    graph(load_rows, args.out / "report.png", title)
    print(text)
    print(f"wrote {args.out}/report.json, report.md, report.png")


if __name__ == "__main__":
    main()
