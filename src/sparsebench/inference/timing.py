"""Side-by-side timing for noisy shared machines: interleaved repetitions, medians.

Running candidate A a hundred times and then B a hundred times lets a neighbour's job land on
one of them only; interleaving A, B, A, B ... exposes both to the same noise, and the median
discards the rounds that were hit hardest.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 21,
    warmup: int = 2,
    budget_s: float | None = None,
    quantile: float = 0.5,
) -> dict[str, float]:
    """Time each candidate ``repeats`` times, interleaved round by round.

    Args:
        candidates: name → zero-argument callable to time.
        repeats: rounds; each round calls every candidate once (order rotates per round so no
            candidate always runs right after the same neighbour).
        warmup: untimed rounds first (page faults, thread-pool start, caches).
        budget_s: stop early once this much time has been spent timing (at least 3 rounds).
        quantile: which order statistic to return; 0.5 is the median. A lower one estimates
            the cost on an idle machine when neighbours' jobs hit most rounds.

    Returns:
        name → that quantile (the median by default) of the seconds per call.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    names = list(candidates)
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                candidates[name]()
        samples: dict[str, list[float]] = {n: [] for n in names}
        start = time.perf_counter()
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                candidates[name]()
                samples[name].append(time.perf_counter() - t0)
            if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
                break
    if quantile == 0.5:
        return {n: statistics.median(v) for n, v in samples.items()}
    return {n: sorted(v)[round(quantile * (len(v) - 1))] for n, v in samples.items()}


def machine_context() -> str:
    """Return one line describing the machine state a measurement was taken in."""
    from sparsebench.inference._extension import cpu_description, kernel_path

    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"cpu={cpu_description()[0]!r} cores={os.cpu_count()} torch_threads="
        f"{torch.get_num_threads()} torch={torch.__version__} kernels={kernel_path()} "
        f"loadavg(1/5/15m)={load}"
    )
