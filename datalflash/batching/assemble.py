"""Batch assembly: ``torch.index_select(..., out=)`` from resident buffers into a new batch.

Each batch gets fresh tensors (from torch's caching allocators, pinned when asked), so a batch a
training loop keeps is never overwritten; the large chunk buffers are the ones reused. Ragged
fields are assembled by :mod:`datalflash.batching.ragged`, as their :class:`Collate` policy says.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

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
    if len(parts) == 1:  # the common case: one call, straight into the batch
        source, index = parts[0]
        if not pin_memory:
            return torch.index_select(source, 0, index)
        out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        return torch.index_select(source, 0, index, out=out)
    sizes = [len(index) for _, index in parts]
    first = parts[0][0]
    out = torch.empty((sum(sizes), *first.shape[1:]), dtype=first.dtype, pin_memory=pin_memory)
    for (source, index), part in zip(parts, out.split(sizes)):
        torch.index_select(source, 0, index, out=part)
    return out
