"""Order: which sample comes when, on which rank. Pure functions of (seed, epoch, sizes): no I/O."""

from datalflash.ordering.plan import (
    EpochPlan,
    batch_bounds,
    epoch_rng,
    memory_plan,
    plan_epoch,
    sample_order,
    window_size,
)
from datalflash.ordering.quality import ShuffleQuality, score_order, shuffle_quality
from datalflash.ordering.schedule import Schedule, Visit, schedule

__all__ = [
    "EpochPlan",
    "Schedule",
    "ShuffleQuality",
    "Visit",
    "batch_bounds",
    "epoch_rng",
    "memory_plan",
    "plan_epoch",
    "sample_order",
    "schedule",
    "score_order",
    "shuffle_quality",
    "window_size",
]
