"""What a store holds and what it costs on disk: ``datalflash info``."""

from __future__ import annotations

import os
from pathlib import Path

from datalflash.store.registry import open_store


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (links not followed)."""
    return sum(p.lstat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def store_info(path: str | os.PathLike) -> dict:
    """Backend, config, fields, splits, chunks, bytes on disk and compression ratio of a store."""
    store = open_store(path)
    raw = sum(s.num_samples for s in store.splits.values()) * store.manifest.sample_nbytes  # (ragged: estimated)
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
    }


def format_info(info: dict) -> str:
    """``store_info`` as readable text."""
    config = ", ".join(f"{k}={v}" for k, v in info["config"].items()) or "no options"
    lines = [
        f"{info['path']}",
        f"  backend      {info['backend']} ({config}), chunks of {info['chunk_size']:,} samples",
        "  fields",
        *(f"    {name:<12} {_describe_field(f)}" for name, f in info["fields"].items()),
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


def _describe_field(field: dict) -> str:
    """``int32 (*,) ragged ...``, ``str (variable length)``, ``float32 (3, 32, 32)``."""
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
