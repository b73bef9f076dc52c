"""Transfer: pinned host batches copied to the device with non_blocking copies on a side stream."""

from datalflash.transfer.device import DeviceTransfer, map_tensors, resolve_device

__all__ = ["DeviceTransfer", "map_tensors", "resolve_device"]
