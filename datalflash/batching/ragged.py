"""Batches of variable-length fields, assembled without per-sample Python.

Rows of a ragged field (see :class:`~datalflash.format.ragged.RaggedArray`) arrive as
:class:`RaggedTensors` (numpy storage arrays, turned into tensors of the field's dtype on the way
out). The reading threads decode each window's values straight into one buffer (see
:class:`~datalflash.format.ragged.Placement`). A padded batch of one varying dimension then reads
every row as long as the padded width through a sliding view of that buffer (one gather of whole
rows) and overwrites the tails; any other batch copies long rows' slices into one array (one
``np.concatenate``, see :func:`copy_rows`) and gathers short ones the same way as padding,
dropping their tails (one compress), or by one ``np.take`` of an element index. ``str`` rows
are gathered with a NUL after each and split by one decode. Consecutive batches of one window
are assembled as a run (:func:`assemble_run`), so what
is computed per batch is little more than its gathers. Each batch is shaped as the field's
:class:`Collate` policy says:

* ``"pad"``: :class:`Padded` ``(data, lengths, mask)``, every varying dimension padded to the
  batch's largest (or ``pad_to``, or a multiple of ``pad_multiple``) with ``pad_value``;
* ``"packed"``: :class:`Packed` ``(values, cu_seqlens, max_seqlen)``, the samples concatenated
  along their first dimension, ``cu_seqlens`` int32 offsets (FlashAttention's varlen layout);
* ``"nested"``: a ``torch.nested`` tensor (jagged layout when only the first dimension varies);
* ``"list"``: a list of tensors, as ``default_collate`` would give if it could.

``str`` fields always come back as a list of ``str`` and ``bytes`` fields as a list of uint8
tensors unless a policy says otherwise (a list cannot be built without one Python object per
sample, which is all that happens per sample).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from datalflash.format.images import pil_image
from datalflash.format.manifest import FieldSpec
from datalflash.format.ragged import PlacedRows, RaggedArray, element_positions

MODES = ("pad", "packed", "nested", "list")
LONG_ROW_BYTES = 1024
"""Rows this long on average or longer (int32 token ids past ~256, encoded images, audio) are
copied slice by slice (:func:`copy_rows`): a slice costs ~0.4 us however long, where gathering
element by element costs ~1-2 ns an element and a sliding view reads the longest row's width
for every row. Measured for 64 rows of int32: 1-64 elements, ~36 us by the view against ~44
by slices; 1-256, about even; 16-1024, 56-64 by slices against 82-91."""


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
        return Collate("list" if spec.kind in ("str", "bytes", "image") else "pad")
    if isinstance(value, Collate):
        return value
    if isinstance(value, str):
        return Collate(value)
    if isinstance(value, Mapping):
        try:
            return Collate(**value)
        except TypeError as e:
            raise ValueError(f"collate for field {spec.name!r}: {e}") from None
    raise ValueError(f"collate for field {spec.name!r} is {value!r}: give a mode name, a dict or a Collate")


@dataclass(frozen=True)
class RaggedTensors:
    """Rows of a ragged field: ``shapes`` ``(n, ndim)`` and ``offsets`` ``(n + 1,)`` (int64,
    offsets into ``values``), ``values`` (numpy, the field's storage dtype), the field's torch
    ``dtype``, ``kind`` and per-sample ``shape`` (``None``: a dimension that varies).
    ``buffer`` starts where ``values`` does and may run on past its end (rows read ahead of a
    padded batch's longest row are then never out of bounds)."""

    shapes: np.ndarray
    offsets: np.ndarray
    values: np.ndarray
    dtype: torch.dtype
    kind: str = "ragged"
    shape: tuple[int | None, ...] = (None,)
    buffer: np.ndarray | None = None

    @classmethod
    def from_array(cls, array: RaggedArray, dtype: torch.dtype, spec: FieldSpec) -> RaggedTensors:
        """The rows of ``array`` (sharing memory), of torch dtype ``dtype``."""
        buffer = array.buffer if isinstance(array, PlacedRows) else None
        return cls(array.shapes, array.offsets, array.values, dtype, spec.kind, spec.shape, buffer)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, rows: slice) -> RaggedTensors:
        """Rows ``rows`` (a slice with step 1), sharing memory."""
        start, stop, _ = rows.indices(len(self))
        stop = max(start, stop)
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        buffer = None if self.buffer is None else self.buffer[a:]
        offsets = self.offsets[start : stop + 1] - a
        return RaggedTensors(
            self.shapes[start:stop], offsets, self.values[a:b], self.dtype, self.kind, self.shape, buffer
        )

    def tensor(self, values: np.ndarray) -> torch.Tensor:
        """Storage ``values`` as a tensor of the field's dtype (sharing memory)."""
        tensor = torch.from_numpy(values)
        return tensor if tensor.dtype == self.dtype else tensor.view(self.dtype)

    def items(self) -> list[Any]:
        """Every row as its sample (as :meth:`item` gives them), with a few calls for all rows:
        numeric rows are views of one tensor of the values (call on rows gathered for a batch,
        not on a window's buffer), ``str`` rows decoded together (see :func:`_split_text`)."""
        first = int(self.offsets[0]) if len(self) else 0
        values = self.values[first : int(self.offsets[-1])] if len(self) else self.values[:0]
        if self.kind == "str":
            texts = _split_text(np.insert(values, self.offsets[1:] - first, 0), len(self))
            return texts if texts is not None else [self.item(row) for row in range(len(self))]
        if self.kind in ("bytes", "image"):
            data = values.tobytes()
            bounds = (self.offsets - first).tolist()
            blobs = [data[a:b] for a, b in itertools.pairwise(bounds)]
            return [pil_image(blob) for blob in blobs] if self.kind == "image" else blobs
        return _row_tensors(self.tensor(values), self.shapes, np.diff(self.offsets))

    def item(self, row: int) -> Any:
        """Row ``row`` as its sample: a tensor of its shape, a ``str`` or ``bytes``."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        if self.kind == "str":
            return self.values[a:b].tobytes().decode("utf-8")
        if self.kind == "bytes":
            return self.values[a:b].tobytes()
        if self.kind == "image":
            return pil_image(self.values[a:b].tobytes())
        return self.tensor(self.values[a:b].copy()).reshape(self.shapes[row].tolist())


def _index(index: Any) -> np.ndarray:
    """A batch's row index as an int64 numpy array (a CPU tensor's own memory when it is one)."""
    if isinstance(index, torch.Tensor) and index.dtype == torch.int64:
        return index.numpy()
    return np.asarray(index, dtype=np.int64)


def take(segments: Sequence[tuple[RaggedTensors, torch.Tensor]]) -> tuple[RaggedTensors, np.ndarray]:
    """The rows ``source[index]`` of each ``(source, index)`` segment, in order, gathered into
    new values, and the rows' lengths (elements). Rows of :data:`LONG_ROW_BYTES` or more on
    average are copied slice by slice (:func:`copy_rows`); shorter ones through a sliding view
    of whole rows and one compress, or by one ``np.take`` of an element index."""
    parts, lengths, shapes = [], [], []
    for source, index in segments:
        index_np = _index(index)
        starts = source.offsets[index_np]
        parts.append((source.values, starts, source.offsets[index_np + 1] - starts))
        lengths.append(parts[-1][2])
        shapes.append(source.shapes[index_np])
    length = np.concatenate(lengths) if len(lengths) > 1 else lengths[0]
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    first = segments[0][0]
    shape = np.concatenate(shapes) if len(shapes) > 1 else shapes[0]
    long_rows = _long_rows(int(offsets[-1]), first.values.itemsize, len(length))
    if not long_rows and len(segments) == 1:
        width = int(length.max()) if len(length) else 0
        if _wide_readable(first, parts[0][1], width) and len(length) * width <= 2 * offsets[-1]:
            # whole rows through a sliding view, their tails dropped: one gather and one compress
            values = _rows_as_wide(first, parts[0][1], length, width)[_within(length, width)]
            return RaggedTensors(shape, offsets, values, first.dtype, first.kind, first.shape), length
    values = np.empty(int(offsets[-1]), dtype=parts[0][0].dtype)
    done = 0
    for source_values, starts, part_lengths in parts:
        total = int(part_lengths.sum())
        if long_rows:
            copy_rows(source_values, starts, part_lengths, values[done : done + total])
        elif total:
            positions = element_positions(starts, part_lengths, total)
            np.take(source_values, positions, out=values[done : done + total], mode="clip")
        done += total
    return RaggedTensors(shape, offsets, values, first.dtype, first.kind, first.shape), length


def _long_rows(elements: int, itemsize: int, rows: int) -> bool:
    """Whether ``rows`` rows of ``elements`` elements in all are :data:`LONG_ROW_BYTES` long on average."""
    return elements * itemsize >= LONG_ROW_BYTES * max(1, rows)


def copy_rows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> None:
    """Copy the rows ``values[start : start + length]`` one after another into ``out`` (exactly
    their total long): one ``np.concatenate`` of the rows' slices, made by ``map`` over built-ins
    (C calls, no Python code run per row). Measured faster than any element-index gather at every
    row length: for 64 rows, 27 us against 30-32 (1-16 elements), 37 against 82-91 (16-1024)."""
    if len(out):
        stops = (starts + lengths).tolist()
        np.concatenate(list(map(values.__getitem__, map(slice, starts.tolist(), stops))), out=out)


def assemble(segments: Sequence[tuple[RaggedTensors, torch.Tensor]], policy: Collate, pin_memory: bool = False) -> Any:
    """The batch of a ragged field's rows ``source[index]`` over ``segments``, as ``policy`` says."""
    total = sum(len(index) for _, index in segments)
    return assemble_run(segments, [total], policy, pin_memory)[0]


def assemble_run(
    segments: Sequence[tuple[RaggedTensors, torch.Tensor]], sizes: Sequence[int], policy: Collate, pin_memory: bool
) -> list[Any]:
    """Consecutive batches of ``sizes`` rows each, cut from the rows ``source[index]`` over
    ``segments``, as ``policy`` says: the rows of the whole run are gathered (or decoded) with
    one set of calls and each batch then takes its share, so the calls per batch are few."""
    first = segments[0][0]
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    cuts = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    if first.kind == "str":
        texts = _texts(segments)
        return [texts[a:b] for a, b in cuts]
    if policy.mode == "pad" and first.shapes.shape[1] == 1:  # whole rows straight from the source
        if len(cuts) > 1:
            source, index = segments[0]
            return [_pin(_padded_rows([(source, index[a:b])], policy), pin_memory) for a, b in cuts]
        return [_pin(_padded_rows(segments, policy), pin_memory)]
    if policy.mode == "packed" and len(segments) == 1 and first.shapes.shape[1] == 1:
        packed = _packed_run(first, _index(segments[0][1]), cuts, pin_memory)
        if packed is not None:
            return packed
    batches: list[Any] = []
    for a, b in cuts:  # (each batch's rows gathered on their own: a run's would not stay in cache)
        rows, lengths = take(segments if len(cuts) == 1 else [(segments[0][0], segments[0][1][a:b])])
        if policy.mode == "pad":
            batches.append(_pin(_padded(rows, lengths, policy), pin_memory))
            continue
        values = rows.tensor(rows.values)
        values = values.pin_memory() if pin_memory else values
        if policy.mode == "list":
            batches.append(_row_tensors(values, rows.shapes, lengths))
        elif policy.mode == "packed":
            batches.append(_packed(rows, values))
        else:
            batches.append(_nested(rows, values, lengths))
    return batches


def _texts(segments: Sequence[tuple[RaggedTensors, torch.Tensor]]) -> list[str]:
    """The rows of a ``str`` field as ``str``: each segment's rows gathered with a NUL after
    each row and decoded by one ``decode`` and one ``split`` (rows holding a NUL themselves, or
    bytes that do not decode, are decoded row by row, which names the bad one)."""
    texts: list[str] = []
    for source, index in segments:
        index_np = _index(index)
        starts = source.offsets[index_np]
        lengths = source.offsets[index_np + 1] - starts
        if not len(lengths):
            continue
        width = int(lengths.max()) + 1
        rows = _rows_as_wide(source, starts, lengths, width)
        rows[np.arange(len(rows)), lengths] = 0  # (each row's separator)
        decoded = _split_text(rows[_within(lengths + 1, width)], len(rows))
        if decoded is None:  # (row by row: the bad row raises)
            data = source.values.data  # (a memoryview of the bytes)
            decoded = [str(data[a:b], "utf-8") for a, b in zip(starts.tolist(), (starts + lengths).tolist())]
        texts += decoded
    return texts


def _split_text(joined: np.ndarray, rows: int) -> list[str] | None:
    """``rows`` strings from their UTF-8 bytes each followed by a NUL, by one ``decode`` and one
    ``split``; None where a row holds a NUL itself or the bytes do not decode (decode those rows
    one by one)."""
    if np.count_nonzero(joined == 0) != rows:
        return None
    try:
        return joined.tobytes().decode("utf-8").split("\x00")[:-1]
    except UnicodeDecodeError:
        return None


def _pin(batch: Padded, pin_memory: bool) -> Padded:
    if not pin_memory:
        return batch
    mask = None if batch.mask is None else batch.mask.pin_memory()
    return Padded(batch.data.pin_memory(), batch.lengths.pin_memory(), mask)


def _packed_run(
    source: RaggedTensors, index: np.ndarray, cuts: Sequence[tuple[int, int]], pin_memory: bool
) -> list[Packed] | None:
    """Packed batches of rows of one varying dimension, long on average (see
    :data:`LONG_ROW_BYTES`), for consecutive ``cuts`` of ``source[index]``: where the rows start
    and how long they are worked out for the whole run, then per batch one copy of its rows and
    a running sum for ``cu_seqlens``. None: rows too short for slice copies (see :func:`take`)."""
    starts = source.offsets[index]
    lengths = source.offsets[index + 1] - starts
    if not _long_rows(int(lengths.sum()), source.values.itemsize, len(index)):
        return None
    batches = []
    for a, b in cuts:
        part = lengths[a:b]
        cu_seqlens = np.zeros(b - a + 1, dtype=np.int32)
        np.cumsum(part, out=cu_seqlens[1:])
        values = np.empty(int(cu_seqlens[-1]), dtype=source.values.dtype)
        copy_rows(source.values, starts[a:b], part, values)
        tensor = source.tensor(values)
        tensor = tensor.pin_memory() if pin_memory else tensor
        batches.append(Packed(tensor, torch.from_numpy(cu_seqlens), int(part.max()) if b > a else 0))
    return batches


def _packed(rows: RaggedTensors, values: torch.Tensor) -> Packed:
    first = rows.shapes[:, 0]
    if rows.shapes.shape[1] == 1:  # (the element offsets are the sample offsets)
        return Packed(values, torch.from_numpy(rows.offsets.astype(np.int32)), int(first.max()) if len(first) else 0)
    cu_seqlens = np.zeros(len(first) + 1, dtype=np.int32)
    np.cumsum(first, out=cu_seqlens[1:])
    trailing = rows.shapes[0, 1:].tolist() if len(rows) else []
    return Packed(values.view(-1, *trailing), torch.from_numpy(cu_seqlens), int(first.max()) if len(first) else 0)


def _nested(rows: RaggedTensors, values: torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
    shapes = rows.shapes
    if len(rows) and bool((shapes[:, 1:] == shapes[0, 1:]).all()):
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        torch.cumsum(torch.from_numpy(shapes[:, 0]), 0, out=offsets[1:])
        return torch.nested.nested_tensor_from_jagged(values.view(-1, *shapes[0, 1:].tolist()), offsets)
    return torch.nested.as_nested_tensor(_row_tensors(values, shapes, lengths))


def _row_tensors(values: torch.Tensor, shapes: np.ndarray, lengths: np.ndarray) -> list[torch.Tensor]:
    """Each row's tensor, of its shape: views of ``values`` (the rows' elements, in order), cut
    by ``lengths`` (elements per row)."""
    parts = values.split(lengths.tolist())
    if shapes.shape[1] <= 1:
        return list(parts)
    return [part.view(shape) for part, shape in zip(parts, shapes.tolist())]


def _pad_size(shapes: np.ndarray, policy: Collate) -> list[int]:
    """The padded size of each dimension: the batch's largest, raised to ``pad_to`` and rounded
    up to a multiple of ``pad_multiple``."""
    size = shapes.max(0) if len(shapes) else np.zeros(shapes.shape[1], dtype=np.int64)
    if policy.pad_to is not None:
        size = np.maximum(size, policy.pad_to)
    if policy.pad_multiple is not None:
        size = -(-size // policy.pad_multiple) * policy.pad_multiple
    return [int(d) for d in size]


def _padded_rows(segments: Sequence[tuple[RaggedTensors, torch.Tensor]], policy: Collate) -> Padded:
    """Rows of one varying dimension, padded: each row read as long as the padded width straight
    from its source (one gather of whole rows through a sliding view where the source's buffer
    runs on far enough, else by an element index), then its tail set to the pad value."""
    first = segments[0][0]
    parts = []
    for source, index in segments:
        index_np = _index(index)
        parts.append((source, source.offsets[index_np], source.offsets[index_np + 1] - source.offsets[index_np]))
    lengths = np.concatenate([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
    width = int(lengths.max()) if len(lengths) else 0
    if policy.pad_to is not None or policy.pad_multiple is not None:
        width = _pad_size(lengths[:, None], policy)[0]
    pad = _storage_scalar(policy.pad_value, first.dtype, first.values.dtype)
    pieces = [_rows_as_wide(source, starts, part_lengths, width) for source, starts, part_lengths in parts]
    data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    tails = _tails(lengths, width)
    np.copyto(data, pad, where=tails)
    mask = torch.from_numpy(_within(lengths, width)) if policy.mask else None
    return Padded(first.tensor(data), torch.from_numpy(lengths), mask)


MASK_TABLE_WIDTH = 4096  # widths up to this use cached tables of row masks (16 MiB each at most)


class _RowMasks:
    """``(rows, width)`` booleans per row length: True past the length (``past_end``) or within
    it; rows of a cached triangular table (a gather of rows), for widths up to
    :data:`MASK_TABLE_WIDTH`."""

    def __init__(self, past_end: bool):
        self.past_end = past_end
        self.table = np.zeros((1, 0), dtype=bool)

    def __call__(self, lengths: np.ndarray, width: int) -> np.ndarray:
        if width > MASK_TABLE_WIDTH:
            positions = np.arange(width)
            return positions >= lengths[:, None] if self.past_end else positions < lengths[:, None]
        if self.table.shape[1] < width:
            size = min(max(width, 2 * self.table.shape[1]), MASK_TABLE_WIDTH)
            positions, ends = np.arange(size), np.arange(size + 1)[:, None]
            self.table = positions >= ends if self.past_end else positions < ends
        return self.table[np.minimum(lengths, width), :width]


_tails = _RowMasks(past_end=True)
_within = _RowMasks(past_end=False)


def _wide_readable(source: RaggedTensors, starts: np.ndarray, width: int) -> bool:
    """Whether rows starting at ``starts`` can each be read ``width`` long from the source's buffer."""
    buffer = source.buffer
    return buffer is not None and len(starts) > 0 and width > 0 and int(starts.max()) + width <= len(buffer)


def _rows_as_wide(source: RaggedTensors, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Rows starting at ``starts`` of a source, each read ``width`` elements long (what lies
    past a row's end is left for the caller to overwrite): one gather of whole rows through a
    sliding view of the source's buffer where it runs on far enough, else an element gather."""
    buffer = source.buffer
    if buffer is not None and _wide_readable(source, starts, width):
        step = buffer.strides[0]  # (fancy indexing of the view copies just the rows it picks)
        shape = (len(buffer) - width + 1, width)
        if buffer.flags.c_contiguous:  # (as_strided's own checks cost more than the gather of short rows)
            return np.ndarray(shape, buffer.dtype, buffer, 0, (step, step))[starts]
        return as_strided(buffer, shape, (step, step))[starts]
    rows = np.zeros((len(starts), width), dtype=source.values.dtype)
    if len(starts) and width:
        positions = element_positions(starts, lengths, int(lengths.sum()))
        rows[np.arange(width) < lengths[:, None]] = np.take(source.values, positions)
    return rows


def _padded(rows: RaggedTensors, lengths: np.ndarray, policy: Collate) -> Padded:
    """Pad samples varying in several dimensions to the batch's largest size in each: the
    values go to their padded positions by one flat index (:func:`_padded_index`)."""
    shapes, batch = rows.shapes, len(rows)
    dims = _pad_size(shapes, policy)
    pad = _storage_scalar(policy.pad_value, rows.dtype, rows.values.dtype)
    flat = np.full((batch, *dims), pad, dtype=rows.values.dtype)
    index = _padded_index(shapes, dims, lengths, len(rows.values))
    flat.reshape(-1)[index] = rows.values
    mask = None
    if policy.mask:
        filled = np.zeros((batch, *dims), dtype=bool)
        filled.reshape(-1)[index] = True
        mask = torch.from_numpy(filled)
    varying = [d for d, s in enumerate(rows.shape) if s is None]
    sizes = shapes[:, varying[0]] if len(varying) == 1 else shapes[:, varying]
    return Padded(rows.tensor(flat), torch.from_numpy(np.ascontiguousarray(sizes)), mask)


@functools.lru_cache(maxsize=64)
def _storage_scalar(value: float, dtype: torch.dtype, storage: np.dtype) -> Any:
    """The pad value as an element of the storage array (raw bits for bfloat16 and float8)."""
    return torch.tensor([value], dtype=dtype).view(torch.uint8).numpy().view(storage)[0]


def _padded_index(shapes: np.ndarray, dims: list[int], lengths: np.ndarray, total: int) -> np.ndarray:
    """Where each value of the rows goes in a ``(batch, *dims)`` padded array (flat positions):
    the innermost runs (each sample has ``prod(shape[:-1])`` of them, ``shape[-1]`` long) are
    placed by unravelling each run's number over the sample's outer dimensions."""
    batch, ndim = shapes.shape
    sample_size = int(np.prod(dims)) if dims else 1
    width = shapes[:, -1]
    runs = np.prod(shapes[:, :-1], axis=1)
    run_sample = np.repeat(np.arange(batch), runs)
    first_run = np.cumsum(runs) - runs
    local = np.arange(len(run_sample)) - first_run[run_sample]  # run number within its sample
    position = run_sample * sample_size
    stride = 1
    for d in range(ndim - 2, -1, -1):
        stride *= dims[d + 1]
        extent = shapes[run_sample, d]
        position += (local % np.maximum(extent, 1)) * stride
        local = local // np.maximum(extent, 1)
    if total == 0:
        return np.zeros(0, np.int64)
    return element_positions(position, width[run_sample], total)
