"""A user's ``collate_fn`` on a store split, side by side in one run: FlashDataLoader reading a
warm Zarr store (whole chunks read ahead, each batch's samples sliced from the gathered rows and
handed to ``collate_fn``) against torch's DataLoader with the same ``collate_fn`` over the same
samples in RAM (0 workers), idle and with one busy process per core.

Two sets of real data: scikit-learn's handwritten digits (8x8 images, repeated to 60,000
samples) with ``default_collate``, and token ids of the standard library's own sources (16-512
tokens) with a ``str`` label and a padding ``collate_fn``. Before this path existed, a store split
given a ``collate_fn`` was read by torch's DataLoader one sample at a time (measured: ~740x slower
shuffled); that fallback is shown too, for the digits, capped in time.

Usage: ``python benchmarks/bench_collate.py [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_ragged import BATCH, Sequences, _nothing, busy_cores, make_sequences, rate
from common import save_results
from torch.utils.data import DataLoader, TensorDataset, default_collate

from datalflash.core import FlashDataLoader
from datalflash.loading import ChunkedDataset
from datalflash.utils import DatasetConverter


def digits(n: int) -> TensorDataset:
    """scikit-learn's 1,797 real digits (float32 1x8x8 in 0..1, int64 labels), repeated to ``n``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    reps = -(-n // len(data.target))
    images = torch.from_numpy(np.tile(data.images.astype(np.float32) / 16, (reps, 1, 1))[:n]).unsqueeze(1)
    labels = torch.from_numpy(np.tile(data.target.astype(np.int64), reps)[:n])
    return TensorDataset(images, labels)


def pad_with_labels(samples: list[dict]) -> dict:
    """The padding collate_fn users write: padded tokens, lengths, the labels as a list."""
    tokens = [s["tokens"] for s in samples]
    return {
        "tokens": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
        "lengths": torch.tensor([len(t) for t in tokens]),
        "label": [s["label"] for s in samples],
    }


class FirstBatches:
    """At most ``limit`` batches of each pass over ``loader`` (the per-sample fallback is slow)."""

    def __init__(self, loader, limit: int):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.limit:
                return
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        digit_set = digits(60_000)
        path = DatasetConverter.create_chunked_dataset(
            digit_set, Path(tmp) / "digits", split_ratios={"train": 1.0}, progress=False
        )
        split = ChunkedDataset(path, "train")
        values, offsets = make_sequences(60_000, 16, 512, seed=3)
        texts = Sequences(values, offsets, [f"module-{i % 500}" for i in range(60_000)])
        text_path = DatasetConverter.create_chunked_dataset(
            texts, Path(tmp) / "text", split_ratios={"train": 1.0}, progress=False
        )
        text_split = ChunkedDataset(text_path, "train")
        runs = {
            ("digits", "datalflash, zarr store"): lambda: FlashDataLoader(
                split, BATCH, shuffle=True, collate_fn=default_collate
            ),
            ("digits", "torch DataLoader, RAM"): lambda: DataLoader(
                digit_set, BATCH, shuffle=True, collate_fn=default_collate
            ),
            ("digits", "torch DataLoader over the store split (the old fallback)"): lambda: FirstBatches(
                DataLoader(split, BATCH, shuffle=True, collate_fn=default_collate), 20
            ),
            ("text", "datalflash, zarr store"): lambda: FlashDataLoader(
                text_split, BATCH, shuffle=True, collate_fn=pad_with_labels
            ),
            ("text", "torch DataLoader, RAM"): lambda: DataLoader(
                texts, BATCH, shuffle=True, collate_fn=pad_with_labels
            ),
        }
        for load in ("idle", "under load"):
            with busy_cores() if load == "under load" else _nothing():
                for (data, name), make in runs.items():
                    value = rate(make, args.seconds)
                    rows.append({"set": data, "load": load, "loader": name, "samples_per_s": value})
                    print(f"  {data:<6} {load:>10}  {name:<58} {value:>12,.0f} samples/s", flush=True)
    ratios = {}
    for load in ("idle", "under load"):
        get = {(r["set"], r["loader"]): r["samples_per_s"] for r in rows if r["load"] == load}
        ratios[load] = {
            f"{data}: datalflash / torch DataLoader in RAM (>= 0.5)": get[(data, "datalflash, zarr store")]
            / get[(data, "torch DataLoader, RAM")]
            for data in ("digits", "text")
        }
        ratios[load]["digits: datalflash / the old per-sample fallback"] = (
            get[("digits", "datalflash, zarr store")]
            / get[("digits", "torch DataLoader over the store split (the old fallback)")]
        )
    print(json.dumps(ratios, indent=2))
    table = "\n".join(f"| {load} | {k} | {v:.2f} |" for load, r in ratios.items() for k, v in r.items())
    save_results("collate", [*rows, {"ratios": ratios}], "| load | ratio | value |\n|---|---|---|\n" + table)


if __name__ == "__main__":
    main()
