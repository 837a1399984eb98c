"""Schedules: how a target changes with the training step.

Everything here is a pure function of the step (or a frozen dataclass wrapping one), so the
formulas can be checked by hand and the methods call them instead of re-deriving them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GradualSchedule", "cubic_sparsity", "linear_warmup", "exact_zero_count"]


def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017), eq. 1: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n·Δt))**3``.

    Returns the unstepped sparsity at ``step``: ``initial`` before ``begin``, ``final`` from
    ``end`` on, the cubic in between. ``n·Δt`` is ``end - begin``; when they are equal the
    schedule is a single jump to ``final`` at ``begin``.
    """
    if step < begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class GradualSchedule:
    """The gradual pruning schedule of Zhu & Gupta, stepped every ``frequency`` steps.

    Masks are recomputed at the *update steps* ``begin_step, begin_step + frequency, …`` that are
    ``<= end_step``, and once more at ``end_step`` itself when it is not on that grid, so the final
    sparsity is always reached exactly. Between update steps the sparsity holds its last value.
    Steps count optimizer steps (call ``Sparsifier.step()`` once per optimizer step, not once per
    micro-batch under gradient accumulation).

    Args:
        begin_step: first update step (the sparsity before it is ``initial_sparsity``).
        end_step: step at which the final sparsity is reached; must be ``>= begin_step``.
        frequency: steps between mask updates (Δt); must be positive.
        initial_sparsity: s_i, the sparsity at ``begin_step`` (0 in the study).

    Raises:
        ValueError: with one sentence naming the bad field.
    """

    begin_step: int = 0
    end_step: int = 0
    frequency: int = 1
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        for field in ("begin_step", "end_step", "frequency"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"GradualSchedule.{field} must be an integer, got {value!r}.")
        if self.begin_step < 0:
            raise ValueError(f"GradualSchedule.begin_step must be >= 0, got {self.begin_step}.")
        if self.end_step < self.begin_step:
            raise ValueError(
                f"GradualSchedule.end_step ({self.end_step}) precedes begin_step "
                f"({self.begin_step}); the schedule must end at or after it begins."
            )
        if self.frequency <= 0:
            raise ValueError(f"GradualSchedule.frequency must be positive, got {self.frequency}.")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(
                f"GradualSchedule.initial_sparsity must lie in [0, 1), got {self.initial_sparsity}."
            )

    def is_update_step(self, step: int) -> bool:
        """Returns True when masks are recomputed at ``step``."""
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def last_update_step(self, step: int) -> int | None:
        """Returns the most recent update step ``<= step``, or None before ``begin_step``."""
        if step < self.begin_step:
            return None
        if step >= self.end_step:
            return self.end_step
        return self.begin_step + (step - self.begin_step) // self.frequency * self.frequency

    def sparsity_at(self, step: int, final: float) -> float:
        """Returns the sparsity in force at ``step`` for a layer whose final target is ``final``."""
        update = self.last_update_step(step)
        if update is None:
            return self.initial_sparsity if final > 0 else 0.0
        if final <= 0.0:
            return 0.0
        return cubic_sparsity(update, final, self.begin_step, self.end_step, self.initial_sparsity)


def linear_warmup(step: int, begin: int, end: int) -> float:
    """Returns a regularizer's weight factor: 0 before ``begin``, 1 from ``end``, linear between.

    This is the KL / L0 weight warm-up of the study (its "DKL loss begin / saturate" columns).
    """
    if step < begin:
        return 0.0
    if step >= end:
        return 1.0
    return (step - begin) / (end - begin)


def exact_zero_count(sparsity: float, numel: int) -> int:
    """Returns how many of ``numel`` weights a layer at ``sparsity`` holds at zero: round(s·n).

    Rounds half up (not Python's banker's rounding) so the count is the conventional one.
    """
    return min(numel, int(math.floor(sparsity * numel + 0.5)))
