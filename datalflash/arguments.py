"""Checks of arguments shared by every layer (one wording for every integer argument)."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(name: str, value: Any, minimum: int | None = None, error: type[Exception] = ValueError) -> int:
    """``value`` if it is an ``int`` (not a bool) of at least ``minimum``; else ``error`` naming
    the argument: ``"chunk_size must be an integer >= 1, got 0"``."""
    if not is_int(value) or (minimum is not None and value < minimum):
        floor = f" >= {minimum}" if minimum is not None else ""
        raise error(f"{name} must be an integer{floor}, got {value!r}")
    return int(value)
