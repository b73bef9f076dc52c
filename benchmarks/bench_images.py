"""Images kept as JPEG, decoded with random-resized crops to 224, side by side in one run.

Data: an ImageNet-like folder of JPEGs (200-500 pixels a side, quality 90, two classes) cut and
resized from scikit-learn's real photographs (``load_sample_images``). Measured, idle and with
one busy process per core (the model keeping the CPU busy):

* the decoder's own single-image rate (one thread): decode + random-resized crop + resize to 224
  as the loader does it (simplejpeg when installed, else Pillow; torch's resize of the crop), and
  plain Pillow (full decode, then Pillow's crop + resize) for reference;
* ``FlashDataLoader`` over the converted store (``image_size=224``, batch 256, shuffled);
* torch's ``DataLoader`` over an ImageFolder-style dataset (Pillow decode, the same crop with
  Python's ``random``, ``default_collate``) with as many workers as cores;
* LitData (``optimize`` with PIL JPEG images: its JPEG serializer keeps the files' bytes) and
  Mosaic Streaming (an MDS ``jpeg`` column) with the same crop per sample and as many workers,
  where they import (both require torchvision, which here installs only beside a newer, CUDA
  torch: run the script from a virtual environment holding them, e.g. ``python -m venv
  --system-site-packages peers && peers/bin/pip install litdata mosaicml-streaming``; elsewhere
  they are reported skipped);
* the store's size against the folder's, and conversion time against ``cp -r`` of the folder.

Each loader is timed over ``--epochs`` epochs after a first one. An epoch's first batch waits for
its first window (up to ``read_ahead_bytes`` of chunks; here the whole 5,000 images), which a
small dataset feels and ImageNet's 256 windows an epoch do not.

Usage: ``python benchmarks/bench_images.py [--images 5000] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_ragged import _nothing, busy_cores
from common import dir_bytes, save_results
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datalflash.batching.images import ATTEMPTS, ImageDecode, decode_image, plan_crops, sample_uniforms
from datalflash.core import get_dataloaders
from datalflash.loading.decoders import usable_cores
from datalflash.utils import DatasetConverter

BATCH = 256
SIZE = 224


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of 200-500 pixels a side in ``root/<class>/``, from scikit-learn's photographs."""
    from sklearn.datasets import load_sample_images

    done = root / f".done-{n}"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for name in ("china", "flower"):
        (root / name).mkdir(parents=True)
    for i in range(n):
        photo = photos[i % 2]
        h, w = (int(v) for v in rng.integers(200, 501, 2))
        ch, cw = min(h, photo.height), min(w, photo.width)
        y, x = int(rng.integers(0, photo.height - ch + 1)), int(rng.integers(0, photo.width - cw + 1))
        piece = photo.resize((w, h), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        piece.save(root / ("china", "flower")[i % 2] / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def files_of(root: Path) -> list[tuple[Path, int]]:
    return [
        (p, k)
        for k, c in enumerate(sorted(d.name for d in root.iterdir() if d.is_dir()))
        for p in sorted((root / c).iterdir())
    ]


def decoder_rates(files: list[tuple[Path, int]], count: int = 400) -> dict[str, float]:
    """Images per second, one thread: the loader's decode (reduced-scale JPEG decode when the crop
    allows) and plain Pillow, each with a random-resized crop to 224."""
    datas = [p.read_bytes() for p, _ in files[:count]]
    sizes = []
    for data in datas:
        with Image.open(io.BytesIO(data)) as im:
            sizes.append((im.height, im.width))
    h, w = np.array(sizes).T
    boxes = plan_crops(
        h, w, ImageDecode(size=SIZE, crop="random"), sample_uniforms(0, 0, np.arange(count), 2 * ATTEMPTS + 2)
    )

    def ours() -> None:
        for data, box in zip(datas, boxes):
            decode_image(data, box, (SIZE, SIZE))

    def plain() -> None:
        for data, box in zip(datas, boxes):
            with Image.open(io.BytesIO(data)) as im:
                np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=tuple(box)))

    rates = {}
    for name, fn in (("datalflash decode + crop/resize", ours), ("plain Pillow decode + crop/resize", plain)):
        fn()
        start = time.perf_counter()
        fn()
        rates[name] = count / (time.perf_counter() - start)
    return rates


class FolderDataset(Dataset):
    """What a user writes without torchvision: Pillow decode, random-resized crop to 224 with
    Python's ``random`` (torchvision's algorithm), a uint8 CHW tensor and the label."""

    def __init__(self, files: list[tuple[Path, int]]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
            box = _random_resized_crop(im.width, im.height)
            out = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)
        return torch.from_numpy(np.array(out)).permute(2, 0, 1), label


def _random_resized_crop(w: int, h: int) -> tuple[int, int, int, int]:
    area = w * h
    for _ in range(10):
        target = area * random.uniform(0.08, 1.0)
        aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            return x, y, x + cw, y + ch
    return 0, 0, w, h


def _cropped(image) -> torch.Tensor:
    """A decoded image (PIL, or a CHW uint8 tensor as LitData decodes with torchvision) as the
    baseline crops it: random-resized crop to 224, uint8 CHW."""
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    image = image.convert("RGB")
    out = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=_random_resized_crop(image.width, image.height))
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


def _jpeg(path: Path):
    """The file as a PIL JPEG image (not decoded yet: serializers keep its bytes)."""
    return Image.open(path)


def litdata_loader(files: list[tuple[Path, int]], workdir: Path, workers: int):
    """LitData: ``optimize`` with PIL JPEG images (its JPEG serializer keeps the files' bytes), then
    a StreamingDataset cropping each decoded image, and its StreamingDataLoader."""
    if isinstance(litdata, Exception):
        raise Skip(f"litdata not importable: {type(litdata).__name__}: {str(litdata)[:80]}")
    litdata.optimize(
        fn=_lit_sample,
        inputs=[(str(p), k) for p, k in files],
        output_dir=str(workdir / "litdata"),
        chunk_bytes="64MB",
        num_workers=workers,
        mode="overwrite",
    )

    return litdata.StreamingDataLoader(
        LitCropped(str(workdir / "litdata"), shuffle=True),
        batch_size=BATCH,
        num_workers=workers,
        persistent_workers=True,
    )


def _lit_sample(item: tuple[str, int]) -> dict:
    return {"image": _jpeg(Path(item[0])), "label": item[1]}


def mosaic_loader(files: list[tuple[Path, int]], workdir: Path, workers: int):
    """Mosaic Streaming: MDS shards with its ``jpeg`` column (images encoded as JPEG), its
    StreamingDataset cropping each decoded image, torch's DataLoader."""
    if isinstance(streaming, Exception):
        raise Skip(f"streaming not importable: {type(streaming).__name__}: {str(streaming)[:80]}")
    with streaming.MDSWriter(out=str(workdir / "mds"), columns={"image": "jpeg", "label": "int"}) as out:
        for path, label in files:
            out.write({"image": _jpeg(path), "label": label})

    dataset = MosaicCropped(local=str(workdir / "mds"), shuffle=True, batch_size=BATCH)
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers, persistent_workers=True)


class Skip(Exception):
    """A peer that cannot be measured here (the message says why)."""


try:  # (the peers, where they install: classes at module level, for worker processes that spawn)
    import litdata

    class LitCropped(litdata.StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return _cropped(sample["image"]), sample["label"]

except Exception as e:
    litdata = e
try:
    import streaming

    class MosaicCropped(streaming.StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return _cropped(sample["image"]), sample["label"]

except Exception as e:
    streaming = e


def loader_rate(loader, epochs: int) -> tuple[float, float]:
    """Images per second over ``epochs`` epochs after a first one (warm caches, started workers):
    over whole epochs, and once each epoch's first batch is out (the steady rate)."""
    for _ in loader:
        pass
    count, steady_count, elapsed, steady = 0, 0, 0.0, 0.0
    for _ in range(epochs):
        start = first = time.perf_counter()
        for k, (images, _) in enumerate(loader):
            count += len(images)
            if k == 0:
                first = time.perf_counter()
            else:
                steady_count += len(images)
        elapsed += time.perf_counter() - start
        steady += time.perf_counter() - first
    return count / elapsed, steady_count / steady


def conversion_times(folder: Path, tmp: Path, rounds: int = 3) -> tuple[float, float, Path]:
    """Median seconds of ``cp -r`` of the folder and of its conversion, taken in turn ``rounds``
    times (the machine is shared: one copy may take 3x another), and the last store."""
    copies, conversions = [], []
    store = tmp / "store"
    for _ in range(rounds):
        for path in (tmp / "copy", store):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(folder), str(tmp / "copy")], check=True)
        copies.append(time.perf_counter() - start)
        subprocess.run(["sync"], check=False)
        start = time.perf_counter()
        DatasetConverter.create_chunked_dataset(
            str(folder), store, split_ratios={"train": 1.0}, chunk_size=1000, progress=False
        )
        conversions.append(time.perf_counter() - start)
    return statistics.median(copies), statistics.median(conversions), store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--idle-only", action="store_true", help="skip the runs under load")
    parser.add_argument("--conversion-only", action="store_true", help="measure the conversion and the store size only")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "datalflash-bench-images")
    args = parser.parse_args()
    cores = usable_cores()
    folder = make_folder(args.folder, args.images)
    files = files_of(folder)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy_s, convert_s, store = conversion_times(folder, Path(tmp))
        folder_bytes, store_bytes = dir_bytes(folder), dir_bytes(Path(store))
        rows.append({"measure": "cp -r of the folder, median of 3 [s]", "value": round(copy_s, 2)})
        rows.append({"measure": "conversion, median of 3 [s]", "value": round(convert_s, 2)})
        rows.append({"measure": "conversion / cp -r (rate)", "value": round(copy_s / convert_s, 2)})
        rows.append({"measure": "store size / folder size", "value": round(store_bytes / folder_bytes, 3)})
        for load in () if args.conversion_only else ("idle",) if args.idle_only else ("idle", "under load"):
            with busy_cores() if load == "under load" else _nothing():
                single = decoder_rates(files)
                chosen = next(iter(single.values()))
                flash, flash_steady = loader_rate(
                    get_dataloaders(store, batch_size=BATCH, image_size=SIZE, seed=0)["train"], args.epochs
                )
                torch_dl, torch_steady = loader_rate(
                    DataLoader(FolderDataset(files), BATCH, shuffle=True, num_workers=cores, persistent_workers=True),
                    args.epochs,
                )
                for peer, make in (
                    ("LitData (JPEG serializer)", litdata_loader),
                    ("Mosaic Streaming (jpeg)", mosaic_loader),
                ):
                    try:
                        peer_rate, _ = loader_rate(make(files, Path(tmp) / load.replace(" ", "-"), cores), args.epochs)
                        rows.append(
                            {"measure": f"{peer}, {cores} workers [img/s]", "load": load, "value": round(peer_rate)}
                        )
                        rows.append(
                            {"measure": f"FlashDataLoader / {peer}", "load": load, "value": round(flash / peer_rate, 2)}
                        )
                    except Skip as e:
                        rows.append({"measure": f"{peer}", "load": load, "value": f"skipped: {e}"})
                for name, r in single.items():
                    rows.append({"measure": f"{name}, 1 thread [img/s]", "load": load, "value": round(r)})
                rows.append({"measure": "FlashDataLoader [img/s]", "load": load, "value": round(flash)})
                rows.append({"measure": "FlashDataLoader, steady [img/s]", "load": load, "value": round(flash_steady)})
                rows.append(
                    {"measure": f"torch DataLoader, {cores} workers [img/s]", "load": load, "value": round(torch_dl)}
                )
                rows.append(
                    {
                        "measure": f"FlashDataLoader / (decoder x {cores} cores)",
                        "load": load,
                        "value": round(flash / (chosen * cores), 2),
                    }
                )
                rows.append(
                    {"measure": "FlashDataLoader / torch DataLoader", "load": load, "value": round(flash / torch_dl, 2)}
                )
                steady_ratio = round(flash_steady / torch_steady, 2)
                rows.append(
                    {"measure": "steady: FlashDataLoader / torch DataLoader", "load": load, "value": steady_ratio}
                )
                print(rows[-8:], flush=True)
    table = "\n".join(f"| {r['measure']} | {r.get('load', '')} | {r['value']} |" for r in rows)
    table = "| measure | load | value |\n|---|---|---|\n" + table
    print(table)
    save_results("images-conversion" if args.conversion_only else "images", rows, table)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
