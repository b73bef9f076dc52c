"""Batches of variable-length fields, assembled without per-sample Python.

Rows of a ragged field (see :class:`~datalflash.format.ragged.RaggedArray`) arrive as
:class:`RaggedTensors`. A batch's rows are taken with one element index built by a few vectorized
torch calls (``repeat_interleave`` of the rows' starts and lengths) and one ``index_select``,
then shaped as the field's :class:`Collate` policy says:

* ``"pad"``: :class:`Padded` ``(data, lengths, mask)``, every varying dimension padded to the
  batch's largest (or ``pad_to``, or a multiple of ``pad_multiple``) with ``pad_value``;
* ``"packed"``: :class:`Packed` ``(values, cu_seqlens, max_seqlen)``, the samples concatenated
  along their first dimension, ``cu_seqlens`` int32 offsets (FlashAttention's varlen layout);
* ``"nested"``: a ``torch.nested`` tensor (jagged layout when only the first dimension varies);
* ``"list"``: a list of tensors, as ``default_collate`` would give if it could.

``str`` fields always come back as a list of ``str`` and ``bytes`` fields as a list of uint8
tensors unless a policy says otherwise (a list of ``str`` cannot be built without one Python
object per sample, which is all that happens per sample).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from datalflash.format.manifest import FieldSpec
from datalflash.format.ragged import RaggedArray

MODES = ("pad", "packed", "nested", "list")


class Padded(NamedTuple):
    """A padded batch of a ragged field: ``data`` ``(batch, *padded shape)``, ``lengths`` (each
    sample's size along the varying dimension: ``(batch,)``; ``(batch, varying dims)`` when
    several vary) and ``mask`` (True where ``data`` holds a sample's values; None unless asked)."""

    data: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor | None = None


class Packed(NamedTuple):
    """A packed batch of a ragged field: ``values`` (the samples concatenated along their first
    dimension), ``cu_seqlens`` (int32, ``batch + 1`` offsets of the samples in ``values``) and
    ``max_seqlen`` (the longest sample), as FlashAttention's varlen kernels take them."""

    values: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


@dataclass(frozen=True)
class Collate:
    """How a ragged (or ``bytes``) field is batched: ``mode`` one of ``"pad"`` (default),
    ``"packed"``, ``"nested"``, ``"list"``; for ``"pad"``, the ``pad_value``, a minimum size
    ``pad_to`` of the varying dimensions, a ``pad_multiple`` they are rounded up to, and whether
    to add a ``mask``."""

    mode: str = "pad"
    pad_value: float = 0
    pad_to: int | None = None
    pad_multiple: int | None = None
    mask: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"collate mode {self.mode!r} is not one of {list(MODES)}")
        for name in ("pad_to", "pad_multiple"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"collate {name}={value!r} is not a positive integer")


def collate_policies(collate: Any, fields: Mapping[str, FieldSpec]) -> dict[str, Collate]:
    """``{ragged field: Collate}`` from a loader's ``collate=`` argument: None (defaults), one
    policy for every ragged numeric field (a mode name, a dict of Collate's arguments or a
    Collate), or a dict per field name of those (``bytes`` fields too). Raises ValueError naming
    what does not fit."""
    ragged = {name: spec for name, spec in fields.items() if spec.ragged}
    per_field: Mapping[str, Any]
    if isinstance(collate, Mapping) and set(collate) <= set(fields) and collate and not _is_options(collate):
        per_field = collate
    else:  # one policy for the ragged numeric fields (str and bytes keep their lists)
        per_field = {name: collate for name, spec in ragged.items() if spec.kind == "ragged"}
    unknown = sorted(set(per_field) - set(ragged))
    if unknown:
        raise ValueError(f"collate= names {unknown}, which are not ragged fields (ragged: {sorted(ragged)})")
    policies = {}
    for name, spec in ragged.items():
        policy = _policy(per_field.get(name), spec)
        if policy.mode == "packed" and None in spec.shape[1:]:
            raise ValueError(
                f"field {name!r} (shape {list(spec.shape)}) varies beyond its first dimension: 'packed' "
                "concatenates samples along the first one; use 'pad', 'nested' or 'list'"
            )
        if spec.kind == "str" and policy.mode != "list":
            raise ValueError(f"field {name!r} holds str: it is batched as a list of str (collate 'list')")
        policies[name] = policy
    return policies


def _is_options(value: Mapping) -> bool:
    return bool(set(value) & {"mode", "pad_value", "pad_to", "pad_multiple", "mask"})


def _policy(value: Any, spec: FieldSpec) -> Collate:
    if value is None:
        return Collate("list" if spec.kind in ("str", "bytes") else "pad")
    if isinstance(value, Collate):
        return value
    if isinstance(value, str):
        return Collate(value)
    if isinstance(value, Mapping):
        return Collate(**value)
    raise ValueError(f"collate for field {spec.name!r} is {value!r}: give a mode name, a dict or a Collate")


@dataclass(frozen=True)
class RaggedTensors:
    """Rows of a ragged field as tensors: ``shapes`` ``(n, ndim)`` int64, ``offsets``
    ``(n + 1,)`` int64 and the flat ``values`` in the field's dtype; ``kind`` is the field's."""

    shapes: torch.Tensor
    offsets: torch.Tensor
    values: torch.Tensor
    kind: str = "ragged"
    shape: tuple[int | None, ...] = (None,)
    """The field's per-sample shape (``None``: a dimension that varies)."""

    @classmethod
    def from_array(cls, array: RaggedArray, values: torch.Tensor, spec: FieldSpec) -> RaggedTensors:
        """Tensors sharing memory with ``array`` (``values``: its values as a tensor)."""
        return cls(torch.from_numpy(array.shapes), torch.from_numpy(array.offsets), values, spec.kind, spec.shape)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, rows: slice) -> RaggedTensors:
        """Rows ``rows`` (a slice with step 1), sharing memory."""
        start, stop, _ = rows.indices(len(self))
        stop = max(start, stop)
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return RaggedTensors(
            self.shapes[start:stop], self.offsets[start : stop + 1] - a, self.values[a:b], self.kind, self.shape
        )

    def item(self, row: int) -> Any:
        """Row ``row`` as its sample: a tensor of its shape, a ``str`` or ``bytes``."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        if self.kind == "str":
            return self.values[a:b].numpy().tobytes().decode("utf-8")
        if self.kind == "bytes":
            return self.values[a:b].numpy().tobytes()
        return self.values[a:b].clone().reshape(self.shapes[row].tolist())


def take(
    segments: Sequence[tuple[RaggedTensors, torch.Tensor]], pin_memory: bool = False
) -> tuple[RaggedTensors, torch.Tensor]:
    """The rows ``source[index]`` of each ``(source, index)`` segment, in order, as new
    RaggedTensors, and the rows' lengths (elements)."""
    parts, lengths, shapes = [], [], []
    for source, index in segments:
        starts = source.offsets.index_select(0, index)
        length = source.offsets.index_select(0, index + 1) - starts
        parts.append((source.values, starts, length))
        lengths.append(length)
        shapes.append(source.shapes.index_select(0, index))
    length = lengths[0] if len(lengths) == 1 else torch.cat(lengths)
    offsets = torch.zeros(len(length) + 1, dtype=torch.int64)
    torch.cumsum(length, 0, out=offsets[1:])
    values = torch.empty(int(offsets[-1]), dtype=parts[0][0].dtype, pin_memory=pin_memory)
    done = 0
    for source_values, starts, length_part in parts:
        total = int(length_part.sum())
        if total:
            index = _element_index(starts, length_part, total)
            torch.index_select(source_values, 0, index, out=values[done : done + total])
        done += total
    shape = shapes[0] if len(shapes) == 1 else torch.cat(shapes)
    first = segments[0][0]
    return RaggedTensors(shape, offsets, values, first.kind, first.shape), length


def _element_index(starts: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
    """The flat positions of the elements of rows starting at ``starts`` of ``lengths``."""
    before = torch.cumsum(lengths, 0) - lengths  # each row's first position in the output
    return torch.repeat_interleave(starts - before, lengths, output_size=total) + torch.arange(total)


def assemble(segments: Sequence[tuple[RaggedTensors, torch.Tensor]], policy: Collate, pin_memory: bool = False) -> Any:
    """The batch of a ragged field's rows ``source[index]`` over ``segments``, as ``policy`` says."""
    rows, lengths = take(segments, pin_memory)
    if rows.kind == "str":
        data = rows.values.numpy().tobytes()
        bounds = rows.offsets.tolist()
        return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
    if policy.mode == "list":
        parts = rows.values.split(lengths.tolist())
        if rows.shapes.shape[1] <= 1:
            return list(parts)
        return [part.view(shape) for part, shape in zip(parts, rows.shapes.tolist())]
    if policy.mode == "packed":
        return _packed(rows, lengths)
    if policy.mode == "nested":
        return _nested(rows, lengths)
    return _padded(rows, lengths, policy, pin_memory)


def _packed(rows: RaggedTensors, lengths: torch.Tensor) -> Packed:
    first = rows.shapes[:, 0] if rows.shapes.shape[1] else lengths
    cu_seqlens = torch.zeros(len(first) + 1, dtype=torch.int32)
    torch.cumsum(first, 0, out=cu_seqlens[1:])
    trailing = rows.shapes[0, 1:].tolist() if len(rows) else []
    values = rows.values.view(-1, *trailing) if rows.shapes.shape[1] else rows.values
    return Packed(values, cu_seqlens, int(first.max()) if len(first) else 0)


def _nested(rows: RaggedTensors, lengths: torch.Tensor) -> torch.Tensor:
    shapes = rows.shapes
    if shapes.shape[1] >= 1 and len(rows) and bool((shapes[:, 1:] == shapes[0, 1:]).all()):
        trailing = shapes[0, 1:].tolist()
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        torch.cumsum(shapes[:, 0], 0, out=offsets[1:])
        return torch.nested.nested_tensor_from_jagged(rows.values.view(-1, *trailing), offsets)
    parts = rows.values.split(lengths.tolist())
    return torch.nested.as_nested_tensor([p.view(s) for p, s in zip(parts, shapes.tolist())])


def _padded(rows: RaggedTensors, lengths: torch.Tensor, policy: Collate, pin_memory: bool) -> Padded:
    """Pad every sample to the batch's largest size in each dimension (vectorized: each sample's
    innermost runs of values are copied to their padded positions by one ``index_put``)."""
    shapes, batch = rows.shapes, len(rows)
    ndim = shapes.shape[1]
    size = shapes.amax(0) if batch else torch.zeros(ndim, dtype=torch.int64)
    if policy.pad_to is not None:
        size = torch.clamp(size, min=policy.pad_to)
    if policy.pad_multiple is not None:
        size = (size + policy.pad_multiple - 1) // policy.pad_multiple * policy.pad_multiple
    dims = size.tolist()
    data = torch.full((batch, *dims), policy.pad_value, dtype=rows.values.dtype, pin_memory=pin_memory)
    total = len(rows.values)
    if total:
        data.view(-1)[_padded_index(shapes, dims, lengths, total)] = rows.values
    mask = None
    if policy.mask:
        mask = torch.zeros((batch, *dims), dtype=torch.bool, pin_memory=pin_memory)
        if total:
            mask.view(-1)[_padded_index(shapes, dims, lengths, total)] = True
    varying = [d for d, size in enumerate(rows.shape) if size is None] or [0]
    lengths_out = shapes[:, varying[0]] if len(varying) == 1 else shapes[:, varying]
    return Padded(data, lengths_out.contiguous(), mask)


def _padded_index(shapes: torch.Tensor, dims: list[int], lengths: torch.Tensor, total: int) -> torch.Tensor:
    """Where each value of the rows goes in a ``(batch, *dims)`` padded tensor (flat positions)."""
    batch, ndim = shapes.shape
    sample_size = int(np.prod(dims)) if dims else 1
    if ndim <= 1:  # one run per sample: its start is b * padded length
        starts = torch.arange(batch, dtype=torch.int64) * sample_size
        return _element_index(starts, lengths, total)
    # Runs of the innermost dimension: each sample has prod(shape[:-1]) of them, each shape[-1] long.
    width = shapes[:, -1]
    runs = torch.prod(shapes[:, :-1], 1)
    run_sample = torch.repeat_interleave(torch.arange(batch), runs)
    first_run = torch.cumsum(runs, 0) - runs
    local = torch.arange(len(run_sample)) - first_run[run_sample]  # run number within its sample
    position = run_sample * sample_size
    stride = 1
    for d in range(ndim - 2, -1, -1):  # unravel the run number over the sample's outer dimensions
        stride *= dims[d + 1]
        extent = shapes[run_sample, d]
        position += (local % extent) * stride
        local = local // extent
    return _element_index(position, width[run_sample], total)
