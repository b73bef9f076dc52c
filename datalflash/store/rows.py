"""Checks of the rows handed to a store or read into caller buffers: every field present, with
the rows, shape and storage dtype the manifest gives it; errors name chunk, split and field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from datalflash.format.manifest import FieldSpec


def checked_rows(
    fields: Mapping[str, FieldSpec], split: str, chunk: int, name: str, arrays: Mapping[str, np.ndarray], rows: int
) -> np.ndarray:
    """``arrays[name]`` as a C-contiguous array, or ValueError if it is not ``rows`` rows of the field."""
    spec = fields[name]
    if name not in arrays:
        raise ValueError(f"chunk {chunk} of split {split!r}: no rows for field {name!r}")
    data = np.ascontiguousarray(arrays[name])
    if data.shape != (rows, *spec.shape) or data.dtype != spec.storage_dtype:
        raise ValueError(
            f"chunk {chunk} of split {split!r} field {name!r}: got {data.shape} {data.dtype}, "
            f"expected ({rows}, *{spec.shape}) {spec.storage_dtype}"
        )
    return data


def checked_pieces(
    fields: Mapping[str, FieldSpec], split: str, chunk: int, chunk_rows: int, pieces: Iterable[Mapping[str, np.ndarray]]
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(first row within the chunk, {field: its rows})`` of each piece of a chunk of
    ``chunk_rows`` rows, checked; raises ValueError when the pieces hold more or fewer rows."""
    offset = 0
    first_field = next(iter(fields))
    for piece in pieces:
        rows = len(piece.get(first_field, ()))  # (a missing field is named by checked_rows)
        if offset + rows > chunk_rows:
            raise ValueError(f"chunk {chunk} of split {split!r}: pieces hold more than its {chunk_rows} rows")
        yield offset, {name: checked_rows(fields, split, chunk, name, piece, rows) for name in fields}
        offset += rows
    if offset != chunk_rows:
        raise ValueError(f"chunk {chunk} of split {split!r}: pieces hold {offset} rows, expected {chunk_rows}")


def checked_out(fields: Mapping[str, FieldSpec], out: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of each of the caller's buffers ``out``, or ValueError if one
    cannot receive them (too short, another shape or dtype, not C-contiguous)."""
    result = {}
    for name, spec in fields.items():
        buf = out[name]
        if (
            buf.shape[0] < rows
            or buf.shape[1:] != spec.shape
            or buf.dtype != spec.storage_dtype
            or not buf.flags.c_contiguous
        ):
            raise ValueError(
                f"out[{name!r}] is {buf.shape} {buf.dtype}, needs a C-contiguous "
                f"({rows}, *{spec.shape}) {spec.storage_dtype} array"
            )
        result[name] = buf[:rows]
    return result
