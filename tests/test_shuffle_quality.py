"""Shuffle quality is measured: the score itself, and the loader on a label-sorted store."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from datalflash import score_order, shuffle_quality
from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.ordering.quality import iid_distinct_labels
from datalflash.utils import DatasetConverter


def test_iid_distinct_labels_matches_enumeration():
    labels = [0, 0, 0, 1, 1, 2, 3]
    for b in range(1, len(labels) + 1):
        subsets = list(itertools.combinations(labels, b))
        exact = sum(len(set(s)) for s in subsets) / len(subsets)
        assert iid_distinct_labels([3, 2, 1, 1], b) == pytest.approx(exact, rel=1e-9)


def test_scores_tell_sorted_from_shuffled():
    labels = np.repeat(np.arange(10), 1000)
    batches = lambda order: [labels[order[i : i + 64]] for i in range(0, len(order), 64)]  # noqa: E731
    ordered = np.arange(len(labels))
    sorted_score = score_order(batches(ordered), [ordered[i : i + 64] for i in range(0, len(ordered), 64)])
    assert sorted_score.label_mixing_ratio < 0.2 and sorted_score.displacement == 0
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = score_order(batches(perm), [perm[i : i + 64] for i in range(0, len(perm), 64)])
    assert shuffled.label_mixing_ratio == pytest.approx(1.0, abs=0.02)
    assert shuffled.displacement_ratio == pytest.approx(1.0, abs=0.03)
    assert shuffled.iid_displacement == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        score_order([])


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """The hard case: 50,000 samples in label order, 10 classes, chunks of 10,000, CIFAR-sized."""
    n = 50_000
    labels = torch.arange(10).repeat_interleave(n // 10)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    path = tmp_path_factory.mktemp("sorted") / "store"
    DatasetConverter.create_chunked_dataset(
        TensorDataset(images, labels, torch.arange(n)), path, chunk_size=10_000, shuffle=False, progress=False
    )
    return path


class CountingReads:
    """Wraps a store's read_chunks to count reads per chunk."""

    def __init__(self, store):
        self.counts = {}
        read = store.read_chunks

        def counted(split, chunks, out=None):
            for c in chunks:
                self.counts[c] = self.counts.get(c, 0) + 1
            return read(split, chunks, out)

        store.read_chunks = counted


def test_default_loader_mixes_a_sorted_store_like_iid_reading_each_chunk_once(sorted_store):
    data = ChunkedDataset(sorted_store, "train")
    reads = CountingReads(data.store)
    loader = FlashDataLoader(data, batch_size=64, shuffle=True, seed=0)
    for epoch in range(2):
        reads.counts.clear()
        quality = shuffle_quality(loader, label=lambda b: b[1], position=lambda b: b[2])
        assert quality.num_samples == 40_000
        assert quality.label_mixing_ratio >= 0.95, quality
        assert quality.displacement_ratio >= 0.9, quality
        if epoch == 0:
            assert sorted(reads.counts) == list(range(4)) and max(reads.counts.values()) == 1
        else:  # (the split fits the read-ahead budget: kept from the first epoch, in a new order)
            assert reads.counts == {}


def test_one_chunk_window_is_scored_poor(sorted_store):
    """The score is not a rubber stamp: a window of one chunk (two labels) mixes badly."""
    data = ChunkedDataset(sorted_store, "train")
    quality = shuffle_quality(
        FlashDataLoader(data, batch_size=64, shuffle=True, seed=0, window_chunks=1), label=lambda b: b[1]
    )
    assert quality.distinct_labels == pytest.approx(2.0, abs=0.05)
    assert quality.label_mixing_ratio < 0.3
    assert math.isclose(quality.iid_distinct_labels, iid_distinct_labels([5000] * 8, 64), rel_tol=1e-3)
