"""Validation helpers shared by the model constructors.

Every bad option gets one sentence naming the option, the value and what is allowed, raised as a
``ValueError`` where the option enters (never a shape error from deep inside torch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is an ``int`` greater than zero; raises ``ValueError`` otherwise."""
    # bool is an int subclass; True as a channel count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is an ``int`` of at least zero; raises ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return value


def probability(name: str, value: Any) -> float:
    """Returns ``value`` as a float if it lies in [0, 1); raises ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def one_of(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Returns ``value`` if it is in ``allowed``; raises ``ValueError`` listing them otherwise."""
    allowed = list(allowed)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}.")
    return value


def positive_int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    """Returns ``value`` as a tuple of positive ints (of ``length`` items if given).

    Raises ``ValueError`` if it is not a non-empty sequence of positive integers of that length.
    """
    ok = isinstance(value, list | tuple) and len(value) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if ok and length is not None:
        ok = len(value) == length
    if not ok:
        what = f"{length} positive integers" if length else "a non-empty tuple of positive integers"
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return tuple(value)
