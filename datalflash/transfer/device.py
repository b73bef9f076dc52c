"""Device transfer, issued ahead of use on a side CUDA stream.

``DeviceTransfer.stream(batches)`` keeps ``depth`` batches in flight: batch ``k + depth`` is being
copied (pinned host memory -> device, ``non_blocking=True``, on a side stream) while the consumer
works on batch ``k``. Before a batch is handed over, the consumer's stream waits on the copy's
event and the device tensors are marked as used by that stream (``record_stream``), so the
caching allocator never reuses them early. Pinned host blocks come from torch's caching host
allocator, which records the copy and does not reuse a block before its copy finished. Without
CUDA nothing here makes a CUDA call.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch


def resolve_device(device: Any, pin_memory: bool) -> tuple[torch.device | None, bool]:
    """``(target device or None for CPU, whether to pin)``; warns like torch when pinning can't be done."""
    target = torch.device(device) if device is not None else None
    if target is not None and target.type == "cpu":
        target = None
    if target is not None and target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for, but CUDA is not available")
    pin = pin_memory or (target is not None and target.type == "cuda")
    if pin and not torch.cuda.is_available():
        warnings.warn("pin_memory=True, but no CUDA device is available: batches are not pinned", stacklevel=3)
        pin = False
    return target, pin


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    """Apply ``fn`` to every tensor in a (nested list/tuple/dict) batch."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(fn, v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple (Padded, Packed)
        return type(batch)(*(map_tensors(fn, v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(fn, v) for v in batch)
    return batch


class DeviceTransfer:
    """Copies batches to ``device`` ahead of use (see the module docstring)."""

    def __init__(self, device: torch.device, depth: int = 2):
        self.device = device
        self.depth = max(1, depth)
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None

    def _issue(self, batch: Any) -> tuple[Any, Any]:
        if not self._cuda:
            return map_tensors(lambda t: t.to(self.device, non_blocking=True), batch), None
        with torch.cuda.stream(self._stream):
            moved = map_tensors(lambda t: t.to(self.device, non_blocking=True), batch)
            event = torch.cuda.Event()
            event.record(self._stream)
        return moved, event

    def _hand_over(self, moved: Any, event: Any) -> Any:
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)

            def used_by_consumer(t: torch.Tensor) -> torch.Tensor:
                t.record_stream(current)
                return t

            map_tensors(used_by_consumer, moved)
        return moved

    def stream(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Yield ``batches`` moved to the device, ``depth`` copies in flight."""
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append(self._issue(batch))
            if len(in_flight) > self.depth:
                yield self._hand_over(*in_flight.popleft())
        while in_flight:
            yield self._hand_over(*in_flight.popleft())
