"""What training frameworks learn from their own loaders, told to them by ours: while an
Accelerate ``Accelerator`` runs, each epoch is registered with its gradient state as Accelerate's
own loaders do (through its public ``DataLoaderStateMixin``), so that gradient accumulation syncs
on the last batch and ``gather_for_metrics`` drops the padded repeats of the last batches."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any


def accelerate_running() -> bool:
    """Whether an Accelerate ``Accelerator`` has been created in this process."""
    state = sys.modules.get("accelerate.state")
    return state is not None and bool(state.is_initialized())


def told_to_accelerate(
    batches: Iterator[Any], count: int | None, samples: int | None, global_batch: int
) -> Iterator[Any]:
    """``batches`` (``count`` of them, None: unknown), registered with Accelerate's gradient state
    while they are served; the last is marked as the end of the data. ``samples``: how many
    samples the epoch serves across ranks, ``global_batch`` samples a step, when the last batches
    of the ranks hold the epoch's last ``samples % global_batch`` samples followed by padded
    repeats (as the loader's own order lays them out); None when that is not known."""
    state = _loader_state_class()(samples, global_batch)
    state.begin()
    try:
        if count is None:  # (one batch looked ahead to know the last)
            yield from _marking_last_by_lookahead(batches, state)
            return
        for served, batch in enumerate(batches, 1):
            state.end_of_dataloader = served >= count
            yield batch
    finally:
        state.end()


def _marking_last_by_lookahead(batches: Iterator[Any], state: Any) -> Iterator[Any]:
    iterator = iter(batches)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current
        current = following
    state.end_of_dataloader = True
    yield current


@functools.cache
def _loader_state_class() -> type:
    from accelerate.data_loader import DataLoaderStateMixin
    from accelerate.state import GradientState

    class LoaderState(DataLoaderStateMixin):
        """An epoch of a datalflash loader, as Accelerate's gradient state sees a loader."""

        def __init__(self, samples: int | None, global_batch: int):
            self.gradient_state = GradientState()
            self._drop_last = samples is None  # (Accelerate then leaves the remainder unknown)
            self.dataset = range(samples or 0)
            self.total_batch_size = global_batch

    return LoaderState
