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

__all__ = ["compile_enabled", "flat_in_memory_order", "fused"]

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


def flat_in_memory_order(*tensors: torch.Tensor
                         ) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """Returns 1-D views of same-shaped ``tensors`` in their shared memory order, and a function
    that gives a flat result back the shape (and layout) of the first.

    The fused functions work on flattened weights. ``reshape(-1)`` of a channels-last (NHWC)
    tensor copies it into NCHW order, and the result then comes back NCHW: two copies per
    call and every later convolution converting back. When all are channels-last, the NHWC
    permutation is itself contiguous, so it flattens without a copy; mixed layouts are made
    contiguous first, so elements always pair up correctly.
    """
    first = tensors[0]
    if all(t.is_contiguous() for t in tensors):
        return [t.view(-1) for t in tensors], lambda flat: flat.view(first.shape)
    if first.dim() == 4 and all(t.is_contiguous(memory_format=torch.channels_last)
                                for t in tensors):
        nhwc = first.permute(0, 2, 3, 1).shape
        return ([t.permute(0, 2, 3, 1).reshape(-1) for t in tensors],
                lambda flat: flat.view(nhwc).permute(0, 3, 1, 2))
    return [t.contiguous().view(-1) for t in tensors], lambda flat: flat.view(first.shape)
