"""How well a loader shuffles, against an i.i.d. uniform permutation of the same data.

Two scores, each reported with the value a uniform random permutation would get:

* *label mixing*: mean number of distinct labels per batch. A uniform permutation's batch of
  ``b`` samples is a uniform ``b``-subset, so its expected distinct count is exactly
  ``sum_k 1 - C(N - n_k, b) / C(N, b)`` for label counts ``n_k`` (hypergeometric).
* *displacement*: mean ``|served position - stored position|`` over the epoch, divided by ``N``;
  a uniform permutation gets ``(N^2 - 1) / (3 N^2)``, about 1/3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ShuffleQuality:
    """Scores of one epoch's order; the ``*_ratio`` properties are 1.0 for an i.i.d. shuffle."""

    distinct_labels: float
    iid_distinct_labels: float
    displacement: float | None
    iid_displacement: float
    num_samples: int

    @property
    def label_mixing_ratio(self) -> float:
        """Mean distinct labels per batch over the i.i.d. value."""
        return self.distinct_labels / self.iid_distinct_labels if self.iid_distinct_labels else 1.0

    @property
    def displacement_ratio(self) -> float | None:
        """Mean displacement over the i.i.d. value (None when positions were not given)."""
        if self.displacement is None:
            return None
        return self.displacement / self.iid_displacement if self.iid_displacement else 1.0


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def iid_distinct_labels(label_counts: Iterable[int], batch_size: int) -> float:
    """Expected distinct labels in a uniform random ``batch_size``-subset of the samples."""
    counts = [int(c) for c in label_counts if c > 0]
    n = sum(counts)
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}, got {batch_size}")
    total = _log_comb(n, batch_size)
    return sum(1.0 - (math.exp(_log_comb(n - c, batch_size) - total) if n - c >= batch_size else 0.0) for c in counts)


def score_order(labels: Iterable[Any], positions: Iterable[Any] | None = None) -> ShuffleQuality:
    """Score one epoch given each batch's labels (and, optionally, each batch's stored
    positions: the sample indices in the store, in the order served)."""
    batches = [np.asarray(torch.as_tensor(b).cpu()).reshape(-1) for b in labels]
    if not batches or not sum(len(b) for b in batches):
        raise ValueError("no batches to score")
    everything = np.concatenate(batches)
    counts = np.unique(everything, return_counts=True)[1]
    sizes = np.array([len(b) for b in batches])
    distinct = float(np.mean([len(np.unique(b)) for b in batches]))
    iid = float(np.mean([iid_distinct_labels(counts, int(s)) for s in sizes]))
    n = len(everything)
    displacement = None
    if positions is not None:
        stored = np.concatenate([np.asarray(torch.as_tensor(p).cpu()).reshape(-1) for p in positions])
        if len(stored) != n:
            raise ValueError(f"{len(stored)} positions for {n} labels")
        displacement = float(np.abs(stored - np.arange(n)).mean() / n)
    return ShuffleQuality(distinct, iid, displacement, (n * n - 1) / (3 * n * n), n)


def shuffle_quality(
    loader: Iterable[Any],
    label: Callable[[Any], Any],
    position: Callable[[Any], Any] | None = None,
) -> ShuffleQuality:
    """Iterate one epoch of ``loader`` and score it; ``label(batch)`` (and ``position(batch)``,
    the stored sample indices) pick those out of a batch."""
    labels, positions = [], []
    for batch in loader:
        labels.append(label(batch))
        if position is not None:
            positions.append(position(batch))
    return score_order(labels, positions if position is not None else None)
