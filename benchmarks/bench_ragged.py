"""Variable-length data, side by side in one run: what this machine can do (bare vectorized pad,
bare ``torch.cat``) against FlashDataLoader on a warm Zarr store (pad, packed; the split kept
decoded across epochs, as it fits ``read_ahead_bytes``, and streamed in 32 MiB windows decoded
every epoch, as a split larger than the budget is), torch's DataLoader
with ``pad_sequence`` over the same tensors in RAM (0 and 2 workers) and Hugging Face datasets
(Arrow) with the same padding; idle and with one busy process per core.

Token values are real text (the Python standard library's sources, by bytes); lengths are drawn
uniformly from 16..1024 (long) and 1..256 with a ``str`` label per sample (short). Also: padding
with and without bucketing under a token budget, the shuffle quality of those batches, and the
conversion rate of the ragged set against ``np.save`` of its values.

Usage: ``python benchmarks/bench_ragged.py [--samples 200000] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from common import save_results
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from datalflash.core import FlashDataLoader
from datalflash.loading import ChunkedDataset
from datalflash.ordering import score_order
from datalflash.utils import DatasetConverter

BATCH = 64
STREAM_BUDGET = 64 * 2**20


def corpus_bytes(total: int) -> np.ndarray:
    """``total`` bytes of real text: the standard library's sources, repeated as needed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        size += len(data)
        if size >= total:
            break
    text = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return np.resize(text, total)


def make_sequences(n: int, low: int, high: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(values int32, offsets int64)`` of ``n`` sequences of ``low..high`` tokens of real text."""
    lengths = np.random.default_rng(seed).integers(low, high + 1, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return corpus_bytes(int(offsets[-1])).astype(np.int32), offsets


class Sequences(Dataset):
    """Map-style dataset of the sequences (tensors viewing one flat array), with optional labels."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, labels: list[str] | None = None):
        flat = torch.from_numpy(values)
        self.items = [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self.labels is None:
            return self.items[i]
        return {"tokens": self.items[i], "label": self.labels[i]}


def pad_collate(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sequence(batch, batch_first=True), torch.tensor([len(t) for t in batch])


def labelled_collate(batch: list[dict]) -> dict:
    tokens, lengths = pad_collate([b["tokens"] for b in batch])
    return {"tokens": tokens, "lengths": lengths, "label": [b["label"] for b in batch]}


class Epochs:
    """An iterable whose every iteration runs ``epoch()`` (the bare baselines)."""

    def __init__(self, epoch: Callable[[], Iterable]):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.epoch())


def rate(make: Callable[[], Iterable], seconds: float) -> float:
    """Samples per second over passes of one ``make()`` (a loader is built once and iterated
    epoch after epoch, as a training loop does) for at least ``seconds``, after a first pass."""
    loader = make()
    for _ in loader:  # (a first epoch: warm caches, started workers)
        pass
    count, start = 0, time.perf_counter()
    while True:
        for _ in loader:
            count += BATCH
            if time.perf_counter() - start > seconds:
                close = getattr(loader, "close", None)
                if close is not None:
                    close()
                return count / (time.perf_counter() - start)


def bare_pad(values: np.ndarray, offsets: np.ndarray) -> Callable[[], Epochs]:
    """numpy: concatenate each batch's sequences, masked assign into a zeroed padded array."""
    n = len(offsets) - 1

    def epoch():
        order = np.random.default_rng(1).permutation(n)
        for k in range(0, n - BATCH + 1, BATCH):
            idx = order[k : k + BATCH]
            starts, stops = offsets[idx], offsets[idx + 1]
            lengths = stops - starts
            out = np.zeros((BATCH, lengths.max()), np.int32)
            out[np.arange(lengths.max()) < lengths[:, None]] = np.concatenate(
                [values[a:b] for a, b in zip(starts, stops)]
            )
            yield out

    return lambda: Epochs(epoch)


def bare_cat(dataset: Sequences) -> Callable[[], Epochs]:
    """torch: ``torch.cat`` of each batch's sequence tensors (packed)."""
    n = len(dataset)

    def epoch():
        order = np.random.default_rng(1).permutation(n).tolist()
        for k in range(0, n - BATCH + 1, BATCH):
            yield torch.cat([dataset.items[i] for i in order[k : k + BATCH]])

    return lambda: Epochs(epoch)


def hf_dataset(values: np.ndarray, offsets: np.ndarray):
    import datasets
    import pyarrow as pa

    column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return datasets.Dataset(pa.table({"ids": column})).with_format("torch")


@contextmanager
def busy_cores():
    """One busy process per core for the duration (the model keeping the CPU busy)."""
    stop = multiprocessing.get_context("fork").Event()
    procs = [
        multiprocessing.get_context("fork").Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 1)
    ]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join()


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def long_sequences(n: int, seconds: float, tmp: Path) -> list[dict]:
    values, offsets = make_sequences(n, 16, 1024)
    data = Sequences(values, offsets)
    start = time.perf_counter()
    np.save(tmp / "values.npy", values)
    np.save(tmp / "offsets.npy", offsets)
    os.sync()
    npsave = time.perf_counter() - start
    start = time.perf_counter()
    store = DatasetConverter.create_chunked_dataset(data, tmp / "long", split_ratios={"train": 1.0}, progress=False)
    os.sync()
    convert = time.perf_counter() - start
    split = ChunkedDataset(store, "train")
    ours = {  # (the split fits the default read_ahead_bytes: read once, kept decoded across epochs)
        mode: lambda mode=mode: FlashDataLoader(split, batch_size=BATCH, shuffle=True, collate=mode, drop_last=True)
        for mode in ("pad", "packed")
    }
    streamed = {  # (a 64 MiB budget: 32 MiB windows read and decoded every epoch, as a split larger than RAM)
        mode: lambda mode=mode: FlashDataLoader(
            split, batch_size=BATCH, shuffle=True, collate=mode, drop_last=True, read_ahead_bytes=STREAM_BUDGET
        )
        for mode in ("pad", "packed")
    }
    hf = hf_dataset(values, offsets)
    hf_collate = lambda rows: pad_collate([r["ids"] for r in rows])  # noqa: E731
    runs = {
        "bare vectorized pad (numpy, RAM)": bare_pad(values, offsets),
        "bare torch.cat (packed, RAM)": bare_cat(data),
        "datalflash pad (zarr, warm)": ours["pad"],
        "datalflash packed (zarr, warm)": ours["packed"],
        "datalflash pad (zarr, warm, streamed)": streamed["pad"],
        "datalflash packed (zarr, warm, streamed)": streamed["packed"],
        "torch DataLoader + pad_sequence (RAM, 0 workers)": lambda: DataLoader(
            data, BATCH, shuffle=True, collate_fn=pad_collate, drop_last=True
        ),
        "torch DataLoader + pad_sequence (RAM, 2 workers)": lambda: DataLoader(
            data, BATCH, shuffle=True, collate_fn=pad_collate, drop_last=True, num_workers=2
        ),
        "HF datasets (Arrow) + pad_sequence": lambda: DataLoader(
            hf, BATCH, shuffle=True, collate_fn=hf_collate, drop_last=True
        ),
    }
    rows = []
    for load in ("idle", "under load"):
        with busy_cores() if load == "under load" else _nothing():
            for name, run in runs.items():
                rows.append({"set": "long", "load": load, "loader": name, "seq_per_s": rate(run, seconds)})
                print(f"  long {load:>10}  {name:<50} {rows[-1]['seq_per_s']:>12,.0f} seq/s", flush=True)
    rows.append(
        {"set": "long", "conversion_s": convert, "np_save_s": npsave, "conversion_vs_np_save": npsave / convert}
    )
    print(f"  conversion {convert:.2f} s, np.save {npsave:.2f} s: ratio {npsave / convert:.2f}", flush=True)
    return rows


@contextmanager
def _nothing():
    yield


def short_sequences(n: int, seconds: float, tmp: Path) -> list[dict]:
    values, offsets = make_sequences(n, 1, 256, seed=2)
    labels = [f"class-{i % 1000}" for i in range(n)]
    data = Sequences(values, offsets, labels)
    store = DatasetConverter.create_chunked_dataset(data, tmp / "short", split_ratios={"train": 1.0}, progress=False)
    split = ChunkedDataset(store, "train")
    runs = {
        "datalflash pad + labels (zarr, warm)": lambda: FlashDataLoader(
            split, batch_size=BATCH, shuffle=True, drop_last=True
        ),
        "torch DataLoader, pad + lengths + labels (RAM, 0 workers)": lambda: DataLoader(
            data, BATCH, shuffle=True, collate_fn=labelled_collate, drop_last=True
        ),
    }
    rows = []
    for load in ("idle", "under load"):
        with busy_cores() if load == "under load" else _nothing():
            for name, run in runs.items():
                rows.append({"set": "short", "load": load, "loader": name, "seq_per_s": rate(run, seconds)})
                print(f"  short {load:>10} {name:<58} {rows[-1]['seq_per_s']:>12,.0f} seq/s", flush=True)
    return rows


def token_budgets(tmp: Path) -> list[dict]:
    store = tmp / "long"
    split = ChunkedDataset(store, "train")
    rows = []
    for bucket in (None, 512, 4096):
        loader = FlashDataLoader(
            split, batch_size=None, shuffle=True, max_tokens=32768, bucket_size=bucket, seed=0, window_chunks=None
        )
        stored = real = 0
        positions = []
        for batch in loader:  # (samples of the long set are token ids alone: a batch is a Padded)
            stored += batch.data.numel()
            real += int(batch.lengths.sum())
            positions.append(batch.lengths)  # (lengths stand in for labels: how mixed each batch is)
        quality = score_order([p // 64 for p in positions])
        rows.append(
            {
                "set": "tokens",
                "bucket_size": bucket,
                "batches": len(positions),
                "padding_fraction": 1 - real / stored,
                "length_mixing": quality.label_mixing_ratio,
            }
        )
        print(
            f"  max_tokens=32768 bucket_size={bucket!s:>5}: {len(positions)} batches, padding {1 - real / stored:.1%}, "
            f"length-bucket mixing {quality.label_mixing_ratio:.2f} of iid",
            flush=True,
        )
    return rows


def ratios(rows: list[dict]) -> dict:
    def get(set_, load, name):
        return next(
            r["seq_per_s"] for r in rows if r.get("set") == set_ and r.get("load") == load and r["loader"] == name
        )

    out = {}
    for load in ("idle", "under load"):
        pad = get("long", load, "datalflash pad (zarr, warm)")
        packed = get("long", load, "datalflash packed (zarr, warm)")
        out[load] = {
            "pad / bare pad (>= 0.6)": pad / get("long", load, "bare vectorized pad (numpy, RAM)"),
            "packed / bare cat (>= 0.6)": packed / get("long", load, "bare torch.cat (packed, RAM)"),
            "streamed: pad / bare pad": get("long", load, "datalflash pad (zarr, warm, streamed)")
            / get("long", load, "bare vectorized pad (numpy, RAM)"),
            "streamed: packed / bare cat": get("long", load, "datalflash packed (zarr, warm, streamed)")
            / get("long", load, "bare torch.cat (packed, RAM)"),
            "pad / torch DL 0 workers (>= 1.5)": pad
            / get("long", load, "torch DataLoader + pad_sequence (RAM, 0 workers)"),
            "pad / torch DL 2 workers": pad / get("long", load, "torch DataLoader + pad_sequence (RAM, 2 workers)"),
            "pad / HF datasets (>= 5)": pad / get("long", load, "HF datasets (Arrow) + pad_sequence"),
            "short: pad+labels / torch DL 0 workers (>= 3)": get("short", load, "datalflash pad + labels (zarr, warm)")
            / get("short", load, "torch DataLoader, pad + lengths + labels (RAM, 0 workers)"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, as the targets were measured
    with tempfile.TemporaryDirectory() as tmp:
        rows = long_sequences(args.samples, args.seconds, Path(tmp))
        rows += short_sequences(args.samples, args.seconds, Path(tmp))
        rows += token_budgets(Path(tmp))
        summary = ratios(rows)
    print(json.dumps(summary, indent=2))
    table = "\n".join(f"| {load} | {k} | {v:.2f} |" for load, r in summary.items() for k, v in r.items())
    save_results("ragged", [*rows, {"ratios": summary}], "| load | ratio | value |\n|---|---|---|\n" + table)


if __name__ == "__main__":
    main()
