"""How image decoding scales over threads, without the loader: one thread per core decoding
preloaded JPEGs with a random-resized crop to 224, against one thread alone; torch's intra-op
threads left as they are, then set to 1 (to see whether they fight the decoding threads).

Usage: ``python benchmarks/decode_scaling.py [--images 3000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from bench_images import SIZE, files_of, make_folder

from datalflash.batching.images import ATTEMPTS, ImageDecode, decode_image, decode_pixels, plan_crops, sample_uniforms
from datalflash.loading.decoders import usable_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    folder = make_folder(Path(tempfile.gettempdir()) / "datalflash-bench-images", args.images)
    datas = [p.read_bytes() for p, _ in files_of(folder)]
    sizes = np.array([[*decode_pixels(d).shape[:2]] for d in datas])
    boxes = plan_crops(
        sizes[:, 0], sizes[:, 1], ImageDecode(size=SIZE, crop="random"),
        sample_uniforms(0, 0, np.arange(len(datas)), 2 * ATTEMPTS + 2),
    )  # fmt: skip
    cores = usable_cores()

    def work(part: range) -> None:
        for i in part:
            decode_image(datas[i], boxes[i], (SIZE, SIZE))

    def rate(threads: int) -> float:
        parts = [range(k, len(datas), threads) for k in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, parts))
            start = time.perf_counter()
            list(pool.map(work, parts))
            return len(datas) / (time.perf_counter() - start)

    out: dict = {"cores": cores, "torch threads": torch.get_num_threads()}
    for label in ("torch threads as they are", "torch.set_num_threads(1)"):
        if label.startswith("torch.set"):
            torch.set_num_threads(1)
        one, many = rate(1), rate(cores)
        out[label] = {"1 thread": round(one), f"{cores} threads": round(many), "scaling": round(many / one / cores, 2)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
