"""Batch assembly: ``torch.index_select(..., out=)`` from resident buffers into a new batch.

Each batch gets fresh tensors (from torch's caching allocators, pinned when asked), so a batch a
training loop keeps is never overwritten; the large chunk buffers are the ones reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def gather(
    segments: Sequence[tuple[Mapping[str, torch.Tensor], torch.Tensor]],
    *,
    pin_memory: bool = False,
) -> dict[str, torch.Tensor]:
    """Concatenate ``source[field][index]`` over ``(source, index)`` segments, one new tensor
    per field; every source has the same fields, dtypes and per-sample shapes."""
    if not segments:
        raise ValueError("a batch needs at least one segment")
    if len(segments) == 1:  # the common case: one call per field, straight into the batch
        source, index = segments[0]
        if not pin_memory:
            return {name: torch.index_select(t, 0, index) for name, t in source.items()}
        return {
            name: torch.index_select(
                t, 0, index, out=torch.empty((len(index), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
            )
            for name, t in source.items()
        }
    sizes = [len(index) for _, index in segments]
    batch = {}
    for name, first in segments[0][0].items():
        out = torch.empty((sum(sizes), *first.shape[1:]), dtype=first.dtype, pin_memory=pin_memory)
        for (source, index), part in zip(segments, out.split(sizes)):
            torch.index_select(source[name], 0, index, out=part)
        batch[name] = out
    return batch
