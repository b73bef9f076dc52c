"""Conversion layout: which source samples go to which split and chunk, read in which blocks.

Pure arithmetic on indices (no I/O): split sizes from ratios, each chunk's source indices, and the
read blocks that cut them. A store written from the same arguments always gets the same layout,
whatever the number of processes writing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from datalflash.errors import ConversionError
from datalflash.format.manifest import SplitInfo
from datalflash.format.structure import is_valid_field_name

DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
DEFAULT_CHUNK_SAMPLES = 10_000
CHUNK_TARGET_BYTES = 64 * 2**20
"""The most a chunk holds by default (in samples' stored bytes)."""


def default_chunk_size(sample_nbytes: int) -> int:
    """Samples per chunk when the user gives none: :data:`DEFAULT_CHUNK_SAMPLES`, or as many as
    :data:`CHUNK_TARGET_BYTES` holds when samples are larger (above 6.7 KB; ragged ones by their
    typical size). A chunk is the unit of reading: a window of them and the next must fit the
    loader's ``read_ahead_bytes`` (512 MiB by default), so 10,000 images of 64 KiB (655 MB a
    chunk) would overrun it whatever the window."""
    return max(1, min(DEFAULT_CHUNK_SAMPLES, CHUNK_TARGET_BYTES // max(1, sample_nbytes)))


ChunkBlocks = tuple[str, int, list[np.ndarray]]
"""``(split, chunk, read blocks of source indices)`` of one chunk to write."""


def split_sizes(num_samples: int, split_ratios: Mapping[str, float]) -> dict[str, int]:
    """Samples per split: boundaries at ``round(cumulative ratio * n)``, so sizes sum to ``n``."""
    if not isinstance(split_ratios, Mapping) or not split_ratios:
        raise ConversionError(f"split_ratios must be a non-empty dict of name -> ratio, got {split_ratios!r}")
    for name, ratio in split_ratios.items():
        if not is_valid_field_name(name):
            raise ConversionError(f"split name {name!r} is not allowed (letters, digits, '_', '-', '.')")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
            raise ConversionError(f"split ratio of {name!r} must be a finite number >= 0, got {ratio!r}")
    total = sum(split_ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ConversionError(f"split ratios must sum to 1, got {total:g} from {dict(split_ratios)}")
    sizes, cumulative, previous = {}, 0.0, 0
    for name, ratio in split_ratios.items():
        cumulative += ratio
        boundary = min(num_samples, round(cumulative * num_samples))
        sizes[name] = boundary - previous
        previous = boundary
    sizes[name] += num_samples - previous  # float rounding never loses a sample
    return sizes


def source_order(num_samples: int, shuffle: bool, seed: int) -> np.ndarray:
    """The source indices in store order: permuted with ``seed`` when ``shuffle``."""
    return np.random.default_rng(seed).permutation(num_samples) if shuffle else np.arange(num_samples)


def read_blocks(indices: np.ndarray, block: int, chunk_size: int) -> list[np.ndarray]:
    """Cut ``indices`` into read blocks of at most ``block`` samples that never straddle a chunk."""
    indices = np.asarray(indices, dtype=np.int64)
    return [
        indices[start : min(start + block, chunk_start + chunk_size)]
        for chunk_start in range(0, len(indices), chunk_size)
        for start in range(chunk_start, min(chunk_start + chunk_size, len(indices)), block)
    ]


def chunk_blocks(splits: Mapping[str, SplitInfo], order: np.ndarray, chunk_size: int, block: int) -> list[ChunkBlocks]:
    """Every chunk of the store's chunk list (splits in order) with the read blocks of its
    source indices, ``order`` being the source indices in store order."""
    chunks = []
    offset = 0
    for split, info in splits.items():
        split_order = order[offset : offset + info.num_samples]
        offset += info.num_samples
        for chunk in range(info.num_chunks):
            rows = split_order[chunk * chunk_size : (chunk + 1) * chunk_size]
            chunks.append((split, chunk, read_blocks(rows, block, chunk_size)))
    return chunks


def owner(chunk_index: int, world_size: int) -> int:
    """The rank that writes chunk ``chunk_index`` of the store's chunk list."""
    return chunk_index % world_size
