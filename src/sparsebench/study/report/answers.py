"""The report's opening: the study's answers for each scope of our runs (the sentences and
comparisons of :mod:`sparsebench.study.answers`), in the headline metric and in test loss."""

from __future__ import annotations

from .. import pareto as P
from ..answers import compared_techniques, measure_answers
from .loss import LOSS, with_test_loss
from .shared import ReportContext, Scope, Section, Table, metric_of

__all__ = ["answers_section"]


def answers_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The answers for one scope of our runs, in its headline metric and, where the runs
    carry one beside it, in test loss; None for the study's published runs or a scope with
    no sparse run yet."""
    if scope.source != "ours":
        return None
    runs = [r for r in ctx.scope_runs(scope) if r.status == "finished"]
    metric, higher = metric_of(runs)
    if not P.points_from_runs([r for r in runs if r.technique in compared_techniques()]):
        return None
    sentences, rows = measure_answers(runs, metric, higher, tolerance_pp=ctx.tolerance_pp)
    lossy = with_test_loss(runs)
    if metric not in ("", LOSS) and P.points_from_runs(
            [r for r in lossy if r.technique in compared_techniques()]):
        more, loss_rows = measure_answers(lossy, LOSS, False, tolerance_pp=ctx.tolerance_pp,
                                          prefix="In test loss, ")
        sentences += more
        rows += loss_rows
    return Section(
        id=f"{scope.key}-answers", title=f"{scope.title}: the answers",
        question="Which technique wins at each sparsity, how far random pruning is behind, "
                 "and whether retraining matches joint pruning, each gap against the seed "
                 "spread.",
        sentences=sentences,
        tables=[Table(f"{scope.key}_answers",
                      ["measure", "comparison", "sparsity %", "first", "second",
                       "first better by", "seed spread", "verdict"], rows,
                      "Every comparison with its gap (the first's frontier point, or a "
                      "retraining kind's mean, against the second's) and the seed spread it "
                      "is judged against ('level' when the gap is no larger):",
                      shown=False)])  # the sentences say it; the figures follow at once
