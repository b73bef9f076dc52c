"""Variable-length fields in memory: samples as one flat values array plus a shape per sample.

A ragged field (token ids ``(L,)``, images ``(3, H, W)``, boxes ``(K, 4)``), a ``bytes`` field
and a ``str`` field (UTF-8) are all held the same way: :class:`RaggedArray` keeps the samples'
shapes as an ``(n, ndim)`` int64 table and their values, each sample C-contiguous, one after
the other in one flat array (``str`` and ``bytes``: uint8 with ``ndim == 1``). Sample ``i`` is
``values[offsets[i]:offsets[i + 1]].reshape(shapes[i])``.

:class:`RaggedBuffer` is the reusable form rows are read or gathered into: the shapes in place,
the values of each piece of rows kept as they come, or, given a :class:`Placement` (offsets
known before reading, from the split's shape table), read straight into one window buffer and
handed out as :class:`PlacedRows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datalflash.errors import StoreFormatError

MAX_CHUNK_VALUE_BYTES = 2**33  # values one chunk of a field may hold: more is a hostile store, not data


@dataclass(frozen=True)
class RaggedArray:
    """``n`` samples of one variable-shape field: ``shapes`` ``(n, ndim)`` int64 and ``values``,
    the samples' elements one after the other (``offsets``, ``n + 1`` of them, says where)."""

    shapes: np.ndarray
    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_shapes(cls, shapes: np.ndarray, values: np.ndarray) -> RaggedArray:
        """Samples of ``shapes`` whose elements are ``values``, which must hold exactly them."""
        offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
        np.cumsum(element_counts(shapes), out=offsets[1:])
        if offsets[-1] != len(values):
            raise ValueError(f"shapes need {offsets[-1]} values, got {len(values)}")
        return cls(np.asarray(shapes, dtype=np.int64), values, offsets)

    @classmethod
    def from_samples(cls, samples: Sequence[np.ndarray], ndim: int, dtype: np.dtype) -> RaggedArray:
        """The samples (arrays of ``ndim`` dimensions, storage ``dtype``) as one RaggedArray."""
        if not samples:
            return cls.from_shapes(np.zeros((0, ndim), np.int64), np.empty(0, dtype))
        if ndim == 1:  # (one concatenate of the samples as they are)
            shapes = np.fromiter(map(len, samples), dtype=np.int64, count=len(samples)).reshape(-1, 1)
            return cls.from_shapes(shapes, np.concatenate(samples).astype(dtype, copy=False))
        shapes = np.array([s.shape for s in samples], dtype=np.int64).reshape(len(samples), ndim)
        values = np.concatenate([np.ascontiguousarray(s, dtype=dtype).reshape(-1) for s in samples])
        return cls.from_shapes(shapes, values)

    @property
    def lengths(self) -> np.ndarray:
        """Elements of each sample."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, rows: slice) -> RaggedArray:
        """Rows ``rows`` (a slice with step 1), sharing memory."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("RaggedArray rows are sliced with step 1")
        stop = max(start, stop)
        a, b = self.offsets[start], self.offsets[stop]
        return RaggedArray(self.shapes[start:stop], self.values[a:b], self.offsets[start : stop + 1] - a)

    def sample(self, i: int) -> np.ndarray:
        """Sample ``i`` as an array of its shape."""
        return self.values[self.offsets[i] : self.offsets[i + 1]].reshape(self.shapes[i])


@dataclass(frozen=True)
class PlacedRows(RaggedArray):
    """Rows whose values were read straight into one window buffer (see :class:`Placement`);
    ``buffer`` holds ``values`` followed by a row's worth of slack, so any row can be read as
    long as the longest one without running past it."""

    buffer: np.ndarray


def element_positions(starts: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """The positions of the elements of runs starting at ``starts`` of ``lengths`` (``total``
    of them), in order: a running sum of steps of 1, jumping to each run's start where it begins."""
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if total == 0:
        return np.zeros(0, np.int64)
    steps = np.ones(total, dtype=np.int64)
    first = np.cumsum(lengths) - lengths  # each run's first position in the output
    steps[first[1:]] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
    steps[0] = starts[0]
    return np.cumsum(steps, out=steps)


@dataclass(frozen=True)
class Placement:
    """Where a window's rows go before they are read: ``offsets`` into one ``buffer`` (with a
    row's worth of slack after the last), from the rows' sizes known up front (the split's
    shape table), so each chunk's values are decoded straight to their place."""

    offsets: np.ndarray
    buffer: np.ndarray

    @classmethod
    def plan(cls, lengths: np.ndarray, dtype: np.dtype, reuse: np.ndarray | None = None) -> Placement:
        """The placement of window rows of ``lengths`` elements each, in ``reuse`` (an earlier
        placement's buffer, no longer read) when it is large enough: a window buffer is then
        allocated and page-faulted once, not every window."""
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        size = int(offsets[-1]) + (int(lengths.max()) if len(lengths) else 0)  # (a row's worth of slack)
        if reuse is not None and reuse.dtype == np.dtype(dtype) and len(reuse) >= size:
            return cls(offsets, reuse[:size])
        return cls(offsets, np.empty(size, dtype))

    def target(self, start: int, shapes: np.ndarray) -> np.ndarray:
        """Where the values of window rows ``start:start+len(shapes)`` go (StoreFormatError if
        their shapes give other sizes than the shape table read up front)."""
        stop = start + len(shapes)
        if not np.array_equal(element_counts(shapes), np.diff(self.offsets[start : stop + 1])):
            raise StoreFormatError(
                f"rows {start}..{stop - 1} of the window hold other sizes than the split's shape table "
                "said when it was read (the store changed while it was read)"
            )
        return self.buffer[self.offsets[start] : self.offsets[stop]]


def element_counts(shapes: np.ndarray) -> np.ndarray:
    """Elements of each sample of an ``(n, ndim)`` shape table (int64)."""
    shapes = np.asarray(shapes, dtype=np.int64)
    return np.prod(shapes, axis=1, dtype=np.int64) if shapes.shape[1] else np.ones(len(shapes), np.int64)


def checked_counts(shapes: np.ndarray, fixed: Sequence[int | None], itemsize: int, where: str) -> np.ndarray:
    """Elements of each sample of a shape table read from a store; StoreFormatError (naming
    ``where``) when a shape is negative, disagrees with the field's fixed dimensions, or the
    samples together hold more than a chunk may (:data:`MAX_CHUNK_VALUE_BYTES`)."""
    if shapes.ndim != 2 or shapes.shape[1] != len(fixed):
        raise StoreFormatError(f"{where}: the shape table is {shapes.shape}, needs (rows, {len(fixed)})")
    if len(shapes) == 0:
        return np.zeros(0, np.int64)
    if shapes.min() < 0:
        row = int(np.argwhere(shapes < 0)[0][0])
        raise StoreFormatError(f"{where}: row {row} has a negative shape {shapes[row].tolist()}")
    for dim, size in enumerate(fixed):
        if size is not None and np.any(shapes[:, dim] != size):
            row = int(np.argwhere(shapes[:, dim] != size)[0][0])
            raise StoreFormatError(
                f"{where}: row {row} has shape {shapes[row].tolist()}, the field's dimension {dim} is {size}"
            )
    # (checked in floating point first: the product of absurd dimensions overflows int64)
    if np.log2(np.maximum(shapes, 1)).sum(axis=1).max() + np.log2(itemsize) > 60:
        raise StoreFormatError(f"{where}: a sample's shape is absurdly large")
    counts = element_counts(shapes)
    if counts.sum() * itemsize > MAX_CHUNK_VALUE_BYTES:
        raise StoreFormatError(
            f"{where}: the shapes need {counts.sum() * itemsize} bytes of values, more than a chunk may hold"
        )
    return counts


def as_ragged(data: Any) -> RaggedArray:
    """Rows of a ragged field as a RaggedArray (a RaggedArray, a RaggedBuffer or a slot of one)."""
    if isinstance(data, RaggedArray):
        return data
    if isinstance(data, RaggedSlot):
        return data.array()
    if isinstance(data, RaggedBuffer):
        return data.rows(len(data))
    raise TypeError(f"a ragged field's rows are a RaggedArray, not {type(data).__name__}")


class RaggedBuffer:
    """Rows of a ragged field filled piece by piece: shapes in place (``shapes[start:stop]``),
    the values of each piece kept as given (:meth:`put`). :meth:`rows` returns a
    :class:`RaggedArray` of the rows put; slicing (``buffer[a:b]``) gives a :class:`RaggedSlot`
    that fills rows ``a:b``. Rows never put count as empty samples."""

    def __init__(self, capacity: int, ndim: int, dtype: np.dtype, shapes: np.ndarray | None = None):
        self.shapes = np.zeros((capacity, ndim), dtype=np.int64) if shapes is None else shapes
        self.dtype = np.dtype(dtype)
        self._pieces: dict[int, tuple[int, np.ndarray]] = {}  # first row -> (rows, values)
        self.placement: Placement | None = None
        self._kept: np.ndarray | None = None  # the last placement's buffer, reused by the next

    def clear(self) -> None:
        """Forget every piece's values (rows then count as empty until put again) and any
        placement (whose buffer is kept for the next one)."""
        self._pieces.clear()
        if self.placement is not None:
            self._kept = self.placement.buffer
        self.placement = None

    def place(self, lengths: np.ndarray) -> None:
        """From now on (until :meth:`clear`), the values of rows of ``lengths`` elements are read
        straight into one buffer (the last placement's, when it is large enough)."""
        self.clear()
        kept = self._kept
        base = kept.base if kept is not None and isinstance(kept.base, np.ndarray) else kept
        self.placement = Placement.plan(lengths, self.dtype, base)

    def target(self, start: int, rows: int, total: int) -> np.ndarray:
        """Where to read the ``total`` values of rows ``start:start+rows`` (whose shapes are in
        place): their place in the window buffer, or a new array."""
        if self.placement is not None:
            return self.placement.target(start, self.shapes[start : start + rows])
        return np.empty(total, self.dtype)

    def placed(self, rows: int) -> PlacedRows:
        """The first ``rows`` rows as read into the placement's buffer (needs a placement)."""
        placement = self.placement
        if placement is None:
            raise RuntimeError("placed() needs a placement")
        total = int(placement.offsets[rows])
        return PlacedRows(self.shapes[:rows], placement.buffer[:total], placement.offsets[: rows + 1], placement.buffer)

    def values_of(self, start: int) -> np.ndarray:
        """The values put for the piece starting at row ``start``."""
        return self._pieces[start][1]

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, rows: slice) -> RaggedSlot:
        start, stop, _ = rows.indices(len(self))
        return RaggedSlot(self, start, max(start, stop))

    def __setitem__(self, rows: slice, data: RaggedArray) -> None:
        self[rows].set(data)

    def put(self, start: int, rows: int, values: np.ndarray) -> None:
        """The values of rows ``start:start+rows`` (whose shapes are in place), replacing any
        piece they overlap; with a placement, copied to their place unless they were read there."""
        if self.placement is not None:
            target = self.placement.target(start, self.shapes[start : start + rows])
            if not np.shares_memory(target, values):
                target[...] = values
            return
        for first in [f for f, (n, _) in self._pieces.items() if f < start + rows and start < f + n]:
            del self._pieces[first]
        self._pieces[start] = (rows, values)

    def rows(self, stop: int, start: int = 0) -> RaggedArray:
        """Rows ``start:stop`` as one RaggedArray (values copied together unless one piece
        holds them all)."""
        pieces = sorted((f, n, v) for f, (n, v) in self._pieces.items() if start <= f and f + n <= stop)
        lengths = np.zeros(stop - start, np.int64)
        for first, n, _ in pieces:
            lengths[first - start : first - start + n] = element_counts(self.shapes[first : first + n])
        offsets = np.zeros(stop - start + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(pieces) == 1:  # (rows not put are empty: their offsets are 0, before the piece's)
            values = pieces[0][2]
        else:
            values = np.concatenate([v for *_, v in pieces]) if pieces else np.empty(0, self.dtype)
        return RaggedArray(self.shapes[start:stop], values, offsets)


class RaggedSlot:
    """Rows ``start:stop`` of a :class:`RaggedBuffer`, to be filled: their ``shapes`` (a view)
    and :meth:`put` for their values."""

    def __init__(self, buffer: RaggedBuffer, start: int, stop: int):
        self.buffer, self.start, self.stop = buffer, start, stop

    @property
    def shapes(self) -> np.ndarray:
        """The rows' shapes, a view into the buffer."""
        return self.buffer.shapes[self.start : self.stop]

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the values."""
        return self.buffer.dtype

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, rows: slice) -> RaggedSlot:
        start, stop, _ = rows.indices(len(self))
        return RaggedSlot(self.buffer, self.start + start, self.start + max(start, stop))

    def target(self, offset: int, rows: int, total: int) -> np.ndarray:
        """Where to read the ``total`` values of the slot's rows ``offset:offset+rows``."""
        return self.buffer.target(self.start + offset, rows, total)

    def put(self, values: np.ndarray, offset: int = 0, rows: int | None = None) -> None:
        """The values of rows ``offset:offset+rows`` of the slot (default: all of them)."""
        rows = len(self) - offset if rows is None else rows
        self.buffer.put(self.start + offset, rows, values)

    def set(self, data: RaggedArray) -> None:
        """Fill the slot with ``data`` (as many rows as the slot)."""
        if len(data) != len(self):
            raise ValueError(f"{len(data)} rows given for a slot of {len(self)}")
        self.shapes[...] = data.shapes
        self.put(data.values)

    def array(self) -> RaggedArray:
        """The slot's rows, as put, as one RaggedArray."""
        return self.buffer.rows(self.stop, self.start)
