"""Batch assembly: ``torch.index_select(..., out=)`` from resident buffers into a new batch.

Each batch gets fresh tensors (from torch's caching allocators, pinned when asked), so a batch a
training loop keeps is never overwritten; the large chunk buffers are the ones reused. Ragged
fields are assembled by :mod:`datalflash.batching.ragged`, as their :class:`Collate` policy says.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from datalflash.batching import ragged
from datalflash.batching.ragged import Collate, RaggedTensors

Source = Mapping[str, Any]
"""``{field: tensor}`` of rows (a :class:`RaggedTensors` for a ragged field)."""


def gather(
    segments: Sequence[tuple[Source, torch.Tensor]],
    *,
    pin_memory: bool = False,
    collate: Mapping[str, Collate] | None = None,
) -> dict[str, Any]:
    """Concatenate ``source[field][index]`` over ``(source, index)`` segments, one new tensor
    per field; every source has the same fields, dtypes and per-sample shapes. A ragged field
    is batched as ``collate[field]`` says (default :class:`Collate`), or, when ``collate`` is
    None, kept as :class:`RaggedTensors` rows (to gather again)."""
    if not segments:
        raise ValueError("a batch needs at least one segment")
    batch: dict[str, Any] = {}
    for name, first in segments[0][0].items():
        parts = [(source[name], index) for source, index in segments]
        if isinstance(first, RaggedTensors):
            if collate is None:
                batch[name] = ragged.take(parts)[0]
            else:
                batch[name] = ragged.assemble(parts, collate.get(name, Collate()), pin_memory)
        else:
            batch[name] = _gather_tensor(parts, pin_memory)
    return batch


def gather_run(
    source: Source,
    index: torch.Tensor,
    sizes: Sequence[int],
    *,
    pin_memory: bool = False,
    collate: Mapping[str, Collate] | None = None,
) -> list[dict[str, Any]]:
    """Consecutive batches of ``sizes`` rows each, cut from ``source[field][index]``: as
    :func:`gather` gives them one by one, but a ragged field's rows are gathered for the whole
    run at once (per-batch calls are what costs most for small samples)."""
    collate = collate or {}
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    batches: list[dict[str, Any]] = [{} for _ in sizes]
    for name, tensor in source.items():
        if isinstance(tensor, RaggedTensors):
            parts = ragged.assemble_run([(tensor, index)], sizes, collate.get(name, Collate()), pin_memory)
        else:
            parts = [_gather_tensor([(tensor, index[a:b])], pin_memory) for a, b in itertools.pairwise(bounds)]
        for batch, part in zip(batches, parts):
            batch[name] = part
    return batches


def _gather_tensor(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], pin_memory: bool) -> torch.Tensor:
    first = parts[0][0]
    if len(parts) == 1:  # (most batches: no split, which costs a third of a small batch's gather)
        out = torch.empty((len(parts[0][1]), *first.shape[1:]), dtype=first.dtype, pin_memory=pin_memory)
        _select_rows(first, parts[0][1], out)
        return out
    sizes = [len(index) for _, index in parts]
    out = torch.empty((sum(sizes), *first.shape[1:]), dtype=first.dtype, pin_memory=pin_memory)
    for (source, index), part in zip(parts, out.split(sizes)):
        _select_rows(source, index, part)
    return out


_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


PARALLEL_ELEMENTS = 32768
"""torch's grain size: ``index_select`` of fewer elements runs in the calling thread."""


def _select_rows(source: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """``out[:] = source[index]``. Batches of more than :data:`PARALLEL_ELEMENTS` elements are
    gathered on the CPU with numpy's ``take``, in this thread: torch's ``index_select`` hands them
    to its intra-op (OpenMP) threads, which, spinning against a model's own threads for the
    cores, made a gather up to 30x slower under load (2 cores, one busy process per core, batches
    of 64 CIFAR-shaped samples: 33k against 1.1M samples/s; idle 3.0M against 1.7M). Smaller
    ones stay with torch, which copies them in this thread anyway, with less overhead. Indices
    are in range (the plan's, or checked), so numpy need not check them again."""
    if source.device.type != "cpu" or not source.is_contiguous() or out.numel() < PARALLEL_ELEMENTS:
        torch.index_select(source, 0, index, out=out)
        return
    _as_numpy(source).take(index.numpy(), axis=0, out=_as_numpy(out), mode="clip")


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a numpy array (dtypes numpy lacks viewed as same-size integers)."""
    try:
        return tensor.numpy()
    except TypeError:
        return tensor.view(_SAME_SIZE_INTEGER[tensor.element_size()]).numpy()
