"""Epoch plans, rank shares, resume arithmetic and schedules are pure: property tests."""

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, SequentialSampler

from datalflash.ordering import batch_bounds, plan_epoch, sample_order, schedule
from datalflash.ordering.ranges import rank_share, served, subtract, take


def positions(ranges):
    return [p for a, b in ranges for p in range(a, b)]


def plan_rows(plan):
    """Store rows of the plan's sequence, position by position."""
    starts = np.concatenate([[0], np.cumsum(plan.chunk_rows)])
    out = []
    for w, ids in enumerate(plan.windows):
        rows = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in ids])
        order = plan.order(w)
        assert sorted(order.tolist()) == list(range(len(rows)))
        out.extend(rows[order].tolist())
    return out


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
    served_rows = plan_rows(plan)
    assert sorted(served_rows) == list(range(sum(chunk_rows)))
    if not shuffle:
        assert served_rows == list(range(sum(chunk_rows)))
    again = plan_epoch(chunk_rows, window=window, shuffle=shuffle, seed=seed, epoch=epoch)
    assert plan_rows(again) == served_rows


@given(n=st.integers(0, 500), batch=st.integers(1, 64), drop_last=st.booleans())
def test_batch_bounds_match_torch(n, batch, drop_last):
    expected = [(b[0], b[-1] + 1) for b in BatchSampler(SequentialSampler(range(n)), batch, drop_last)]
    assert batch_bounds(n, batch, drop_last) == expected


def test_epochs_differ_and_seeds_differ():
    a, b = sample_order(100, shuffle=True, seed=1, epoch=0), sample_order(100, shuffle=True, seed=1, epoch=1)
    c = sample_order(100, shuffle=True, seed=2, epoch=0)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a, sample_order(100, shuffle=True, seed=1, epoch=0))


ranges_strategy = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=6).map(
    lambda pairs: subtract([(0, 400)], [(a, a + n) for a, n in pairs])
)


@settings(max_examples=300, deadline=None)
@given(remaining=ranges_strategy, world_size=st.integers(1, 9), drop_last=st.booleans())
def test_rank_shares_cover_each_position_once(remaining, world_size, drop_last):
    shares = [positions(rank_share(remaining, r, world_size, drop_last)) for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1, "every rank serves as many positions"
    counts = Counter(p for s in shares for p in s)
    expected = set(positions(remaining))
    assert set(counts) <= expected
    if drop_last:
        assert max(counts.values(), default=1) == 1
        assert len(expected) - len(counts) <= world_size - 1
    else:
        assert set(counts) == expected
        assert sum(counts.values()) - len(expected) <= world_size - 1


@settings(max_examples=300, deadline=None)
@given(
    remaining=ranges_strategy,
    w1=st.integers(1, 6),
    w2=st.integers(1, 6),
    batch=st.integers(1, 40),
    batches=st.integers(0, 30),
    drop_last=st.booleans(),
)
def test_resume_on_another_world_size_serves_the_rest_once(remaining, w1, w2, batch, batches, drop_last):
    """Ranks of w1 each serve `batches` batches, then w2 ranks serve the rest: every position of
    the epoch is served exactly once (up to the padding / dropping of each half)."""
    per_rank = len(positions(rank_share(remaining, 0, w1, drop_last)))
    done = min(batches * batch, per_rank)
    first = [p for r in range(w1) for p in positions(rank_share(remaining, r, w1, drop_last))[:done]]
    rest = subtract(remaining, served(remaining, w1, drop_last, done))
    second = [p for r in range(w2) for p in positions(rank_share(rest, r, w2, drop_last))]
    assert set(first).isdisjoint(positions(rest))
    everything = Counter(first + second)
    wanted = set(positions(remaining))
    if drop_last:
        assert max(everything.values(), default=1) == 1
        assert len(wanted - set(everything)) <= (w1 - 1) + (w2 - 1)
    else:
        assert set(everything) == wanted
        assert sum(everything.values()) - len(wanted) <= (w1 - 1) + (w2 - 1)


@given(remaining=ranges_strategy, start=st.integers(0, 900), length=st.integers(0, 900))
def test_take_wraps_like_modular_indexing(remaining, start, length):
    seq = positions(remaining)
    expected = [seq[i % len(seq)] for i in range(start, start + length)] if seq else []
    assert positions(take(remaining, start, start + length)) == expected


@settings(max_examples=200, deadline=None)
@given(
    chunk_rows=st.lists(st.integers(1, 30), min_size=1, max_size=20),
    window=st.integers(1, 5),
    world_size=st.integers(1, 4),
    batch=st.integers(1, 50),
    drop_last=st.booleans(),
    seed=st.integers(0, 99),
    data=st.data(),
)
def test_schedule_reads_only_needed_chunks_and_cuts_batches_like_torch(
    chunk_rows, window, world_size, batch, drop_last, seed, data
):
    plan = plan_epoch(chunk_rows, window=window, shuffle=True, seed=seed, epoch=0)
    rows = plan_rows(plan)
    rank = data.draw(st.integers(0, world_size - 1))
    share = rank_share([(0, len(rows))], rank, world_size, drop_last)
    sched = schedule(plan, share, batch, drop_last)
    starts = np.concatenate([[0], np.cumsum(chunk_rows)])
    chunk_of = {r: c for c in range(len(chunk_rows)) for r in range(starts[c], starts[c + 1])}
    offsets = plan.window_offsets
    got = []
    for pieces in sched.batches:
        got.append([rows[offsets[sched.visits[v].window] + p] for v, a, b in pieces for p in range(a, b)])
    expected = [rows[p] for p in positions(share)]
    bounds = batch_bounds(len(expected), batch, drop_last)
    assert got == [expected[a:b] for a, b in bounds]
    for visit in sched.visits:  # chunks read = exactly those holding rows this rank serves there
        served_rows = [rows[offsets[visit.window] + p] for a, b in visit.spans for p in range(a, b)]
        assert sorted(visit.chunks.tolist()) == sorted({chunk_of[r] for r in served_rows})
