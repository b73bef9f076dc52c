"""A batch's samples, one by one: what a user's ``collate_fn`` receives, as torch's DataLoader
would hand them over (a list of samples shaped as the dataset gives them), sliced from the
batch's gathered fields rather than read one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datalflash.batching.ragged import RaggedTensors
from datalflash.format.structure import python_scalar_fields, rebuild, sample_field_names


def samples_of(batch: Mapping[str, Any], structure: dict) -> list[Any]:
    """The samples of ``batch`` (``{field: tensor}`` of rows, a :class:`RaggedTensors` for a
    ragged field), each rebuilt in the structure of the dataset's samples: tensors are views of
    the batch's rows, ragged rows their own tensors, ``str`` and ``bytes`` fields Python values."""
    names = sample_field_names(structure)
    scalars = python_scalar_fields(structure)
    columns = []
    for name in names:
        rows = batch[name]
        if isinstance(rows, RaggedTensors):
            columns.append(rows.items())
        elif name in scalars:  # (Python numbers in the dataset's samples: Python numbers again)
            columns.append(rows.tolist())
        else:
            columns.append(rows.unbind(0))
    kind = structure["kind"]
    flat_dict = kind == "dict" and "mapping" not in structure
    if flat_dict and all(item["kind"] == "field" for item in structure["items"].values()):  # (one level)
        keys = list(structure["items"])
        return [dict(zip(keys, values)) for values in zip(*columns)]
    flat_tuple = kind == "tuple" and all(item["kind"] == "field" for item in structure["items"])
    if flat_tuple and "namedtuple" not in structure:
        return list(zip(*columns))
    return [rebuild(structure, dict(zip(names, values)), tuple) for values in zip(*columns)]
