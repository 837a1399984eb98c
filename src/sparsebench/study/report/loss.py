"""The report's test-loss section for our runs: every frontier again in held-out loss.

BLEU of an early Transformer on short sentences jumps by points between seeds: a model that
gets a few more four-grams right moves the corpus score a lot. Its test loss (the
cross-entropy of each reference token given the reference prefix) averages over every token
and barely moves. Where runs carry a test loss beside a different headline metric, this
section draws the techniques' frontiers in loss, says how far the dense replicas spread in each
measure, and whether the two measures name the same leader at each level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ...methods import catalogue
from .. import figures
from .. import pareto as P
from ..store import Run
from .shared import (
    ReportContext,
    Scope,
    Section,
    Table,
    at_study_budget,
    metric_of,
    not_ranked_sentence,
    with_replicas,
)

__all__ = ["LOSS", "loss_section", "retraining_loss_section", "with_test_loss"]

LOSS = "loss"
_SHORT = {"top1": "top-1", "bleu": "BLEU"}


def with_test_loss(runs: Sequence[Run]) -> list[Run]:
    """Returns copies of the finished runs that have a test loss, with it as their metric
    (lower is better)."""
    return [replace(r, metric_name=LOSS, metric_value=float(r.metrics["test"][LOSS]),
                    higher_is_better=False)
            for r in runs if r.status == "finished" and LOSS in r.metrics.get("test", {})]


def _loss_unit(metric: str) -> str:
    """What one test loss averages over: a token beside BLEU, an example beside top-1."""
    return "nats per token" if metric == "bleu" else "nats per example"


def _spread(summary: P.Summary) -> float:
    """Returns a baseline's range as a fraction of its mean."""
    return (summary.max - summary.min) / abs(summary.mean) if summary.mean else float("nan")


def loss_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The frontiers in test loss, for our runs whose headline metric is something else."""
    if scope.source != "ours":
        return None
    runs = ctx.scope_runs(scope)
    metric, higher = metric_of(runs)
    lossy = with_test_loss(runs)
    sparse = [r for r in lossy if r.technique in catalogue.trained()]
    if metric in ("", LOSS) or not sparse:
        return None
    # Both measures over the same runs: a run without a loss (not rescored) would otherwise
    # decide the headline ranking alone and pass for a disagreement.
    measured = {r.id for r in lossy}
    same = [r for r in runs if r.id in measured]
    table = P.frontiers(P.points_from_runs(sparse), tolerance_pp=ctx.tolerance_pp,
                        higher_is_better=False)
    trained = catalogue.trained()
    headline = P.frontiers(P.points_from_runs([r for r in same if r.technique in trained]),
                           tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    baseline = P.dense_baseline(lossy)
    dense_metric = P.dense_baseline(same)
    unit = _loss_unit(metric)
    name = f"{scope.key}_loss_frontiers.png"
    figures.loss_frontier_figure(table, P.points_from_runs(sparse), ctx.out_dir / name,
                                 baseline=baseline, unit=unit,
                                 title=f"{scope.title}: frontier per technique in test loss")
    short = _SHORT.get(metric, metric)
    # The leaders are named at the study's budget; a sweep's variant is drawn and tabled only.
    ranked, apart = at_study_budget(table, sparse)
    ranked_headline, _ = at_study_budget(headline, same)
    sentences = []
    if baseline is not None and dense_metric is not None and baseline.n > 1:
        sentences.append(
            f"The {baseline.n} dense replicas span {P.format_metric(dense_metric.min, metric)}"
            f" to {P.format_metric(dense_metric.max, metric)} ({100 * _spread(dense_metric):.1f}%"
            f" of their mean) and {baseline.min:.3f} to {baseline.max:.3f} {unit} of test loss "
            f"({100 * _spread(baseline):.1f}% of theirs).")
    rows = []
    names = sorted(table, key=figures.series_order)
    for level in P.LEVELS:
        if not any(level in table[n] for n in names):
            continue
        by_loss = P.leaders(ranked, level, higher_is_better=False)
        by_metric = P.leaders(ranked_headline, level, higher_is_better=higher)
        cells = [f"{table[n][level].value:.3f} ({table[n][level].n})" if level in table[n]
                 else "–" for n in names]
        rows.append([f"{100 * level:g}", *cells,
                     P.display_name(by_loss[0][0]) if by_loss else "–",
                     P.display_name(by_metric[0][0]) if by_metric else "–"])
        if len(by_loss) > 1 and by_metric:
            (best, top), (second, runner_up) = by_loss[0], by_loss[1]
            agree = best == by_metric[0][0]
            sentences.append(
                f"At {100 * level:g}%, {P.display_name(best)} has the lowest test loss "
                f"({top.value:.3f}, {runner_up.value - top.value:.3f} below "
                f"{P.display_name(second)})"
                + (f", {top.value - baseline.mean:+.3f} from the dense mean" if baseline else "")
                + (f"; by {short} it leads too." if agree else
                   f"; by {short}, {P.display_name(by_metric[0][0])} leads."))
    if apart:
        sentences.append(not_ranked_sentence(apart))
    return Section(
        id=f"{scope.key}-loss",
        title=f"{scope.title}: the frontiers in test loss",
        question=f"Do the techniques rank the same in held-out loss as in {short}? On a short "
                 "budget the loss can separate what a noisy headline metric cannot.",
        sentences=sentences,
        figures=[(name, f"{scope.title} frontiers in test loss")],
        tables=[Table(f"{scope.key}_loss_frontiers",
                      ["sparsity %", *[P.display_name(n) for n in names], "lowest loss",
                       f"best {short}"], rows,
                      f"Lowest test loss ({unit}) within ±{ctx.tolerance_pp:g} pp of each "
                      "level (number of trained models in the bin).")],
    )


def retraining_loss_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Retraining (scratch-e, scratch-b, lottery, augmented) against the magnitude-pruning
    frontier in test loss, for our runs whose headline metric is something else: where BLEU
    swings by points between seeds, the loss still says whether retraining keeps up."""
    if scope.source != "ours":
        return None
    runs = ctx.scope_runs(scope)
    metric, _ = metric_of(runs)
    if metric in ("", LOSS):
        return None
    lossy = with_test_loss(runs)
    retrained = [r for r in lossy if r.technique in catalogue.retraining_kinds()]
    reference = [r for r in lossy if r.technique == catalogue.reference()]
    if not retrained or not reference:
        return None
    summaries = P.replica_summaries(P.points_from_runs(retrained), tolerance_pp=ctx.tolerance_pp)
    frontier = P.binned_frontier(P.points_from_runs(reference), tolerance_pp=ctx.tolerance_pp,
                                 higher_is_better=False)
    rows = [[series, f"{100 * lv:g}", f"{s.min:.3f}", f"{s.mean:.3f}", f"{s.max:.3f}", s.n]
            for series in sorted(summaries, key=figures.series_order)
            for lv, s in sorted(summaries[series].items())]
    short = _SHORT.get(metric, metric)
    name = f"{scope.key}_retraining_loss.png"
    figures.retraining_figure(with_replicas(summaries), frontier, ctx.out_dir / name,
                              metric_name=LOSS, baseline=P.dense_baseline(lossy),
                              higher_is_better=False,
                              unit=_loss_unit(metric),
                              title=f"{scope.title}: retraining in test loss "
                                    "(mean, min/max bars)")
    return Section(
        id=f"{scope.key}-retraining-loss",
        title=f"{scope.title}: retraining in test loss",
        question=f"Does the answer on retraining hold in held-out loss as in {short}? "
                 "Where the headline metric is noisy (BLEU on a short budget), the loss can "
                 "decide what it cannot.",
        sentences=P.retraining_sentences(summaries, frontier, LOSS, higher_is_better=False),
        figures=[(name, f"{scope.title} retraining vs magnitude pruning in test loss")],
        tables=[Table(f"{scope.key}_retraining_loss",
                      ["series", "sparsity %", "best (lowest)", "mean", "highest", "replicas"],
                      rows, "Test loss over replicas, beside the magnitude-pruning frontier "
                            "in the same measure.")],
    )
