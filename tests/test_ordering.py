"""Epoch plans are pure: property tests over sizes, windows and seeds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, SequentialSampler

from datalflash.ordering import batch_bounds, plan_epoch, sample_order


@settings(max_examples=200, deadline=None)
@given(
    chunk_rows=st.lists(st.integers(1, 50), min_size=1, max_size=30),
    window=st.integers(1, 8),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**63),
    epoch=st.integers(0, 1000),
)
def test_plan_serves_every_row_once_and_reads_every_chunk_once(chunk_rows, window, shuffle, seed, epoch):
    plan = plan_epoch(chunk_rows, window=window, shuffle=shuffle, seed=seed, epoch=epoch)
    chunks = np.concatenate(plan.windows)
    assert sorted(chunks.tolist()) == list(range(len(chunk_rows)))
    assert all(len(w) <= window for w in plan.windows)
    starts = np.concatenate([[0], np.cumsum(chunk_rows)])
    served = []
    for ids, order in zip(plan.windows, plan.orders):
        rows = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in ids])
        assert sorted(order.tolist()) == list(range(len(rows)))
        served.extend(rows[order].tolist())
    assert sorted(served) == list(range(sum(chunk_rows)))
    if not shuffle:
        assert served == list(range(sum(chunk_rows)))
    again = plan_epoch(chunk_rows, window=window, shuffle=shuffle, seed=seed, epoch=epoch)
    assert all(np.array_equal(a, b) for a, b in zip(plan.orders, again.orders))


@given(n=st.integers(0, 500), batch=st.integers(1, 64), drop_last=st.booleans())
def test_batch_bounds_match_torch(n, batch, drop_last):
    expected = [(b[0], b[-1] + 1) for b in BatchSampler(SequentialSampler(range(n)), batch, drop_last)]
    assert batch_bounds(n, batch, drop_last) == expected


def test_epochs_differ_and_seeds_differ():
    a, b = sample_order(100, shuffle=True, seed=1, epoch=0), sample_order(100, shuffle=True, seed=1, epoch=1)
    c = sample_order(100, shuffle=True, seed=2, epoch=0)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a, sample_order(100, shuffle=True, seed=1, epoch=0))
