"""Assemble: one vectorized gather per field and source buffer, shaped as default_collate."""

from datalflash.batching.assemble import gather

__all__ = ["gather"]
