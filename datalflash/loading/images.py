"""The loader's image stage: the image fields of CPU batches decoded ahead, in threads or
worker processes.

Batches of a split with ``image`` fields arrive with each image encoded (a list of uint8
tensors) and with each row's sample index. :func:`decoded_batches` keeps :data:`AHEAD` batches in
flight: each batch's crops are planned at once (:func:`~datalflash.batching.images.plan_crops`,
random numbers keyed by ``(seed, epoch, sample index)``) and its images decoded by threads or
worker processes (:mod:`datalflash.loading.decoders`) while the batches before it are used. On a
CUDA device with torchvision installed, JPEGs are decoded on the GPU instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from datalflash.batching.images import (
    ATTEMPTS,
    ImageDecode,
    decode_on_gpu,
    finish,
    is_jpeg,
    plan_crops,
    sample_uniforms,
)
from datalflash.loading.batches import SAMPLE_INDEX
from datalflash.loading.chunked import ChunkedDataset
from datalflash.loading.decoders import ThreadDecoder, Wait, make_decoder

Batch = dict[str, Any]
AHEAD = 2  # batches decoded ahead of the one being used


def image_policies(
    dataset: ChunkedDataset, collate: Any, image_size: Any, shuffle: bool
) -> tuple[dict[str, ImageDecode], Any]:
    """``({image field: ImageDecode}, collate without them)`` from a loader's ``collate=`` and
    ``image_size=``: an :class:`ImageDecode` given for a field in ``collate`` is kept; any other
    image field is decoded to ``image_size`` with random-resized crops when ``shuffle`` (training)
    and center crops when not (evaluation), or, without ``image_size``, at its own size."""
    images = [name for name, spec in dataset.store.fields.items() if spec.kind == "image"]
    given = dict(collate) if isinstance(collate, Mapping) else {}
    policies = {name: given[name] for name in images if isinstance(given.get(name), ImageDecode)}
    stray = [name for name, value in given.items() if isinstance(value, ImageDecode) and name not in images]
    if stray:
        raise ValueError(f"collate= gives ImageDecode for {stray}, which are not image fields (images: {images})")
    if image_size is not None and not images:
        raise ValueError(f"image_size={image_size!r}: split {dataset.split!r} has no image fields")
    for name in images:
        if name not in policies:
            crop = "random" if shuffle else "center"
            policies[name] = ImageDecode(size=image_size, crop=crop)
    if isinstance(collate, Mapping):
        rest = {name: value for name, value in collate.items() if name not in policies}
        collate = rest or None
    return policies, collate


def decoded_batches(
    batches: Iterator[Batch],
    policies: Mapping[str, ImageDecode],
    sizes: Mapping[str, str],
    *,
    seed: int,
    epoch: int,
    where: str,
    pin_memory: bool,
    device: torch.device | None,
    context: Any = None,
    timeout: float = 0,
) -> Iterator[Batch]:
    """``batches`` with each image field (``sizes``: its size field) decoded as ``policies``
    say, ``AHEAD`` batches decoded ahead, in threads or worker processes (``context``: their
    multiprocessing context; see :func:`~datalflash.loading.decoders.make_decoder`); errors name
    ``where`` (store and split) and the sample; a batch whose images take longer than ``timeout``
    seconds (0: no limit) raises :class:`~datalflash.errors.LoaderTimeoutError`."""
    first = next(iter(policies.values()))
    decoder = make_decoder(first.processes, first.threads, AHEAD + 1, context, timeout, where)
    pending: deque[tuple[Batch, dict[str, Wait | torch.Tensor]]] = deque()
    try:
        for batch in batches:
            pending.append((batch, _start(batch, policies, sizes, decoder, seed, epoch, where, pin_memory, device)))
            if len(pending) > AHEAD:
                yield _finish(*pending.popleft(), policies)
        while pending:
            yield _finish(*pending.popleft(), policies)
    finally:
        decoder.close()


def _start(
    batch: Batch,
    policies: Mapping[str, ImageDecode],
    sizes: Mapping[str, str],
    decoder: ThreadDecoder,
    seed: int,
    epoch: int,
    where: str,
    pin_memory: bool,
    device: torch.device | None,
) -> dict[str, Wait | torch.Tensor]:
    """Plan the crops of ``batch``'s images and start decoding them; what :func:`_finish` waits on."""
    indices = batch[SAMPLE_INDEX].numpy()
    names = [f"{where} sample {i}" for i in indices.tolist()]
    started: dict[str, Wait | torch.Tensor] = {}
    for field, decode in policies.items():
        rows = batch[field]
        size = decode.output_size
        if size is None:
            started[field] = decoder.start_full(rows, names)
            continue
        shape = batch[sizes[field]].numpy()
        uniforms = sample_uniforms(seed, epoch, indices, 2 * ATTEMPTS + 2) if decode.crop == "random" else None
        boxes = plan_crops(shape[:, 0], shape[:, 1], decode, uniforms)
        cuda = device is not None and device.type == "cuda" and decode.gpu is not False and _gpu_decoder() is not None
        if cuda and all(is_jpeg(row) for row in rows):
            started[field] = decode_on_gpu(rows, boxes, size, device)  # type: ignore[arg-type]  # (cuda: a device)
        else:
            started[field] = decoder.start(field, rows, boxes, size, names, pin_memory)
    return started


def _finish(batch: Batch, started: dict[str, Wait | torch.Tensor], policies: Mapping[str, ImageDecode]) -> Batch:
    """``batch`` with its images decoded (waiting for them), the sample indices dropped."""
    out = {key: value for key, value in batch.items() if key != SAMPLE_INDEX}
    for field, work in started.items():
        images = work if isinstance(work, torch.Tensor) else work()  # (a tensor: decoded on the GPU)
        out[field] = images if isinstance(images, list) else finish(images, policies[field])
    return out


def _gpu_decoder() -> Any:
    """torchvision's ``decode_jpeg``, or None where torchvision cannot be imported."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # (absent, or built for another torch)
        return None
    return decode_jpeg
