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

from collections.abc import Sequence
from dataclasses import dataclass

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

__all__ = ["OneShotGap", "one_shot_gaps", "one_shot_section"]


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


def one_shot_gaps(runs: Sequence[Run], higher: bool, *, tolerance_pp: float = 1.0
                  ) -> tuple[list[OneShotGap], SeedSpread | None]:
    """Returns every one-shot series' mean against the best joint run at each level both
    reach, in the runs' ``metric_value``, and the seed spread the verdicts are judged
    against. Series in the catalogue's order, levels ascending."""
    finished = [r for r in runs if r.status == "finished"]
    one_shot = {t.name for t in catalogue.entries(catalogue.ONE_SHOT)}
    pruned = P.replica_summaries(
        P.points_from_runs([r for r in finished if r.technique in one_shot]),
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
            gaps.append(OneShotGap(series, level, summary, best, point.value, gap,
                                   gap_verdict(gap, spread)))
    return gaps, spread


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
        gaps, spread = one_shot_gaps(measured, better_high, tolerance_pp=ctx.tolerance_pp)
        if not gaps:
            continue
        prefix = "In test loss, " if measure == LOSS else ""
        sentences += [P.sentence_start(prefix + s)
                      for s in _sentences(gaps, measure, better_high, spread)]
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


def _sentences(gaps: Sequence[OneShotGap], measure: str, higher: bool,
               spread: SeedSpread | None) -> list[str]:
    """The comparison of each series with the best joint run, the highest level at which
    pruning without training keeps up, and what fine-tuning changes."""
    by_series: dict[str, list[OneShotGap]] = {}
    for g in gaps:
        by_series.setdefault(g.series, []).append(g)
    sentences = []
    for series, cells in by_series.items():
        n = max(c.pruned.n for c in cells)
        name = f"{P.display_name(series)} ({'one dense model' if n == 1 else f'mean of {n}'})"
        sentences.append(pair_sentence(
            name, "the best run that prunes while it trains",
            [Gap(c.level, c.series, c.joint, c.gap, c.verdict) for c in cells], measure, spread))
    untrained = [g for g in gaps if g.series == g.series.split(" ", 1)[0]]
    # Where the seed spread exceeds the best joint run's own score (BLEU near zero at high
    # sparsity), a model scoring nothing would pass for level: no ranking can be read there.
    blind = sorted({g.level for g in gaps if higher and spread is not None
                    and g.joint_value <= spread.value})
    if blind:
        sentences.append(
            f"the seed spread ({amount(spread.value, measure)}) is as large as the best joint "
            f"run's own score at {levels_text(blind)}, so there even a score of zero counts "
            f"as level: this measure cannot rank one-shot pruning at "
            f"{'that level' if len(blind) == 1 else 'those levels'}")
    keeping = [g for g in untrained if g.verdict != "behind" and g.level not in blind]
    if keeping:
        levels = sorted({g.level for g in keeping})
        best = max((g for g in keeping if g.level == levels[-1]), key=lambda g: g.gap)
        text = (f"without any training, a one-shot method is level with or ahead of pruning "
                f"while training at {levels_text(levels)}; at {100 * best.level:g}% the best "
                f"is {P.display_name(best.series)} ({best.verdict}{_by(best, measure)})")
        above = sorted({g.level for g in untrained if g.level > best.level} - set(blind))
        if above:
            text += f"; every one-shot method is behind at {levels_text(above)}"
        sentences.append(text)
    elif untrained and len(blind) < len({g.level for g in untrained}):
        sentences.append("without any training, every one-shot method is behind pruning while "
                         "training at every sparsity this measure can rank")
    sentences += _fine_tuning_sentences(gaps, measure)
    return [s if s.endswith(".") else s + "." for s in sentences]


def _by(gap: OneShotGap, measure: str) -> str:
    return "" if gap.verdict == "level" else f" by {amount(gap.gap, measure)}"


def _fine_tuning_sentences(gaps: Sequence[OneShotGap], measure: str) -> list[str]:
    """For each technique pruned both with and without fine-tuning: how the mean moves."""
    cells = {(g.series, g.level): g for g in gaps}
    out = []
    for series in dict.fromkeys(g.series for g in gaps):
        technique, _, variant = series.partition(" ")
        if not variant:
            continue
        pairs = [(cells[(technique, g.level)], g) for g in gaps
                 if g.series == series and (technique, g.level) in cells]
        if not pairs:
            continue
        moves = [f"{'+' if after.gap >= before.gap else '−'}"
                 f"{amount(after.gap - before.gap, measure)} at {100 * after.level:g}% "
                 f"(then {after.verdict}{_by(after, measure)} against the best joint run)"
                 for before, after in pairs]
        out.append(f"{P.display_name(technique)} {variant[:-1]}, mask fixed) against "
                   f"{P.display_name(technique)} alone (+ is better): " + ", ".join(moves))
    return out
