"""Does the training budget explain where our study disagrees with the paper? (issue 28)

The budget sweep trains the same arms at several step budgets with several seeds each
(``sweeps/fmnist-resnet-budget-*.yaml``). This module reads its finished runs and measures, at
each budget and target sparsity, each arm's gap to magnitude pruning:

- the magnitude reference is the setting of the best magnitude run by validation top-1 (the run
  phase 2 retrains), over all its seeds, so no comparison rests on one seed;
- random pruning counts with its best setting by mean validation top-1;
- scratch-e, lottery and scratch-b count the runs retrained from that very reference run (a
  scratch-b run trains twice its budget's steps and counts at its budget);
- a gap is ``mean(arm) - mean(magnitude)``, in top-1 points and in test loss (nats), and it is
  decisive only when it exceeds the seed spread: the wider of the two sides' ranges over their
  seeds (the rule the seed section of the report uses).

Everything here is pure: runs in, numbers and sentences out; the report draws them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..methods import catalogue
from .pareto import Summary, summarise
from .store import Run

__all__ = ["BudgetGap", "budget_gaps", "budget_of", "compared", "dense_by_budget", "gap_sentence",
           "paper_gaps"]

MEASURES = ("top1", "loss")


def _pruning_arms() -> list[str]:
    """The other techniques pruning to the same targets: each counts at its best setting."""
    return [t.name for t in catalogue.entries(catalogue.SPARSIFIER)
            if t.takes_target and t.name != catalogue.reference()]


def _retraining_arms() -> list[str]:
    """The retraining kinds, the source's step budget first (scratch-e, lottery, ...), those
    training longer after: each counts on the masks of the reference's best-by-valid run."""
    kinds = catalogue.entries(catalogue.RETRAINING)
    return [t.name for t in sorted(kinds, key=lambda t: t.steps_factor)]


def compared() -> list[str]:
    """Returns the arms set against magnitude pruning, in the order the report shows them."""
    return [*_pruning_arms(), *_retraining_arms()]


def budget_of(run: Run) -> int | None:
    """Returns the step budget a finished run belongs to (scratch-b: half its own steps)."""
    steps = (run.config.get("run") or {}).get("steps")
    if steps is None:
        return None
    technique = catalogue.find(run.technique)
    factor = technique.steps_factor if technique is not None else 1.0
    return int(round(int(steps) / factor))


def _value(run: Run, measure: str, split: str = "test") -> float | None:
    value = (run.metrics.get(split) or {}).get(measure)
    return None if value is None else float(value)


def _setting(run: Run) -> str:
    return json.dumps({k: v for k, v in run.hyperparameters.items() if k != "source"},
                      sort_keys=True)


@dataclass(frozen=True)
class BudgetGap:
    """One arm against magnitude pruning at one budget, sparsity and measure.

    ``arm`` and ``reference`` summarise the test values over seeds (top-1 as a fraction, loss
    in nats); ``gap`` is their mean difference, arm minus magnitude, in points for top-1 (x100)
    and nats for loss; ``spread`` the wider of the two ranges in the same unit.
    """

    comparison: str
    budget: int
    target: float
    measure: str
    arm: Summary
    reference: Summary

    @property
    def scale(self) -> float:
        return 100.0 if self.measure == "top1" else 1.0

    @property
    def gap(self) -> float:
        return self.scale * (self.arm.mean - self.reference.mean)

    @property
    def spread(self) -> float:
        return self.scale * max(self.arm.max - self.arm.min,
                                self.reference.max - self.reference.min)

    @property
    def judged(self) -> bool:
        """True when both sides have at least two seeds, so that a spread exists to judge by."""
        return self.arm.n >= 2 and self.reference.n >= 2

    @property
    def decisive(self) -> bool:
        """True when the gap is larger than the seed spread (else the two are a tie; a gap
        equal to the spread, to float rounding, is a tie)."""
        return self.judged and abs(self.gap) > self.spread + 1e-9

    @property
    def arm_ahead(self) -> bool:
        """True when the arm does better than magnitude pruning (higher top-1, lower loss)."""
        return self.gap > 0 if self.measure == "top1" else self.gap < 0


def _finished(runs: Iterable[Run]) -> list[Run]:
    return [r for r in runs if r.status == "finished" and r.source == "ours"
            and budget_of(r) is not None]


def _best_setting(runs: Sequence[Run]) -> list[Run]:
    """Returns the runs of the setting with the best mean validation top-1 (ties: first)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if _value(run, "top1", "valid") is not None:
            groups.setdefault(_setting(run), []).append(run)
    if not groups:
        return []
    return max(groups.values(),
               key=lambda g: sum(_value(r, "top1", "valid") for r in g) / len(g))


def _summary(runs: Sequence[Run], measure: str) -> Summary | None:
    values = [v for r in runs if (v := _value(r, measure)) is not None]
    return summarise(values) if values and len(values) == len(runs) else None


def budget_gaps(runs: Iterable[Run]) -> list[BudgetGap]:
    """Returns every arm's gap to magnitude pruning, per budget, target and measure, for the
    finished runs of one task (in budget, target, arm, measure order)."""
    runs = _finished(runs)
    cells: dict[tuple[int, float], list[Run]] = {}
    for run in runs:
        if run.target_sparsity is not None:
            cells.setdefault((budget_of(run), run.target_sparsity), []).append(run)
    gaps = []
    for (budget, target), cell in sorted(cells.items()):
        magnitude = [r for r in cell if r.technique == catalogue.reference()]
        scored = [r for r in magnitude if _value(r, "top1", "valid") is not None]
        if not scored:
            continue
        source = max(scored, key=lambda r: _value(r, "top1", "valid"))
        reference = [r for r in magnitude if _setting(r) == _setting(source)]
        arms = {t: _best_setting([r for r in cell if r.technique == t]) for t in _pruning_arms()}
        for kind in _retraining_arms():
            arms[kind] = [r for r in cell if r.technique == kind
                          and r.hyperparameters.get("source") == source.id]
        for comparison in compared():
            for measure in MEASURES:
                arm = _summary(arms[comparison], measure) if arms[comparison] else None
                ref = _summary(reference, measure)
                if arm is not None and ref is not None:
                    gaps.append(BudgetGap(comparison, budget, target, measure, arm, ref))
    return gaps


def dense_by_budget(runs: Iterable[Run], measure: str = "top1") -> dict[int, Summary]:
    """Returns the dense baseline's test ``measure`` over seeds at each budget."""
    by_budget: dict[int, list[Run]] = {}
    for run in _finished(runs):
        if run.technique == catalogue.DENSE and not run.variant:
            by_budget.setdefault(budget_of(run), []).append(run)
    return {b: s for b, group in sorted(by_budget.items())
            if (s := _summary(group, measure)) is not None}


def paper_gaps(published: Iterable[Run], target: float, family: str = "resnet50"
               ) -> dict[str, float]:
    """Returns the study's own gap to magnitude pruning at ``target``, in top-1 points: each
    technique's best published run at that target minus magnitude pruning's best (the study's
    frontier points, at its converged budget)."""
    best: dict[str, float] = {}
    for run in published:
        if (run.source == "published" and run.model_family == family
                and run.target_sparsity is not None and abs(run.target_sparsity - target) < 1e-9
                and run.metric_value is not None):
            best[run.technique] = max(best.get(run.technique, -1.0), run.metric_value)
    reference = catalogue.reference()
    if reference not in best:
        return {}
    return {k: 100.0 * (best[k] - best[reference]) for k in compared() if k in best}


def _unit(measure: str, value: float) -> str:
    return f"{value:.1f} points" if measure == "top1" else f"{value:.3f} nats"


def gap_sentence(gaps: Sequence[BudgetGap]) -> str:
    """Returns one sentence on one comparison at one target and measure across budgets: the gap
    at each budget, whether it exceeds the seed spread there, and whether it shrinks, vanishes,
    reverses, grows or holds as the budget grows.

    Raises:
        ValueError: for gaps of several comparisons, targets or measures, or none.
    """
    if not gaps or len({(g.comparison, g.target, g.measure) for g in gaps}) != 1:
        raise ValueError("gap_sentence takes the gaps of one comparison, target and measure.")
    gaps = sorted(gaps, key=lambda g: g.budget)
    where = "top-1" if gaps[0].measure == "top1" else "test loss"
    parts = []
    for g in gaps:
        side = "ahead" if g.arm_ahead else "behind"
        if not g.judged:
            verdict = f"{min(g.arm.n, g.reference.n)} seed: no spread to judge by yet"
        else:
            verdict = (f"seed spread {_unit(g.measure, g.spread)}: "
                       + ("decisive" if g.decisive else "a tie"))
        parts.append(f"{side} by {_unit(g.measure, abs(g.gap))} at {g.budget:,} steps "
                     f"({verdict})")
    arm = catalogue.get(gaps[0].comparison).in_sentence
    reference = catalogue.display(catalogue.reference())
    return (f"{arm[:1].upper() + arm[1:]} against {reference} at "
            f"{100 * gaps[0].target:g}%, {where}: " + "; ".join(parts) + f"; {_trend(gaps)}.")


def _trend(gaps: Sequence[BudgetGap]) -> str:
    """Returns how a gap moves from the smallest to the largest budget, between budgets whose
    gap has a seed spread on both sides (gaps sorted by budget)."""
    judged = [g for g in gaps if g.judged]
    if len(judged) < 2:
        return ("one budget so far" if len(gaps) == 1 else
                "no trend yet: fewer than two budgets with two seeds a side")
    first, last = judged[0], judged[-1]
    if first.decisive and last.decisive and first.arm_ahead != last.arm_ahead:
        return "it reverses as the budget grows"
    if first.decisive and not last.decisive:
        return "it vanishes as the budget grows"
    if abs(last.gap) < abs(first.gap):
        return "it shrinks as the budget grows"
    if abs(last.gap) > abs(first.gap):
        return "it grows with the budget"
    return "it holds"

