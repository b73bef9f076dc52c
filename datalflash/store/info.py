"""What a store holds and what it costs on disk: ``datalflash info``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datalflash.format.structure import image_sizes
from datalflash.store.base import ChunkStore
from datalflash.store.registry import open_store


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (links not followed)."""
    return sum(p.lstat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def store_info(path: str | os.PathLike) -> dict:
    """Backend, config, fields, splits, chunks, bytes of samples (ragged fields as stored) and on
    disk, compression ratio, and the sizes of the images of image fields."""
    store = open_store(path)
    raw = sum(_split_bytes(store, split) for split in store.splits)
    on_disk = disk_bytes(path)
    return {
        "path": str(path),
        "backend": store.backend_id,
        "config": store.manifest.backend_config,
        "chunk_size": store.chunk_size,
        "fields": {
            name: {
                "dtype": f.dtype,
                "shape": list(f.shape),
                "kind": f.kind,
                **({"encoding": f.encoding} if f.encoding else {}),
                **({"classes": list(f.classes)} if f.classes else {}),
            }
            for name, f in store.fields.items()
        },
        "splits": {name: {"samples": s.num_samples, "chunks": s.num_chunks} for name, s in store.splits.items()},
        "checksums": {split: store.has_checksums(split) for split in store.splits},
        "raw_bytes": raw,
        "disk_bytes": on_disk,
        "compression_ratio": round(raw / on_disk, 3) if on_disk else None,
        "created": store.manifest.created,
        "images": {image: _image_sizes(store, size) for image, size in image_sizes(store.structure).items()},
    }


def _split_bytes(store: ChunkStore, split: str) -> int:
    """Bytes of the samples of ``split``: fixed-shape fields by their shape, ragged ones as their
    shape tables say (plus the tables)."""
    n = store.num_samples(split)
    total = 0
    for name, spec in store.fields.items():
        if spec.ragged:
            total += int(store.read_lengths(split, name).sum()) * spec.storage_dtype.itemsize + 8 * n * len(spec.shape)
        else:
            total += n * spec.sample_nbytes
    return total


def _image_sizes(store: ChunkStore, size_field: str) -> dict:
    """Smallest, median and largest height and width, and the channel counts, of an image field's
    images (from its size field, over every split)."""
    sizes = np.concatenate([store.read_field(split, size_field) for split in store.splits])
    if not len(sizes):
        return {}
    low, mid, high = (np.percentile(sizes[:, :2], q, axis=0).astype(int).tolist() for q in (0, 50, 100))
    return {"min_hw": low, "median_hw": mid, "max_hw": high, "channels": sorted(set(sizes[:, 2].tolist()))}


def format_info(info: dict) -> str:
    """``store_info`` as readable text."""
    config = ", ".join(f"{k}={v}" for k, v in info["config"].items()) or "no options"
    lines = [
        f"{info['path']}",
        f"  backend      {info['backend']} ({config}), chunks of {info['chunk_size']:,} samples",
        "  fields",
        *(f"    {name:<12} {_describe_field(f, info['images'].get(name))}" for name, f in info["fields"].items()),
        "  splits",
        *(
            f"    {name:<12} {s['samples']:>12,} samples {s['chunks']:>8,} chunks"
            f"{'' if info['checksums'][name] else '  (no checksums)'}"
            for name, s in info["splits"].items()
        ),
        f"  size         {info['disk_bytes'] / 2**20:,.1f} MiB on disk, {info['raw_bytes'] / 2**20:,.1f} MiB of samples"
        + (f", compression ratio {info['compression_ratio']:.2f}" if info["compression_ratio"] else ""),
    ]
    if info["created"]:
        lines.append(
            f"  created      {info['created'].get('at', '?')} by {info['created'].get('by', '?')}"
            f" from {info['created'].get('source', '?')}"
        )
    return "\n".join(lines)


def _describe_field(field: dict, images: dict | None = None) -> str:
    """``int32 (*,) ragged ...``, ``str (variable length)``, ``float32 (3, 32, 32)``; an image
    field with its images' sizes, a label field with its classes."""
    if field.get("kind") == "image" and images:
        low, mid, high = images["min_hw"], images["median_hw"], images["max_hw"]
        return (
            _describe_kind(field) + f", {low[0]}-{high[0]} x {low[1]}-{high[1]} px (median {mid[0]} x {mid[1]}), "
            f"channels {'/'.join(map(str, images['channels']))}"
        )
    text = _describe_kind(field)
    classes = field.get("classes")
    if classes:
        shown = ", ".join(classes[:5]) + (f", ... ({len(classes)} classes)" if len(classes) > 5 else "")
        text += f"  classes: {shown}"
    return text


def _describe_kind(field: dict) -> str:
    kind = field.get("kind", "array")
    if kind in ("str", "bytes"):
        return f"{kind} (variable length)"
    if kind == "image":
        return (
            "image (encoded" + (f"; decoded ones stored as {field['encoding']}" if field.get("encoding") else "") + ")"
        )
    dims = ["*" if d is None else str(d) for d in field["shape"]]
    shape = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return f"{field['dtype']:<10} {shape}" + ("  ragged (* varies by sample)" if kind == "ragged" else "")
