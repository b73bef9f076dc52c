"""The CUDA path, measured on a machine with an NVIDIA GPU (CI has none): one short run.

1. Image decode to the GPU: a folder of JPEGs (``bench_images.make_folder``) converted, then
   ``FlashDataLoader(device="cuda", image_size=224)`` with JPEGs decoded on the GPU (torchvision's
   nvJPEG) and with CPU decode in threads; images per second of each, and how far the GPU's
   center crops are from the CPU's (mean absolute difference, uint8 levels).
2. Transfer overlap: CIFAR-shaped batches (256 x 3x32x32 uint8) from a store copied to the GPU
   (pinned, ``non_blocking`` on a side stream) while a model step runs; the epoch's time against
   the steps alone and the loading alone (overlap = how much of the loading was hidden).

Usage: ``python benchmarks/gpu_check.py [--images 3000]``; writes ``results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_images import decoder_rates, files_of, make_folder
from common import cifar_like

from datalflash.batching.images import ImageDecode
from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.loading.decoders import usable_cores
from datalflash.store import open_store
from datalflash.utils import DatasetConverter


def rate(loader, epochs: int = 2) -> float:
    """Images per second over ``epochs`` epochs after one warm epoch, the GPU synchronized."""
    for _ in loader:
        pass
    torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            count += len(x)
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def image_decode(tmp: Path, n: int) -> dict:
    folder = make_folder(tmp / "folder", n)
    store = DatasetConverter.create_chunked_dataset(
        str(folder), tmp / "store", split_ratios={"train": 1.0}, chunk_size=500, progress=False, num_workers=4
    )
    split = ChunkedDataset(open_store(store), "train")
    single = decoder_rates(files_of(folder))
    cores = usable_cores()
    out = {f"{name}, 1 thread [img/s]": round(r) for name, r in single.items()}
    out["cores"] = cores
    for name, gpu in (("gpu decode", True), ("cpu decode", False)):
        decode = ImageDecode(size=224, crop="random", gpu=gpu)
        loader = FlashDataLoader(
            split, batch_size=256, shuffle=True, seed=0, device="cuda", collate={"0": decode}, window_chunks=4
        )
        out[f"{name} [img/s]"] = round(rate(loader))
        x, _ = next(iter(loader))
        out[f"{name} batch"] = [list(x.shape), str(x.dtype), str(x.device)]
    out["cpu decode / (decoder x cores)"] = round(out["cpu decode [img/s]"] / (next(iter(single.values())) * cores), 2)
    center = {
        gpu: next(
            iter(FlashDataLoader(split, batch_size=64, device="cuda", collate={"0": ImageDecode(size=224, gpu=gpu)}))
        )[0]
        for gpu in (True, False)
    }
    out["gpu vs cpu center crops, mean |diff|"] = round(
        float((center[True].float() - center[False].float()).abs().mean()), 2
    )
    return out


def transfer_overlap(tmp: Path) -> dict:
    x, y = cifar_like(50_000)
    store = DatasetConverter.create_chunked_dataset(
        torch.utils.data.TensorDataset(x, y), tmp / "cifar", split_ratios={"train": 1.0}, progress=False
    )
    split = ChunkedDataset(open_store(store), "train")
    weight = torch.randn(3 * 32 * 32, 4096, device="cuda")
    deep = [torch.randn(4096, 4096, device="cuda") for _ in range(6)]

    def step(batch: torch.Tensor) -> torch.Tensor:
        h = batch.reshape(len(batch), -1).float() @ weight
        for w in deep:
            h = torch.relu(h @ w)
        return h.sum()

    loader = FlashDataLoader(split, batch_size=256, shuffle=True, seed=0, device="cuda")
    resident = [b for b, _ in loader]  # (the same batches, already on the GPU)
    torch.cuda.synchronize()

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    compute = timed(lambda: [step(b) for b in resident])
    loading = timed(lambda: [b for b, _ in loader])
    both = timed(lambda: [step(b) for b, _ in loader])
    hidden = (compute + loading - both) / loading if loading else 0.0
    return {
        "steps alone [s]": round(compute, 3),
        "loading alone [s]": round(loading, 3),
        "loading + steps [s]": round(both, 3),
        "share of loading hidden behind the steps": round(hidden, 2),
        "loading alone [samples/s]": round(50_000 / loading),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        results["images"] = image_decode(Path(tmp), args.images)
        print(json.dumps(results, indent=2), flush=True)
        results["transfer"] = transfer_overlap(Path(tmp))
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
