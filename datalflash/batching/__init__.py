"""Assemble: one vectorized gather per field and source buffer, shaped as default_collate; storage
arrays as tensors of the fields' torch dtypes."""

from datalflash.batching.assemble import gather
from datalflash.batching.tensors import as_storage, from_storage, tensors_from_storage, torch_dtype_name

__all__ = ["as_storage", "from_storage", "gather", "tensors_from_storage", "torch_dtype_name"]
