"""Order: which sample comes when. Pure functions of (seed, epoch, sizes): no I/O, deterministic."""

from datalflash.ordering.plan import EpochPlan, batch_bounds, epoch_rng, plan_epoch, sample_order

__all__ = ["EpochPlan", "batch_bounds", "epoch_rng", "plan_epoch", "sample_order"]
