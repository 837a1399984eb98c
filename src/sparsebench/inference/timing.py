"""Side-by-side timing for noisy shared machines: interleaved rounds, medians and their spread,
a thread count the machine can give, and one plain warning when a ratio cannot be trusted.

Running candidate A a hundred times and then B a hundred times lets a neighbour's job land on
one of them only; interleaving A, B, A, B ... exposes both to the same noise, and the median
discards the rounds that were hit hardest. The median alone still hides a measurement that was
noise throughout (issue 22: a "138.7x" at batch 16 that was a dense model given two threads on
a 2-core machine with a load average of 5), so every ratio is printed with its range over both
sides' quartiles, and :func:`unreliable_line` says in one line when the spread or the load makes it
unreliable. Used by ``bench-inference``, ``bench-runs`` and the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

#: A side whose rounds' interquartile range is above this share of their median is noise.
SPREAD_LIMIT = 0.20
#: A median ratio beyond this factor either way claims a difference; its quartiles must then
#: stay on one side of 1.0, or the rounds do not agree on which side is faster.
CLAIM_FACTOR = 1.10
#: Time constant of the kernel's 1-minute load average (an exponentially damped average).
_LOAD_TAU_S = 60.0


def interleaved_rounds(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 21,
    warmup: int = 2,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, interleaved round by round.

    Args:
        candidates: name → zero-argument callable to time (run under ``torch.no_grad``; a
            training step wraps itself in ``torch.enable_grad()``).
        repeats: rounds; each round calls every candidate once (order rotates per round so no
            candidate always runs right after the same neighbour).
        warmup: untimed rounds first (page faults, thread-pool start, caches).
        budget_s: stop early once this much time has been spent timing (at least 3 rounds).
        clock: seconds, monotonic (a test passes a fake one its candidates advance).

    Returns:
        name → seconds of each timed call, in round order (every list has one entry per
        round, so entry ``r`` of two candidates were measured side by side).
    """
    names = list(candidates)
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                candidates[name]()
        samples: dict[str, list[float]] = {n: [] for n in names}
        start = clock()
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = clock()
                candidates[name]()
                samples[name].append(clock() - t0)
            if budget_s is not None and r >= 2 and clock() - start > budget_s:
                break
    return samples


def interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 21,
    warmup: int = 2,
    budget_s: float | None = None,
    quantile: float = 0.5,
) -> dict[str, float]:
    """Time each candidate as :func:`interleaved_rounds` does; return one order statistic.

    Args:
        quantile: which order statistic to return; 0.5 is the median. A lower one estimates
            the cost on an idle machine when neighbours' jobs hit most rounds.

    Returns:
        name → that quantile (the median by default) of the seconds per call.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    samples = interleaved_rounds(candidates, repeats=repeats, warmup=warmup, budget_s=budget_s)
    if quantile == 0.5:
        return {n: statistics.median(v) for n, v in samples.items()}
    return {n: sorted(v)[round(quantile * (len(v) - 1))] for n, v in samples.items()}


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of a set of rounds (quartiles by linear interpolation between
    order statistics, numpy's default: of 5 sorted rounds, the 2nd and 4th)."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        """Return the median and quartiles of ``samples`` (at least one value)."""
        if not samples:
            raise ValueError("cannot summarise zero rounds")
        if len(samples) == 1:
            return cls(samples[0], samples[0], samples[0], 1)
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, q1, q3, len(samples))

    @property
    def relative(self) -> float:
        """Return the interquartile range as a share of the median (0.2: 20%)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else math.inf


@dataclass(frozen=True)
class Comparison:
    """A baseline timed against a candidate in the same rounds: each side's median and
    quartiles, the ratio of the medians baseline / candidate (above 1: the candidate is
    faster) and the range of the ratio over the two sides' interquartile ranges, from the
    baseline's first quartile over the candidate's third to the baseline's third over the
    candidate's first (it always holds the ratio of the medians)."""

    baseline: Spread
    candidate: Spread
    names: tuple[str, str] = ("dense", "sparse")

    @classmethod
    def of(
        cls,
        baseline: Sequence[float],
        candidate: Sequence[float],
        names: tuple[str, str] = ("dense", "sparse"),
    ) -> Comparison:
        """Return the comparison of two candidates' rounds from one :func:`interleaved_rounds`."""
        return cls(Spread.of(baseline), Spread.of(candidate), names)

    @property
    def headline(self) -> float:
        """Return the ratio of the two medians (what the tables print as the speed-up)."""
        return self.baseline.median / self.candidate.median

    @property
    def low(self) -> float:
        """Return the ratio's low end: baseline first quartile / candidate third quartile."""
        return self.baseline.q1 / self.candidate.q3

    @property
    def high(self) -> float:
        """Return the ratio's high end: baseline third quartile / candidate first quartile."""
        return self.baseline.q3 / self.candidate.q1

    def problems(self) -> list[str]:
        """Return why the rounds make this ratio unreliable (empty: they agree)."""
        out = [
            f"{name} rounds spread {side.relative:.1%} of their median"
            for name, side in zip(self.names, (self.baseline, self.candidate), strict=True)
            if side.relative > SPREAD_LIMIT
        ]
        claims = not 1 / CLAIM_FACTOR < self.headline < CLAIM_FACTOR
        if claims and self.low < 1.0 < self.high:
            out.append(
                f"the ratio's range over the quartiles ({self.low:.2f}-{self.high:.2f}) spans 1.0"
            )
        return out

    def cell(self) -> str:
        """Return the ratio with its range over the quartiles, e.g. ``2.31x [2.10-2.50]``, and
        a trailing ``!`` when the rounds make it unreliable."""
        mark = " !" if self.problems() else ""
        return f"{self.headline:.2f}x [{self.low:.2f}-{self.high:.2f}]{mark}"


def available_cores() -> int:
    """Return the cores this process may run on (its affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float | None:
    """Return the 1-minute load average (None where the OS keeps none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return os.getloadavg()[0]


def idle_cores(cores: int, load: float) -> int:
    """Return the cores a load average leaves idle: cores minus the load rounded half up."""
    return max(cores - math.floor(load + 0.5), 0)


@dataclass(frozen=True)
class ThreadChoice:
    """The torch thread count a measurement runs with, and the machine state behind it."""

    threads: int
    cores: int
    load: float | None
    requested: bool

    def describe(self) -> str:
        """Return one line saying which thread count was chosen and why."""
        if self.load is None:
            state = f"{self.cores} cores, load average unknown"
        else:
            idle = idle_cores(self.cores, self.load)
            state = f"{self.cores} cores, load average {self.load:.2f} leaves {idle} idle"
        if self.requested:
            return f"threads: {self.threads} (as requested; {state})"
        return (
            f"threads: {self.threads} (chosen: never more than the idle cores, at least 1; "
            f"{state}; pass --threads N to choose)"
        )


def choose_threads(
    requested: int | None = None, *, cores: int | None = None, load: float | None = None
) -> ThreadChoice:
    """Return ``requested`` threads, or by default the idle cores (at least 1).

    Args:
        requested: a thread count the user asked for (kept as asked, even above the idle
            cores; :func:`load_problem` then says so), or None to choose.
        cores: the cores available (default :func:`available_cores`).
        load: the 1-minute load average (default :func:`load_average`, read now).

    Raises:
        ValueError: when ``requested`` is below 1.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be at least 1, got {requested}")
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    if requested is not None:
        return ThreadChoice(requested, cores, load, True)
    # Threads beyond the idle cores share a core with a neighbour: a parallel region then
    # waits a whole scheduler time slice for its slowest thread (issue 22: 35.7 ms on two
    # threads against 0.21 ms on one), which is noise, not the model.
    idle = cores if load is None else idle_cores(cores, load)
    return ThreadChoice(max(idle, 1), cores, load, False)


def own_load_share(threads: int, seconds: float) -> float:
    """Return how much ``threads`` busy threads add to the 1-minute load average after
    ``seconds``: the average is exponentially damped with a 60 s time constant."""
    return threads * (1 - math.exp(-max(seconds, 0.0) / _LOAD_TAU_S))


def load_problem(
    choice: ThreadChoice, load_after: float | None, seconds: float
) -> str | None:
    """Return why the machine's load makes the measurement unreliable, or None.

    Others' load is the busier of the load average before timing and the one after, less what
    this process's own ``choice.threads`` threads added to it over ``seconds``; the measurement
    is unreliable when that leaves fewer idle cores than threads.
    """
    readings = [v for v in (choice.load, load_after) if v is not None]
    if not readings:
        return None
    others = choice.load if choice.load is not None else 0.0
    if load_after is not None:
        others = max(others, load_after - own_load_share(choice.threads, seconds))
    idle = idle_cores(choice.cores, others)
    if choice.threads <= idle:
        return None
    return (
        f"other jobs' load average {others:.2f} on {choice.cores} cores leaves {idle} idle "
        f"for {choice.threads} thread(s)"
    )


def unreliable_line(
    problems: Mapping[str, Sequence[str]], load: str | None = None
) -> str | None:
    """Return one line saying which ratios are unreliable and why, or None when none is.

    Args:
        problems: label of a measurement (``"batch 16"``) → its :meth:`Comparison.problems`.
        load: :func:`load_problem`'s answer for the whole measurement.
    """
    parts = [f"{label}: {'; '.join(why)}" for label, why in problems.items() if why]
    if load is not None:
        parts.append(load)
    if not parts:
        return None
    return (
        f"WARNING: unreliable ratios (limits: a side's interquartile range at most "
        f"{SPREAD_LIMIT:.0%} of its median, no more threads than idle cores): "
        f"{' | '.join(parts)}. Rerun on a quiet machine or with fewer --threads."
    )


class LoadWatch:
    """Chooses the thread count when a measurement starts and judges the load when it ends."""

    def __init__(self, requested: int | None = None, *, set_torch: bool = True) -> None:
        """Choose the threads (see :func:`choose_threads`) and, with ``set_torch``, apply them
        to torch (restored by :meth:`restore`)."""
        self.choice = choose_threads(requested)
        self.started = time.monotonic()
        self._previous = torch.get_num_threads()
        if set_torch:
            torch.set_num_threads(self.choice.threads)

    @property
    def threads(self) -> int:
        """Return the chosen thread count."""
        return self.choice.threads

    def problem(self) -> str | None:
        """Return :func:`load_problem` for the load average now."""
        return load_problem(self.choice, load_average(), time.monotonic() - self.started)

    def restore(self) -> None:
        """Give torch back the thread count it had before."""
        torch.set_num_threads(self._previous)


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
