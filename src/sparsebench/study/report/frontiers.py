"""The sections of the study's two questions, for every scope (published and ours): the dense
baseline, the techniques' frontiers against magnitude pruning (question 1), training the sparse
architecture from scratch (question 2), and our frontiers beside the study's."""

from __future__ import annotations

from collections.abc import Sequence

from ...methods import catalogue
from .. import figures
from .. import pareto as P
from ..store import Run
from .shared import (
    HEADLINE_LEVELS,
    ReportContext,
    Scope,
    Section,
    Table,
    at_study_budget,
    cell,
    family_name,
    metric_of,
    not_ranked_sentence,
    run_test_loss,
    with_replicas,
)

__all__ = ["dense_section", "published_comparison_section", "retraining_section",
           "technique_section"]


def dense_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The dense baseline: mean, min and max over replicas."""
    runs = ctx.scope_runs(scope)
    baseline = P.dense_baseline(runs)
    if baseline is None:
        return None
    metric, _ = metric_of([r for r in runs if r.technique == catalogue.DENSE])
    row = [metric, cell(baseline.mean, metric), cell(baseline.min, metric),
           cell(baseline.max, metric), baseline.n]
    return Section(
        id=f"{scope.key}-dense", title=f"{scope.title}: dense baseline",
        sentences=[P.dense_sentence(baseline, metric)],
        tables=[Table(f"{scope.key}_dense_baseline", ["metric", "mean", "min", "max", "runs"],
                      [row], f"Dense replicas, {P.metric_label(metric)}.")],
    )


def technique_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Question 1: the frontier of every sparsification technique, all runs, and who leads."""
    family_runs = ctx.scope_runs(scope)
    runs = [r for r in family_runs if r.technique in catalogue.on_frontiers()]
    if not runs:
        return None
    metric, higher = metric_of(runs)
    points = P.points_from_runs(runs)
    if not points:  # only pending or failed runs so far
        return None
    table = P.frontiers(points, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    baseline = P.dense_baseline(family_runs)
    name = f"{scope.key}_frontiers.png"
    figures.frontier_figure(table, points, ctx.out_dir / name, metric_name=metric,
                            baseline=baseline, collapsed=_collapsed(family_runs),
                            title=f"{scope.title}: Pareto frontier per technique")
    ranked_table, apart = at_study_budget(table, runs)
    sentences = [P.leaders_sentence(ranked_table, higher_is_better=higher)]
    sentences += [P.best_at_level_sentence(ranked_table, lv, metric, higher_is_better=higher)
                  for lv in HEADLINE_LEVELS]
    if apart:
        sentences.append(not_ranked_sentence(apart))
    if baseline is not None:
        for lv in HEADLINE_LEVELS:
            ranked = P.leaders(ranked_table, lv, higher_is_better=higher)
            if ranked:
                best_name, best = ranked[0]
                sentences.append(
                    f"At {100 * lv:g}% sparsity the best frontier point "
                    f"({P.display_name(best_name)}) "
                    + _against_baseline(best.value, baseline.mean, metric, higher) + ".")
        for series, frontier in sorted(table.items()):
            top = max((fp.value for fp in frontier.values()), default=None)
            if higher and top is not None and top < 0.5 * baseline.mean:
                sentences.append(
                    f"{P.sentence_start(P.display_name(series))} stays under half of the dense "
                    f"baseline at every level (best {P.format_metric(top, metric)}): it did not "
                    f"produce a usable sparse {family_name(scope.family)} in these runs.")
    outside = {s: sum(P.nearest_level(p.sparsity, tolerance_pp=ctx.tolerance_pp) is None
                      for p in points if p.series == s) for s in table}
    if any(outside.values()):
        sentences.append(
            f"Points more than {ctx.tolerance_pp:g} pp from every level are left out of the "
            "frontier (VD and L0 only reach the sparsity their regularization gives): "
            + ", ".join(f"{P.display_name(s)} {n}" for s, n in sorted(outside.items()) if n)
            + ".")
    missed = P.off_target(runs)
    if missed:
        sentences.append(f"{len(missed)} runs miss their target sparsity by more than 1 pp; "
                         "they are placed at their achieved sparsity.")
    names = sorted(table, key=figures.series_order)
    rows = []
    for lv in P.LEVELS:
        cells = [f"{cell(table[n][lv].value, metric)} ({table[n][lv].n})" if lv in table[n]
                 else "–" for n in names]
        ranked = P.leaders(ranked_table, lv, higher_is_better=higher)
        rows.append([f"{100 * lv:g}", *cells, P.display_name(ranked[0][0]) if ranked else "–"])
    return Section(
        id=f"{scope.key}-techniques",
        title=f"{scope.title}: sparsification techniques vs magnitude pruning",
        question="Do the popular sparsification techniques beat plain magnitude pruning?",
        sentences=sentences,
        figures=[(name, f"{scope.title} frontiers and all runs")],
        tables=[Table(f"{scope.key}_frontiers",
                      ["sparsity %", *[P.display_name(n) for n in names], "best"], rows,
                      f"Best {P.metric_label(metric)} within ±{ctx.tolerance_pp:g} pp of each "
                      "level (number of trained models in the bin).")],
    )


def _collapsed(runs: Sequence[Run]) -> set[str]:
    """Returns the train ids of the finished runs that collapsed in training, told by their
    test loss as the loss figure tells them (:func:`figures.collapsed_runs`); none for runs
    without one (the published runs)."""
    finished = [r for r in runs if r.status == "finished" and run_test_loss(r) is not None]
    dense = [run_test_loss(r) for r in finished if r.technique == catalogue.DENSE]
    return figures.collapsed_runs({r.train_id: run_test_loss(r) for r in finished},
                                  sum(dense) / len(dense) if dense else None)


def retraining_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Question 2: scratch-e / scratch-b / lottery / augmented against the MP frontier."""
    family_runs = ctx.scope_runs(scope)
    planned = [r for r in family_runs if r.technique in catalogue.retraining_kinds()]
    runs = [r for r in planned if r.metric_value is not None]
    reference_runs = [r for r in family_runs if r.technique == catalogue.reference()]
    if not planned or not reference_runs:
        return None
    heading = dict(
        id=f"{scope.key}-retraining",
        title=f"{scope.title}: training the sparse architecture from scratch",
        question="Can a sparse architecture found by pruning be trained from scratch to the "
                 "same quality (scratch-e, scratch-b, lottery ticket, augmented init)?")
    if not P.points_from_runs(runs):  # a study under way: say so rather than draw empty axes
        return Section(**heading, sentences=[
            f"No retraining run has a result yet ({len(planned)} in the store)."])
    metric, higher = metric_of(runs)
    summaries = P.replica_summaries(P.points_from_runs(runs), tolerance_pp=ctx.tolerance_pp)
    reference = P.binned_frontier(P.points_from_runs(reference_runs),
                                  tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    baseline = P.dense_baseline(family_runs)
    drawn = with_replicas(summaries)
    name = f"{scope.key}_retraining.png"
    figures.retraining_figure(drawn, reference, ctx.out_dir / name, metric_name=metric,
                              baseline=baseline,
                              title=f"{scope.title}: retraining the sparse architecture "
                                    "(mean, min/max bars)")
    sentences = P.retraining_sentences(summaries, reference, metric, higher_is_better=higher)
    if len(drawn) < len(summaries):
        sentences.append("Series with fewer than 3 replicas per level are in the table only: "
                         + ", ".join(sorted(set(summaries) - set(drawn))) + ".")
    rows = [[series, f"{100 * lv:g}", cell(s.max, metric), cell(s.min, metric),
             cell(s.mean, metric), s.n]
            for series in sorted(summaries, key=figures.series_order)
            for lv, s in sorted(summaries[series].items())]
    return Section(
        **heading,
        sentences=sentences,
        figures=[(name, f"{scope.title} retraining vs magnitude pruning")],
        tables=[Table(f"{scope.key}_retraining",
                      ["series", "sparsity %", "best (max)", "min", "mean", "replicas"], rows,
                      f"{P.metric_label(metric)} over replicas.")],
    )


def published_comparison_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Our frontiers beside the published ones of the same family, both as fractions of their
    own dense baseline (the tasks differ; the shapes compare). Read from the whole store, so
    a report filtered to our runs still shows the study's frontier."""
    if scope.source != "ours":
        return None
    ours = ctx.scope_runs(scope)
    published = ctx.store.runs(source="published", model_family=scope.family)
    base_ours, base_pub = P.dense_baseline(ours), P.dense_baseline(published)
    if not published or base_ours is None or base_pub is None:
        return None

    def table(runs: list[Run]) -> dict[str, P.Frontier]:
        _, higher = metric_of(runs)
        pts = P.points_from_runs([r for r in runs if r.technique in catalogue.sparsifiers()])
        return P.frontiers(pts, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)

    ours_t, pub_t = table(ours), table(published)
    # Who leads in our runs is asked at the study's budget: our variants ("4x steps") are not.
    ours_ranked, _ = at_study_budget(ours_t, ours)
    if not any(ours_t.values()):  # nothing of ours finished yet beside the dense baseline
        return None
    name = f"{scope.key}_relative.png"
    figures.relative_frontiers_figure(pub_t, base_pub, ours_t, base_ours, ctx.out_dir / name,
                                      title=f"{family_name(scope.family)}: our frontiers beside "
                                            "the study's, as a fraction of dense")
    rows, sentences = [], []
    for series in sorted(set(ours_t) & set(pub_t), key=figures.series_order):
        for lv in P.LEVELS:
            if lv in ours_t[series] and lv in pub_t[series]:
                a = ours_t[series][lv].value / base_ours.mean
                b = pub_t[series][lv].value / base_pub.mean
                rows.append([P.display_name(series), f"{100 * lv:g}", f"{a:.3f}", f"{b:.3f}"])
    for lv in HEADLINE_LEVELS:
        ours_rank, pub_rank = P.leaders(ours_ranked, lv), P.leaders(pub_t, lv)
        if ours_rank and pub_rank:
            same = ours_rank[0][0] == pub_rank[0][0]
            sentences.append(
                f"At {100 * lv:g}%, {P.display_name(ours_rank[0][0])} leads in our runs and "
                f"{P.display_name(pub_rank[0][0])} in the study's: the findings "
                + ("agree." if same else "differ."))
    return Section(
        id=f"{scope.key}-relative",
        title=f"{family_name(scope.family)}: our frontiers beside the study's",
        sentences=sentences, figures=[(name, "frontiers relative to dense")],
        tables=[Table(f"{scope.key}_relative",
                      ["technique", "sparsity %", "ours / dense", "published / dense"], rows)],
    )


def _against_baseline(value: float, baseline: float, metric: str, higher: bool) -> str:
    """Says how a frontier point stands against the dense mean: the share it keeps of a
    metric where higher is better (accuracy, BLEU), how much above it a lower-is-better one
    (bits per character, loss) lies."""
    if higher:
        return f"keeps {100 * value / baseline:.1f}% of the dense baseline"
    change = value / baseline - 1
    return (f"is {100 * abs(change):.1f}% {'above' if change >= 0 else 'below'} the dense "
            f"baseline's {P.format_metric(baseline, metric)}")
