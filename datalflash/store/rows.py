"""Checks of the rows handed to a store or read into caller buffers: every field present, with
the rows, shape and storage dtype the manifest gives it; errors name chunk, split and field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from datalflash.format.manifest import FieldSpec
from datalflash.format.ragged import RaggedArray, RaggedBuffer, RaggedSlot, as_ragged

__all__ = ["as_ragged", "checked_out", "checked_pieces", "checked_rows"]


def _check_ragged(spec: FieldSpec, data: Any, rows: int, where: str) -> RaggedArray:
    try:
        ragged = as_ragged(data)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    fixed = [(d, s) for d, s in enumerate(spec.shape) if s is not None]
    if (
        len(ragged) != rows
        or ragged.shapes.shape[1:] != (len(spec.shape),)
        or ragged.values.dtype != spec.storage_dtype
        or any(np.any(ragged.shapes[:, d] != s) for d, s in fixed)
    ):
        raise ValueError(
            f"{where}: got {len(ragged)} rows of {ragged.values.dtype} (shapes {ragged.shapes.shape[1:]}), "
            f"expected {rows} rows of shape {list(spec.shape)} {spec.storage_dtype}"
        )
    return ragged


def checked_rows(
    fields: Mapping[str, FieldSpec], split: str, chunk: int, name: str, arrays: Mapping[str, Any], rows: int
) -> Any:
    """``arrays[name]`` as a C-contiguous array (a RaggedArray for a ragged field), or
    ValueError if it is not ``rows`` rows of the field."""
    spec = fields[name]
    if name not in arrays:
        raise ValueError(f"chunk {chunk} of split {split!r}: no rows for field {name!r}")
    if spec.ragged:
        return _check_ragged(spec, arrays[name], rows, f"chunk {chunk} of split {split!r} field {name!r}")
    data = np.ascontiguousarray(arrays[name])
    if data.shape != (rows, *spec.fixed_shape) or data.dtype != spec.storage_dtype:
        raise ValueError(
            f"chunk {chunk} of split {split!r} field {name!r}: got {data.shape} {data.dtype}, "
            f"expected ({rows}, *{spec.fixed_shape}) {spec.storage_dtype}"
        )
    return data


def checked_pieces(
    fields: Mapping[str, FieldSpec], split: str, chunk: int, chunk_rows: int, pieces: Iterable[Mapping[str, Any]]
) -> Iterator[tuple[int, dict[str, Any]]]:
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


def checked_out(fields: Mapping[str, FieldSpec], out: Mapping[str, Any], rows: int) -> dict[str, Any]:
    """The first ``rows`` rows of each of the caller's buffers ``out``, or ValueError if one
    cannot receive them (too short, another shape or dtype, not C-contiguous; a ragged field
    needs a RaggedBuffer or a slot of one)."""
    result = {}
    for name, spec in fields.items():
        buf = out[name]
        if spec.ragged:
            if (
                not isinstance(buf, (RaggedBuffer, RaggedSlot))
                or len(buf) < rows
                or buf.shapes.shape[1] != len(spec.shape)
                or buf.dtype != spec.storage_dtype
            ):
                raise ValueError(
                    f"out[{name!r}] is a {type(buf).__name__}, needs a RaggedBuffer of {rows} rows "
                    f"of {len(spec.shape)}-d {spec.storage_dtype} samples"
                )
        elif (
            not isinstance(buf, np.ndarray)
            or buf.shape[0] < rows
            or buf.shape[1:] != spec.fixed_shape
            or buf.dtype != spec.storage_dtype
            or not buf.flags.c_contiguous
        ):
            raise ValueError(
                f"out[{name!r}] is {getattr(buf, 'shape', type(buf).__name__)} {getattr(buf, 'dtype', '')}, "
                f"needs a C-contiguous ({rows}, *{spec.fixed_shape}) {spec.storage_dtype} array"
            )
        result[name] = buf[:rows]
    return result
