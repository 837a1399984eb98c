"""Pareto frontiers, dense baselines and the sentences a report says about them: pure functions
over points, with no store, no figure and no I/O.

The study's frontier (as FRONTIERS.md of the reference data computes it): each run's sparsity is
put in the nearest of the study's levels (50, 60, 70, 80, 90, 95, 98%) if it lies within
``tolerance_pp`` percentage points (1 by default), and dropped otherwise; the frontier point of a
technique at a level is its best metric in that bin, with the number of distinct *trained models*
in the bin (a model evaluated at several VD thresholds counts once). Achieved sparsity is used
throughout: VD and L0 only reach the sparsity their regularization happens to give.

:func:`pareto_envelope` is the unbinned alternative: the runs no sparser-and-better run beats.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..methods import catalogue

__all__ = [
    "LEVELS",
    "Frontier",
    "FrontierPoint",
    "Point",
    "Summary",
    "best_at_level_sentence",
    "binned_frontier",
    "dense_baseline",
    "dense_sentence",
    "display_name",
    "format_metric",
    "frontiers",
    "leaders",
    "leaders_sentence",
    "metric_label",
    "nearest_level",
    "normalise",
    "normalise_summaries",
    "off_target",
    "pareto_envelope",
    "points_from_runs",
    "replica_summaries",
    "retraining_sentences",
    "summarise",
]

#: The study's sparsity levels, as fractions.
LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
#: Names kept for code written against them: the catalogue answers these now.
_DEPRECATED = {"SPARSIFIERS": catalogue.sparsifiers, "RETRAINING": catalogue.retraining_kinds}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warnings.warn(f"sparsebench.study.pareto.{name} is deprecated; ask "
                      f"sparsebench.methods.catalogue ({_DEPRECATED[name].__name__}()).",
                      DeprecationWarning, stacklevel=2)
        return tuple(_DEPRECATED[name]())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Point:
    """One evaluated run: ``series`` (technique, or technique plus variant), achieved
    ``sparsity`` (fraction), metric ``value``, and ``train_id`` naming the trained model."""

    series: str
    sparsity: float
    value: float
    train_id: str


@dataclass(frozen=True)
class FrontierPoint:
    """The best point of one series in one sparsity bin: ``level`` (fraction), best ``value``,
    the ``sparsity`` the best run actually has, the ``n`` distinct trained models in the bin and
    the best run's ``train_id``."""

    level: float
    value: float
    sparsity: float
    n: int
    train_id: str


#: One series' frontier: level -> its frontier point (levels without runs are absent).
Frontier = dict[float, FrontierPoint]


@dataclass(frozen=True)
class Summary:
    """Mean, min and max of ``n`` replica values."""

    mean: float
    min: float
    max: float
    n: int


def display_name(series: str) -> str:
    """Returns the readable name of a technique or series ("l0" -> "L0 regularization")."""
    return catalogue.display(series)


def metric_label(metric_name: str) -> str:
    """Returns an axis label for a metric name ("top1" -> "top-1 accuracy (%)")."""
    return {"top1": "top-1 accuracy (%)", "bleu": "BLEU"}.get(metric_name, metric_name)


def sentence_start(text: str) -> str:
    """``text`` with its first letter upper-case and the rest as written ("RigL" stays
    "RigL", where ``str.capitalize`` gives "Rigl")."""
    return text[:1].upper() + text[1:]


def format_metric(value: float, metric_name: str) -> str:
    """Returns a metric for a sentence: top-1 (a fraction) as a percent, BLEU as points, both
    with two decimals ("72.48%", "23.26 BLEU"); a loss or bits per character with three
    ("5.207")."""
    if metric_name == "top1":
        return f"{100.0 * value:.2f}%"
    if metric_name == "bleu":
        return f"{value:.2f} BLEU"
    if metric_name in ("loss", "bpc"):
        return f"{value:.3f}"
    return f"{value:.4g}"


def _pct(level: float) -> str:
    return f"{100.0 * level:g}%"


def points_from_runs(
    runs: Iterable[Any],
    *,
    series: Callable[[Any], str] = lambda run: run.label,
    statuses: Sequence[str] = ("finished",),
) -> list[Point]:
    """Returns the points of the runs (store :class:`~sparsebench.study.store.Run` objects or
    anything with the same attributes) that have a status in ``statuses``, a metric and an
    achieved sparsity; ``series`` names each point's series (technique plus variant)."""
    return [
        Point(series(run), float(run.achieved_sparsity), float(run.metric_value), run.train_id)
        for run in runs
        if run.status in statuses and run.metric_value is not None
        and run.achieved_sparsity is not None and math.isfinite(run.metric_value)
    ]


def nearest_level(
    sparsity: float, levels: Sequence[float] = LEVELS, tolerance_pp: float = 1.0
) -> float | None:
    """Returns the level nearest to ``sparsity`` if within ``tolerance_pp`` percentage points,
    else None. Distances are taken in rounded percent, as the study's script does, so that
    0.6 * 100 = 60.000000000000007 does not move a point out of a bin."""
    percent = 100.0 * sparsity
    level = min(levels, key=lambda lv: abs(round(100.0 * lv, 9) - percent))
    return level if abs(round(100.0 * level, 9) - percent) <= tolerance_pp + 1e-9 else None


def binned_frontier(
    points: Iterable[Point],
    *,
    levels: Sequence[float] = LEVELS,
    tolerance_pp: float = 1.0,
    higher_is_better: bool = True,
) -> Frontier:
    """Returns the study's frontier of one series: per level, the best point within
    ``tolerance_pp`` of it and the count of distinct trained models in that bin."""
    best: dict[float, Point] = {}
    models: dict[float, set[str]] = defaultdict(set)
    sign = 1.0 if higher_is_better else -1.0
    for point in points:
        level = nearest_level(point.sparsity, levels, tolerance_pp)
        if level is None:
            continue
        models[level].add(point.train_id)
        if level not in best or sign * point.value > sign * best[level].value:
            best[level] = point
    return {
        level: FrontierPoint(level, p.value, p.sparsity, len(models[level]), p.train_id)
        for level, p in sorted(best.items())
    }


def frontiers(
    points: Iterable[Point],
    *,
    levels: Sequence[float] = LEVELS,
    tolerance_pp: float = 1.0,
    higher_is_better: bool = True,
) -> dict[str, Frontier]:
    """Returns :func:`binned_frontier` for every series in ``points``, by series name."""
    by_series: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        by_series[point.series].append(point)
    return {
        name: binned_frontier(pts, levels=levels, tolerance_pp=tolerance_pp,
                              higher_is_better=higher_is_better)
        for name, pts in by_series.items()
    }


def pareto_envelope(points: Iterable[Point], *, higher_is_better: bool = True) -> list[Point]:
    """Returns the non-dominated points, by increasing sparsity: those that no other point
    matches or beats on both sparsity (higher) and metric (better)."""
    sign = 1.0 if higher_is_better else -1.0
    envelope: list[Point] = []
    best_so_far = -math.inf
    # Walk from the sparsest point down; a point survives if it beats every sparser one.
    for point in sorted(points, key=lambda p: (-p.sparsity, -sign * p.value)):
        if sign * point.value > best_so_far:
            envelope.append(point)
            best_so_far = sign * point.value
    return envelope[::-1]


def summarise(values: Iterable[float]) -> Summary:
    """Returns mean, min, max and count of ``values``.

    Raises:
        ValueError: when there are no values.
    """
    values = list(values)
    if not values:
        raise ValueError("cannot summarise an empty set of values.")
    return Summary(sum(values) / len(values), min(values), max(values), len(values))


def dense_baseline(runs: Iterable[Any]) -> Summary | None:
    """Returns the summary over replicas of the dense runs among ``runs`` (the dense baseline,
    finished, with a metric), or None when there are none."""
    values = [run.metric_value for run in runs
              if run.technique == catalogue.DENSE and run.status == "finished"
              and run.metric_value is not None]
    return summarise(values) if values else None


def replica_summaries(
    points: Iterable[Point], *, levels: Sequence[float] = LEVELS, tolerance_pp: float = 1.0
) -> dict[str, dict[float, Summary]]:
    """Returns, per series and level, mean/min/max over the replica values in that bin (for the
    scratch / lottery comparison with min/max bars)."""
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        level = nearest_level(point.sparsity, levels, tolerance_pp)
        if level is not None:
            values[point.series][level].append(point.value)
    return {
        series: {level: summarise(v) for level, v in sorted(by_level.items())}
        for series, by_level in values.items()
    }


def normalise(frontier: Frontier, baseline: Summary | float) -> Frontier:
    """Returns ``frontier`` with each value divided by the dense baseline's mean (or a number),
    so frontiers of different tasks compare as "fraction of their own dense model"."""
    scale = baseline.mean if isinstance(baseline, Summary) else float(baseline)
    if scale == 0:
        raise ValueError("cannot normalise by a dense baseline of 0.")
    return {level: replace(fp, value=fp.value / scale) for level, fp in frontier.items()}


def normalise_summaries(
    summaries: Mapping[float, Summary], baseline: Summary | float
) -> dict[float, Summary]:
    """Returns replica summaries divided by the dense baseline's mean (or a number)."""
    scale = baseline.mean if isinstance(baseline, Summary) else float(baseline)
    return {level: Summary(s.mean / scale, s.min / scale, s.max / scale, s.n)
            for level, s in summaries.items()}


def leaders(
    table: Mapping[str, Frontier], level: float, *, higher_is_better: bool = True
) -> list[tuple[str, FrontierPoint]]:
    """Returns the series with a point at ``level``, best first."""
    cells = [(name, f[level]) for name, f in table.items() if level in f]
    return sorted(cells, key=lambda c: c[1].value, reverse=higher_is_better)


def best_at_level_sentence(
    table: Mapping[str, Frontier], level: float, metric_name: str, *, higher_is_better: bool = True
) -> str:
    """Returns a sentence naming the best frontier point at ``level`` and the others', e.g.
    "At 90% sparsity, magnitude pruning has the best frontier point: 23.26 BLEU, vs L0
    regularization 22.97 BLEU, ...". Ties are named as ties."""
    ranked = leaders(table, level, higher_is_better=higher_is_better)
    if not ranked:
        return f"No technique has a run within the {_pct(level)} sparsity bin."
    (name, top), rest = ranked[0], ranked[1:]
    tied = [n for n, fp in rest if fp.value == top.value]
    who = " and ".join([display_name(name)] + [display_name(n) for n in tied])
    verb = "share" if tied else "has"
    sentence = (f"At {_pct(level)} sparsity, {who} {verb} the best frontier point: "
                f"{format_metric(top.value, metric_name)}")
    others = [f"{display_name(n)} {format_metric(fp.value, metric_name)}"
              for n, fp in rest if n not in tied]
    return sentence + (", vs " + ", ".join(others) if others else "") + "."


def leaders_sentence(
    table: Mapping[str, Frontier], levels: Sequence[float] = LEVELS, *,
    higher_is_better: bool = True,
) -> str:
    """Returns which series leads at which levels, e.g. "Magnitude pruning has the best
    frontier point at 80, 90 and 95% sparsity; L0 regularization at 50, 60, 70 and 98%."."""
    won: dict[str, list[float]] = defaultdict(list)
    for level in levels:
        ranked = leaders(table, level, higher_is_better=higher_is_better)
        if ranked:
            won[ranked[0][0]].append(level)
    if not won:
        return "No technique has a run at any of the study's sparsity levels."

    def _levels(lvs: list[float]) -> str:
        texts = [f"{100 * lv:g}" for lv in lvs]
        joined = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]
        return joined + "%"

    ordered = sorted(won.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    first, *others = ordered
    text = (f"{sentence_start(display_name(first[0]))} has the best frontier point at "
            f"{_levels(first[1])} sparsity")
    text += "".join(f"; {display_name(n)} at {_levels(lvs)}" for n, lvs in others)
    return text + "."


def dense_sentence(baseline: Summary, metric_name: str) -> str:
    """Returns e.g. "The dense baseline reaches 27.29 BLEU (mean of 5 runs, 27.12 BLEU to
    27.52 BLEU)."."""
    def fmt(v: float) -> str:
        return format_metric(v, metric_name)
    runs = "run" if baseline.n == 1 else "runs"
    return (f"The dense baseline reaches {fmt(baseline.mean)} (mean of {baseline.n} {runs}, "
            f"{fmt(baseline.min)} to {fmt(baseline.max)}).")


def retraining_sentences(
    summaries: Mapping[str, Mapping[float, Summary]],
    reference: Frontier,
    metric_name: str,
    *,
    reference_name: str | None = None,
    higher_is_better: bool = True,
) -> list[str]:
    """Returns sentences comparing retraining series (best replica per level) with the
    ``reference`` frontier: where any reaches it, and the best one at each shared level.
    Where that best is not the plain retraining kind (scratch-e), its mean follows: it is the
    comparison at the pruning run's own step budget (scratch-b trains twice as long). A
    lower-is-better metric (a loss) reads "worse than" / "better than" rather than "below" /
    "above". ``reference_name`` defaults to the catalogue's reference technique."""
    if reference_name is None:
        reference_name = catalogue.display(catalogue.reference())
    plain = catalogue.plain_retraining()
    sign = 1.0 if higher_is_better else -1.0
    sentences, reached = [], []

    def best_of(summary: Summary) -> float:
        return summary.max if higher_is_better else summary.min

    def against(value: float, ref: float) -> str:
        gap = sign * (ref - value)
        if higher_is_better:
            return (f"{_gap(gap, metric_name)} below" if gap > 0
                    else f"{_gap(-gap, metric_name)} above")
        return (f"{_gap(gap, metric_name)} worse than" if gap > 0
                else f"{_gap(-gap, metric_name)} better than")

    for level, ref in sorted(reference.items()):
        cells = [(name, s[level]) for name, s in summaries.items() if level in s]
        if not cells:
            continue
        name, best = max(cells, key=lambda c: sign * best_of(c[1]))
        if sign * (ref.value - best_of(best)) <= 0:
            reached.append(level)
        sentences.append(
            f"At {_pct(level)}, the best retrained run is {display_name(name)} "
            f"({format_metric(best_of(best), metric_name)}, best of {best.n}), "
            f"{against(best_of(best), ref.value)} the {reference_name} frontier "
            f"({format_metric(ref.value, metric_name)})."
        )
        same_steps = summaries.get(plain, {}).get(level) if plain else None
        if same_steps is not None and name != plain:
            sentences.append(
                f"At {_pct(level)}, {plain}, with the pruning run's steps, averages "
                f"{format_metric(same_steps.mean, metric_name)} over {same_steps.n}: "
                f"{against(same_steps.mean, ref.value)} the frontier.")
    if sentences:
        head = (f"No retraining run reaches the {reference_name} frontier at any level."
                if not reached else
                f"Retraining reaches the {reference_name} frontier at "
                + ", ".join(_pct(lv) for lv in reached) + ".")
        sentences.insert(0, head)
        for kind in catalogue.entries(catalogue.RETRAINING):
            # A series name may carry the kind in its variant (published "augmented (scratch-b,
            # ...)"), so a substring marks it.
            if kind.steps_factor != 1 and any(kind.name in series for series in summaries):
                sentences.append(f"The series marked {kind.name} train {_times(kind.steps_factor)} "
                                 "the steps of the pruning run they retrain; the others train "
                                 "as many.")
    return sentences


def _times(factor: float) -> str:
    return "twice" if factor == 2 else f"{factor:g} times"


def _gap(value: float, metric_name: str) -> str:
    if metric_name == "top1":
        return f"{100.0 * value:.2f} points"
    if metric_name == "bleu":
        return f"{value:.2f} BLEU"
    if metric_name == "loss":
        return f"{value:.3f} nats"
    return f"{value:.4g}"


def off_target(runs: Iterable[Any], tolerance: float = 0.01) -> list[Any]:
    """Returns the runs whose achieved sparsity misses their target by more than ``tolerance``
    (a fraction: 0.01 = 1 pp), for the report to flag."""
    return [run for run in runs
            if run.target_sparsity is not None and run.achieved_sparsity is not None
            and abs(run.achieved_sparsity - run.target_sparsity) > tolerance]
