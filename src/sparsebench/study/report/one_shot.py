"""The report's one-shot section for our runs: how far pruning a trained model once, without
training, is from pruning while training, at each sparsity.

Every one-shot technique of the catalogue (its ``ONE_SHOT`` role) prunes each trained dense
model of the scope once per target, and a fine-tuned variant trains a few steps more with the
mask fixed (``sparsebench one-shot``). Each (technique, variant, level) is summarised over the
dense models it pruned, and its mean is set beside the best run at that level of any technique
that prunes while it trains at the study's budget (the answers' peers: the sparsifiers, no
variant). A gap no larger than the seed spread of the scope's repeated settings is a tie, as
in the answers. In the headline metric and, where the runs carry one beside it, in test loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ...methods import catalogue
from .. import pareto as P
from ..answers import (
    Gap,
    amount,
    compared_techniques,
    gap_verdict,
    levels_text,
    pair_sentence,
    quantity,
)
from ..figures import series_order
from ..our_figures import one_shot_figure
from ..seeds import SeedSpread, seed_spread
from ..store import Run
from .loss import LOSS, with_test_loss
from .shared import ReportContext, Scope, Section, Table, metric_of

__all__ = ["UNRANKABLE", "OneShotGap", "one_shot_gaps", "one_shot_section"]


@dataclass(frozen=True)
class OneShotGap:
    """One one-shot series at one ``level`` against the best joint run there: ``pruned``
    summarises the series over the dense models it pruned; ``gap`` is how much better its mean
    is than ``joint_value`` (the metric's units, negative when worse), judged against the
    seed spread in ``verdict``."""

    series: str
    level: float
    pruned: P.Summary
    joint: str
    joint_value: float
    gap: float
    verdict: str
    #: The series of the same rows without fine-tuning, for a fine-tuned series; None else.
    untuned: str | None = None


#: The verdict of a level where the seed spread is as large as the best joint run's own score
#: (BLEU near zero at high sparsity): a model scoring nothing would pass for level there.
UNRANKABLE = "unrankable"


def one_shot_gaps(runs: Sequence[Run], higher: bool, *, tolerance_pp: float = 1.0
                  ) -> tuple[list[OneShotGap], SeedSpread | None, dict[str, int]]:
    """Returns every one-shot series' mean against the best joint run at each level both
    reach, in the runs' ``metric_value``; the seed spread the verdicts are judged against; and
    per series, its rows left out for a non-finite value (a collapsed model), which the mean
    does not hold. Series in the catalogue's order, levels ascending; a series is a technique
    and variant, and also its layer selection and calibration batches where the scope's rows
    differ in them. Each level's ``pruned.n`` counts the dense models pruned there."""
    finished = [r for r in runs if r.status == "finished"]
    one_shot = {t.name for t in catalogue.entries(catalogue.ONE_SHOT)}
    rows = [r for r in finished if r.technique in one_shot]
    name = _series_names(rows)
    dropped: dict[str, int] = {}
    for r in rows:
        if r.metric_value is None or not math.isfinite(r.metric_value):
            dropped[name(r)] = dropped.get(name(r), 0) + 1
    # One value per (series, level, dense model): a dense model pruned twice alike (a
    # calibration set of another size, already apart in the series name) is not two seeds.
    by_source = {(name(r), r.hyperparameters.get("source", r.id), r.target_sparsity): r
                 for r in rows}
    untuned = {name(r): name(replace(r, variant="")) for r in rows if r.variant}
    pruned = P.replica_summaries(P.points_from_runs(by_source.values(), series=name),
                                 tolerance_pp=tolerance_pp)
    joint = P.frontiers(
        P.points_from_runs([r for r in finished
                            if r.technique in compared_techniques() and not r.variant],
                           series=lambda r: r.technique),
        tolerance_pp=tolerance_pp, higher_is_better=higher)
    spread = seed_spread(finished)
    sign = 1.0 if higher else -1.0
    gaps = []
    for series in sorted(pruned, key=series_order):
        for level, summary in pruned[series].items():
            ranked = P.leaders(joint, level, higher_is_better=higher)
            if not ranked:
                continue
            best, point = ranked[0]
            gap = sign * (summary.mean - point.value)
            # Scores floor at zero (BLEU, top-1); a spread that large ranks nothing there.
            blind = higher and spread is not None and point.value <= spread.value
            gaps.append(OneShotGap(series, level, summary, best, point.value, gap,
                                   UNRANKABLE if blind else gap_verdict(gap, spread),
                                   untuned.get(series)))
    return gaps, spread, dropped


def _series_names(rows: Sequence[Run]):
    """Returns run -> series name: the run's label, with the parts of its definition the
    scope's one-shot rows differ in (layer selection, calibration batches) where they do."""
    def definition(run: Run) -> tuple:
        hp = run.hyperparameters
        return (str(hp.get("include") or ""), str(hp.get("exclude") or ""),
                hp.get("calibration_batches"))

    differ = [len({definition(r)[i] for r in rows}) > 1 for i in range(3)]

    def name(run: Run) -> str:
        include, exclude, batches = definition(run)
        parts = [text for text, shown in ((f"include {include or 'default'}", differ[0]),
                                          (f"exclude {exclude or 'none'}", differ[1]),
                                          (f"{batches} calibration batches", differ[2]))
                 if shown]
        return run.label + (f" [{', '.join(parts)}]" if parts else "")

    return name


def one_shot_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The one-shot series against the best joint run at each level, or None when the scope
    has no one-shot run at a level a joint run reaches."""
    if scope.source != "ours":
        return None
    runs = [r for r in ctx.scope_runs(scope) if r.status == "finished"]
    metric, higher = metric_of(runs)
    measures = [(metric, higher, runs)]
    if metric not in ("", LOSS):
        measures.append((LOSS, False, with_test_loss(runs)))
    sentences, rows, panels = [], [], []
    for measure, better_high, measured in measures:
        gaps, spread, dropped = one_shot_gaps(measured, better_high,
                                              tolerance_pp=ctx.tolerance_pp)
        if not gaps:
            continue
        prefix = "In test loss, " if measure == LOSS else ""
        sentences += [P.sentence_start(prefix + s)
                      for s in _sentences(gaps, measure, spread, dropped)]
        rows += [_row(g, measure, spread) for g in gaps]
        dense = P.dense_baseline(r for r in measured if not r.variant)
        panels.append((measure, better_high, gaps, dense))
    if not panels:
        return None
    name = f"{scope.key}_one_shot.png"
    one_shot_figure(
        [(measure, better_high,
          _by_series(gaps), {g.level: (g.joint, g.joint_value) for g in gaps}, dense)
         for measure, better_high, gaps, dense in panels],
        ctx.out_dir / name,
        title=f"{scope.title}: pruning a trained model once, against pruning while training")
    return Section(
        id=f"{scope.key}-one-shot",
        title=f"{scope.title}: pruning once without training",
        question="How far is one-shot pruning of a trained model (no training; then a short "
                 "fine-tuning with the mask fixed) from pruning while training, at each "
                 "sparsity?",
        sentences=sentences,
        figures=[(name, "each one-shot method's mean over the dense models it pruned, with "
                        "their range, beside the best run of any technique that prunes while "
                        "it trains, and the dense models' mean")],
        tables=[Table(f"{scope.key}_one_shot",
                      ["measure", "one-shot method", "sparsity %", "dense models", "mean",
                       "min", "max", "best joint run", "its value", "one-shot better by",
                       "seed spread", "verdict"], rows,
                      "Each one-shot method over the trained dense models it pruned, against "
                      "the best run at that sparsity of the techniques that prune while they "
                      "train (at the study's budget); 'level' when the gap is no larger than "
                      "the seed spread.")])


def _by_series(gaps: Sequence[OneShotGap]) -> dict[str, dict[float, P.Summary]]:
    out: dict[str, dict[float, P.Summary]] = {}
    for g in gaps:
        out.setdefault(g.series, {})[g.level] = g.pruned
    return out


def _row(gap: OneShotGap, measure: str, spread: SeedSpread | None) -> list[str]:
    values = [gap.pruned.mean, gap.pruned.min, gap.pruned.max]
    return ["test loss" if measure == LOSS else measure, P.display_name(gap.series),
            f"{100 * gap.level:g}", str(gap.pruned.n), *(quantity(v, measure) for v in values),
            P.display_name(gap.joint), quantity(gap.joint_value, measure),
            quantity(gap.gap, measure), quantity(spread.value, measure) if spread else "–",
            gap.verdict]


def _sentences(gaps: Sequence[OneShotGap], measure: str, spread: SeedSpread | None,
               dropped: dict[str, int]) -> list[str]:
    """The comparison of each series with the best joint run, the levels this measure cannot
    rank, the highest level at which pruning without training keeps up, and what fine-tuning
    changes."""
    by_series: dict[str, list[OneShotGap]] = {}
    for g in gaps:
        by_series.setdefault(g.series, []).append(g)
    sentences = []
    for series, cells in by_series.items():
        counts = sorted({c.pruned.n for c in cells})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        name = P.display_name(series)
        name = (name[:-1] + "; " if name.endswith(")") else name + " (") + (
            "one dense model)" if n == "1" else f"mean of {n} dense models)")
        ranked = [Gap(c.level, c.series, c.joint, c.gap, c.verdict) for c in cells
                  if c.verdict != UNRANKABLE]
        if ranked:
            sentences.append(pair_sentence(name, "the best run that prunes while it trains",
                                           ranked, measure, spread))
        if dropped.get(series):
            sentences.append(f"{dropped[series]} {P.display_name(series)} row(s) have no finite "
                             f"value in this measure and are left out of its means")
    blind = sorted({g.level for g in gaps if g.verdict == UNRANKABLE})
    if blind and spread is not None:
        sentences.append(
            f"the seed spread ({amount(spread.value, measure)}) is as large as the best joint "
            f"run's own score at {levels_text(blind)}, so there even a score of zero would count "
            f"as level: this measure cannot rank one-shot pruning at "
            f"{'that level' if len(blind) == 1 else 'those levels'}")
    untrained = [g for g in gaps if g.untuned is None and g.verdict != UNRANKABLE]
    keeping = [g for g in untrained if g.verdict != "behind"]
    if keeping:
        levels = sorted({g.level for g in keeping})
        best = max((g for g in keeping if g.level == levels[-1]), key=lambda g: g.gap)
        text = (f"without any training, a one-shot method is level with or ahead of pruning "
                f"while training at {levels_text(levels)}; at {100 * best.level:g}% the best "
                f"is {P.display_name(best.series)} ({best.verdict}{_by(best, measure)})")
        above = sorted({g.level for g in untrained if g.level > best.level})
        if above:
            text += f"; every one-shot method is behind at {levels_text(above)}"
        sentences.append(text)
    elif untrained:
        sentences.append("without any training, every one-shot method is behind pruning while "
                         "training at every sparsity this measure can rank")
    sentences += _fine_tuning_sentences(gaps, measure)
    return [s if s.endswith(".") else s + "." for s in sentences]


def _by(gap: OneShotGap, measure: str) -> str:
    return "" if gap.verdict in ("level", UNRANKABLE) else f" by {amount(gap.gap, measure)}"


def _fine_tuning_sentences(gaps: Sequence[OneShotGap], measure: str) -> list[str]:
    """For each fine-tuned series whose rows were also kept without fine-tuning: how the mean
    moves, level by level."""
    cells = {(g.series, g.level): g for g in gaps}
    out = []
    for series in dict.fromkeys(g.series for g in gaps if g.untuned is not None):
        pairs = [(cells[(g.untuned, g.level)], g) for g in gaps
                 if g.series == series and (g.untuned, g.level) in cells]
        if not pairs:
            continue
        moves = [f"{'+' if after.gap >= before.gap else '−'}"
                 f"{amount(after.gap - before.gap, measure)} at {100 * after.level:g}% "
                 + (f"(then {after.verdict}{_by(after, measure)} against the best joint run)"
                    if after.verdict != UNRANKABLE else "(not rankable against the joint runs)")
                 for before, after in pairs]
        out.append(f"{P.display_name(series)} against {P.display_name(pairs[0][0].series)} "
                   f"(+ is better): " + ", ".join(moves))
    return out
