"""Sample structure: how a sample (tuple, dict, tensor, array, scalar) maps onto named fields.

The structure is plain JSON kept in the manifest, so batches can be rebuilt with the shape torch's
``default_collate`` gives: a tuple sample gives a list/tuple of batched tensors, a dict gives a dict.

Spec grammar (JSON)::

    {"kind": "field", "name": "0"}                # a leaf: one field
    {"kind": "tuple", "items": [spec, ...]}       # tuple or list sample
    {"kind": "tuple", "items": [...], "namedtuple": {"name": "Sample", "fields": ["image", "label"]}}
    {"kind": "dict",  "items": {"key": spec, ...}}
    {"kind": "field", "name": "0", "size": "0.size"}  # an image: its size field (see format.images)

A namedtuple sample's batches are that namedtuple again (as ``default_collate`` gives): the class
itself when the module that defines it is imported (looked up, never imported from a manifest),
else a namedtuple class of the same name and fields.
"""

from __future__ import annotations

import functools
import keyword
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from datalflash.errors import StoreFormatError
from datalflash.format.images import SIZE_SUFFIX, image_size, is_image

FIELD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
MAX_DEPTH = 8


def is_valid_field_name(name: str) -> bool:
    """Field names are file-name safe: letters, digits, ``_ . -``, not starting with ``.``/``-``."""
    return isinstance(name, str) and FIELD_NAME.match(name) is not None and ".." not in name


def infer_structure(sample: Any) -> dict:
    """The structure spec of ``sample``; leaves are everything that is not a tuple, list or dict."""
    return _infer(sample, prefix="", depth=0)


def _infer(sample: Any, prefix: str, depth: int) -> dict:
    if depth > MAX_DEPTH:
        raise ValueError(f"sample is nested deeper than {MAX_DEPTH} levels")
    join = (lambda key: f"{prefix}.{key}") if prefix else str
    if isinstance(sample, Mapping):
        items = {}
        for key in sample:
            if not isinstance(key, str) or not is_valid_field_name(key) or "." in key:
                raise ValueError(f"dict key {key!r} cannot name a field: use letters, digits, '_' and '-'")
            items[key] = _infer(sample[key], join(key), depth + 1)
        node: dict = {"kind": "dict", "items": items}
        if type(sample) is not dict:  # (an OrderedDict, a user's Mapping: rebuilt as one where it can be)
            node["mapping"] = {"name": type(sample).__qualname__, "module": type(sample).__module__}
        return node
    fields = getattr(type(sample), "_fields", None)
    if isinstance(sample, tuple) and isinstance(fields, tuple) and _is_namedtuple_info(type(sample).__name__, fields):
        named = [_infer(item, join(name), depth + 1) for name, item in zip(fields, sample)]
        info = {"name": type(sample).__name__, "module": type(sample).__module__, "fields": list(fields)}
        return {"kind": "tuple", "items": named, "namedtuple": info}
    if isinstance(sample, (tuple, list)):
        return {
            "kind": "tuple",
            "items": [_infer(item, join(i), depth + 1) for i, item in enumerate(sample)],
        }
    name = prefix or "data"
    if is_image(sample):
        return {"kind": "field", "name": name, "size": name + SIZE_SUFFIX}
    if type(sample) in PYTHON_SCALARS:  # (bool, int, float, complex themselves; numpy's scalars are arrays)
        return {"kind": "field", "name": name, "python": type(sample).__name__}
    return {"kind": "field", "name": name}


PYTHON_SCALARS = (bool, int, float, complex)


def python_scalar_fields(spec: dict) -> set[str]:
    """The fields whose samples were Python numbers (``"python"`` on their node): handed back
    as such where samples are handed out, as torch's DataLoader hands them to a ``collate_fn``."""
    if spec["kind"] == "field":
        return {spec["name"]} if "python" in spec else set()
    items = spec["items"].values() if spec["kind"] == "dict" else spec["items"]
    return set().union(*(python_scalar_fields(item) for item in items))


def _is_namedtuple_info(name: Any, fields: Any) -> bool:
    """Whether ``name`` and ``fields`` can name a namedtuple class (identifiers, fields distinct
    and field-name safe)."""
    names = [name, *fields] if isinstance(fields, (list, tuple)) else [None]
    return (
        all(isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n) for n in names)
        and len(set(fields)) == len(fields)
        and all(is_valid_field_name(f) and not f.startswith("_") for f in fields)
    )


@functools.lru_cache(maxsize=64)
def namedtuple_class(name: str, fields: tuple[str, ...], module: str | None = None) -> type:
    """The namedtuple class ``module.name`` when that module is imported and defines it with these
    fields, else a new namedtuple class of that name and fields."""
    found = getattr(sys.modules.get(module or ""), name, None)
    if isinstance(found, type) and issubclass(found, tuple) and getattr(found, "_fields", None) == fields:
        return found
    made: type = NamedTuple(name, [(field, Any) for field in fields])  # type: ignore[misc]  # (made at run time)
    return made


def field_names(spec: dict) -> list[str]:
    """Leaf field names of a structure spec, in flattening order."""
    names: list[str] = []
    _walk(spec, names.append)
    return names


def _walk(spec: dict, visit: Callable[[str], None]) -> None:
    kind = spec["kind"]
    if kind == "field":
        visit(spec["name"])
        if "size" in spec:
            visit(spec["size"])
    elif kind == "tuple":
        for item in spec["items"]:
            _walk(item, visit)
    else:
        for item in spec["items"].values():
            _walk(item, visit)


def sample_field_names(spec: dict) -> list[str]:
    """The fields a sample's leaves come from, in order: :func:`field_names` without the size
    fields of images (stored beside them, not part of a sample)."""
    names: list[str] = []
    _nodes(spec, lambda node: names.append(node["name"]))
    return names


def image_sizes(spec: dict) -> dict[str, str]:
    """``{image field: its size field}`` of a structure spec."""
    found: dict[str, str] = {}
    _nodes(spec, lambda node: found.update({node["name"]: node["size"]} if "size" in node else {}))
    return found


def _nodes(spec: dict, visit: Callable[[dict], None]) -> None:
    if spec["kind"] == "field":
        visit(spec)
    else:
        items = spec["items"]
        for item in items if isinstance(items, list) else items.values():
            _nodes(item, visit)


def flatten(sample: Any, spec: dict) -> list[Any]:
    """Leaves of ``sample`` in the order of :func:`field_names`; raises ValueError on a mismatch."""
    leaves: list[Any] = []
    _flatten(sample, spec, leaves, path="sample")
    return leaves


def _flatten(sample: Any, spec: dict, out: list, path: str) -> None:
    kind = spec["kind"]
    if kind == "field":
        if isinstance(sample, (tuple, list, Mapping)):
            raise ValueError(f"{path} is a {type(sample).__name__} where the first sample had a value")
        out.append(sample)
        if "size" in spec:
            if not is_image(sample):
                raise ValueError(f"{path} is a {type(sample).__name__} where the first sample had an image")
            out.append(image_size(sample))
    elif kind == "tuple":
        if not isinstance(sample, (tuple, list)) or len(sample) != len(spec["items"]):
            raise ValueError(
                f"{path} should be a tuple of {len(spec['items'])} items like the first sample, "
                f"got {type(sample).__name__}" + (f" of {len(sample)}" if isinstance(sample, (tuple, list)) else "")
            )
        for i, (item, sub) in enumerate(zip(sample, spec["items"])):
            _flatten(item, sub, out, f"{path}[{i}]")
    else:
        if not isinstance(sample, Mapping) or set(sample) != set(spec["items"]):
            keys = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
            raise ValueError(f"{path} should be a dict with keys {sorted(spec['items'])}, got {keys}")
        for key, sub in spec["items"].items():
            _flatten(sample[key], sub, out, f"{path}[{key!r}]")


def rebuild(spec: dict, leaves: Mapping[str, Any], sequence: Callable = tuple) -> Any:
    """Rebuild the structure, using ``sequence`` (``tuple`` or ``list``) for tuple nodes."""
    kind = spec["kind"]
    if kind == "field":
        return leaves[spec["name"]]
    if kind == "tuple":
        items = [rebuild(item, leaves, sequence) for item in spec["items"]]
        info = spec.get("namedtuple")
        if info is not None:
            return namedtuple_class(info["name"], tuple(info["fields"]), info.get("module"))(*items)
        return sequence(items)
    mapping = {key: rebuild(item, leaves, sequence) for key, item in spec["items"].items()}
    info = spec.get("mapping")
    return mapping if info is None else as_mapping_type(mapping, info["name"], info["module"])


def as_mapping_type(mapping: dict, name: str, module: str) -> Any:
    """``mapping`` as an instance of the Mapping class ``module.name`` when that module is already
    imported and defines it, and the class builds from a dict (as ``default_collate`` tries);
    else ``mapping`` itself. A module is never imported because a manifest names it."""
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, Mapping)):
        return mapping
    make: Callable[[dict], Any] = found
    try:
        return make(mapping)
    except TypeError:  # (a class that does not build from a dict, e.g. defaultdict)
        return mapping


def validate_structure(spec: Any, fields: Mapping[str, Any], depth: int = 0) -> None:
    """Check a structure spec read from a manifest; every leaf must name a declared field once."""
    seen: list[str] = []
    _validate(spec, depth, seen)
    if sorted(seen) != sorted(fields) or len(set(seen)) != len(seen):
        raise StoreFormatError(f"manifest structure names fields {sorted(seen)} but fields are {sorted(fields)}")


def _validate(spec: Any, depth: int, seen: list[str]) -> None:
    if depth > MAX_DEPTH or not isinstance(spec, dict):
        raise StoreFormatError("manifest structure is not a valid structure spec")
    kind = spec.get("kind")
    items = spec.get("items")
    if kind == "field" and isinstance(spec.get("name"), str):
        seen.append(spec["name"])
        size = spec.get("size")
        if size is not None:
            if not isinstance(size, str):
                raise StoreFormatError(f"manifest structure node {str(spec)[:80]!r}: 'size' is not a field name")
            seen.append(size)
        if spec.get("python", "int") not in [t.__name__ for t in PYTHON_SCALARS]:
            raise StoreFormatError(
                f"manifest structure node {str(spec)[:80]!r}: 'python' is not bool, int, float or complex"
            )
    elif kind == "tuple" and isinstance(items, list):
        info = spec.get("namedtuple")
        if info is not None and not (
            isinstance(info, dict)
            and _is_namedtuple_info(info.get("name"), info.get("fields"))
            and len(info["fields"]) == len(items)
            and isinstance(info.get("module", ""), str)
        ):
            raise StoreFormatError(f"manifest structure namedtuple {str(info)[:80]!r} is not valid")
        for item in items:
            _validate(item, depth + 1, seen)
    elif kind == "dict" and isinstance(items, dict):
        info = spec.get("mapping")
        if info is not None and not (
            isinstance(info, dict)
            and isinstance(info.get("module"), str)
            and isinstance(info.get("name"), str)
            and all(part.isidentifier() for part in info["name"].split("."))
        ):
            raise StoreFormatError(f"manifest structure mapping {str(info)[:80]!r} is not valid")
        for item in items.values():
            _validate(item, depth + 1, seen)
    else:
        raise StoreFormatError(f"manifest structure node {str(spec)[:80]!r} is not valid")
