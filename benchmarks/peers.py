"""Peer loaders on the same CIFAR-shaped data, each measured when its package imports.

Each ``measure_*`` writes the data in the peer's own format under ``workdir``, then times one
shuffled pass at batch 256 (capped at ``max_seconds``) and returns samples/s. A missing or
broken package raises :class:`Skip` with the reason, and the suite goes on.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

BATCH = 256


class Skip(Exception):
    """The peer cannot be measured here (the message says why)."""


def _rate(batches: Iterable, max_seconds: float) -> float:
    start, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch[1]) if isinstance(batch, (list, tuple)) else len(batch["label"])
        if time.perf_counter() - start > max_seconds:
            break
    return n / (time.perf_counter() - start)


def _need(module: str):
    try:
        return __import__(module)
    except Exception as e:  # ImportError, or a package broken by its own missing dependencies
        raise Skip(f"{module} not importable: {type(e).__name__}: {e}") from None


def measure_webdataset(x: torch.Tensor, y: torch.Tensor, workdir: Path, max_seconds: float) -> float:
    """WebDataset tar shards of raw ``.npy`` images, decoded per sample, shuffle buffer 1000."""
    wds = _need("webdataset")
    workdir.mkdir(parents=True, exist_ok=True)
    pattern = str(workdir / "shard-%04d.tar")
    with wds.ShardWriter(pattern, maxcount=10_000, verbose=0) as sink:
        for i in range(len(x)):
            buf = io.BytesIO()
            np.save(buf, x[i].numpy())
            sink.write({"__key__": f"{i:08d}", "npy": buf.getvalue(), "cls": str(int(y[i])).encode()})
    urls = sorted(str(p) for p in workdir.glob("shard-*.tar"))
    decode = lambda s: (torch.from_numpy(np.load(io.BytesIO(s["npy"]))), int(s["cls"]))  # noqa: E731
    dataset = wds.WebDataset(urls, shardshuffle=len(urls)).shuffle(1000).map(decode).batched(BATCH)
    return _rate(DataLoader(dataset, batch_size=None), max_seconds)


def measure_hf_datasets(x: torch.Tensor, y: torch.Tensor, workdir: Path, max_seconds: float) -> float:
    """Hugging Face datasets (Arrow on disk), torch format, a whole batch per fetch (its fast path)."""
    datasets = _need("datasets")
    try:
        from torchvision.io import VideoReader  # noqa: F401  (datasets < 4 imports it when torchvision is there)
    except ImportError:
        datasets.config.TORCHVISION_AVAILABLE = False  # (torchvision >= 0.25 dropped it; arrays need no video)
    except Exception:
        pass
    features = datasets.Features(
        {"image": datasets.Array3D(shape=tuple(x.shape[1:]), dtype="uint8"), "label": datasets.Value("int64")}
    )  # fixed-shape arrays: HF's fast layout
    ds = datasets.Dataset.from_dict({"image": x.numpy(), "label": y.numpy()}, features=features)
    ds.save_to_disk(str(workdir))
    ds = datasets.load_from_disk(str(workdir)).with_format("torch")
    sampler = BatchSampler(RandomSampler(ds), BATCH, drop_last=False)
    return _rate(DataLoader(ds, sampler=sampler, batch_size=None), max_seconds)


def _lit_sample(images: np.ndarray, labels: np.ndarray, i: int) -> dict:
    return {"image": images[i], "label": int(labels[i])}


def measure_litdata(x: torch.Tensor, y: torch.Tensor, workdir: Path, max_seconds: float) -> float:
    """LitData: ``optimize`` into chunks, then its StreamingDataLoader, 0 workers."""
    litdata = _need("litdata")
    litdata.optimize(
        fn=partial(_lit_sample, x.numpy(), y.numpy()),
        inputs=list(range(len(x))),
        output_dir=str(workdir),
        chunk_bytes="64MB",
        num_workers=1,
        mode="overwrite",
    )
    dataset = litdata.StreamingDataset(str(workdir), shuffle=True)
    return _rate(litdata.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0), max_seconds)


def measure_mosaic(x: torch.Tensor, y: torch.Tensor, workdir: Path, max_seconds: float) -> float:
    """Mosaic Streaming: MDS shards, its StreamingDataset, torch's DataLoader, 0 workers."""
    _need("streaming")
    from streaming import MDSWriter, StreamingDataset

    with MDSWriter(out=str(workdir / "mds"), columns={"image": "ndarray:uint8:3,32,32", "label": "int"}) as out:
        for i in range(len(x)):
            out.write({"image": x[i].numpy(), "label": int(y[i])})
    dataset = StreamingDataset(local=str(workdir / "mds"), shuffle=True, batch_size=BATCH)
    return _rate(DataLoader(dataset, batch_size=BATCH), max_seconds)


PEERS: dict[str, Callable[..., float]] = {
    "LitData StreamingDataLoader": measure_litdata,
    "Mosaic Streaming (MDS)": measure_mosaic,
    "WebDataset (tar shards)": measure_webdataset,
    "HF datasets (Arrow)": measure_hf_datasets,
}
