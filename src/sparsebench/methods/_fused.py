"""Fusing the per-weight arithmetic of variational dropout and L0.

Their maths is a chain of a dozen elementwise operations over every weight (log α, its clip,
the KL's sigmoid and softplus, the hard-concrete stretch). Run one operation at a time, each
chain reads and writes the whole weight a dozen times forward and again backward, which costs
more than the layer's matrix products at the batch sizes of a CPU. ``torch.compile`` fuses each
chain, forward and backward, into one loop.

Compilation happens once per process and function (shapes are dynamic: every function takes
flattened weights). Where it is unavailable or fails, the same function runs eagerly with a
single warning; ``SPARSEBENCH_COMPILE=0`` forces the eager path.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["compile_enabled", "fused"]

log = logging.getLogger(__name__)


def compile_enabled() -> bool:
    """Returns False when ``SPARSEBENCH_COMPILE=0`` asks for the eager path."""
    return os.environ.get("SPARSEBENCH_COMPILE", "1").strip().lower() not in ("0", "false", "no")


def fused(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Returns ``fn`` compiled on first use, falling back to ``fn`` itself if that fails."""
    state: dict[str, Any] = {"compiled": None, "failed": False}

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        if state["failed"] or not compile_enabled():
            return fn(*args)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=True)
        try:
            return state["compiled"](*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
            state["failed"] = True
            log.warning("torch.compile failed for %s (%s); using the eager version.",
                        fn.__name__, type(error).__name__)
            return fn(*args)

    wrapper.eager = fn  # type: ignore[attr-defined]
    return wrapper
