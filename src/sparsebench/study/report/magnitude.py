"""The report's sections on variations of magnitude pruning in our runs: MP v2 (a non-uniform
layer distribution with longer training), what masked weights do during pruning, and a sparse
model against a small dense one of equal parameter count."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ...methods import catalogue
from .. import figures
from .. import pareto as P
from ..our_figures import small_dense_figure
from ..speed import block_of
from ..store import Run
from .shared import ReportContext, Scope, Section, Table, cell, finished, metric_of

__all__ = ["mp_v2_section", "pruned_weights_section", "small_dense_section"]


def mp_v2_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """MP v2 (first layer dense, last 80%, the rest filled; 1.5x steps) against uniform
    magnitude pruning and variational dropout, frontier by frontier."""
    if scope.source != "ours":
        return None
    variant = catalogue.get(catalogue.MP_V2)
    beside = variant.compare_with  # uniform magnitude pruning and VD
    runs = [r for r in ctx.scope_runs(scope) if r.technique in (variant.name, *beside)]
    if not any(r.technique == variant.name for r in runs):
        return None
    metric, higher = metric_of(runs)
    points = P.points_from_runs(runs)
    table = P.frontiers(points, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    name = f"{scope.key}_mpv2.png"
    figures.frontier_figure(table, points, ctx.out_dir / name, metric_name=metric,
                            baseline=P.dense_baseline(ctx.scope_runs(scope)),
                            title=f"{scope.title}: MP v2 vs uniform magnitude pruning and VD")
    rows, sentences = [], []
    for level in sorted(table.get(variant.name, {})):
        v2 = table[variant.name][level].value
        cells = [cell(table[t][level].value, metric) if level in table.get(t, {}) else "–"
                 for t in beside]
        rows.append([f"{100 * level:g}", cell(v2, metric), *cells])
        mp = table.get(variant.trained_by, {}).get(level)
        if mp is not None:
            better = (v2 > mp.value) == higher and v2 != mp.value
            sentences.append(
                f"At {100 * level:g}%, MP v2 reaches {P.format_metric(v2, metric)} vs uniform "
                f"magnitude pruning {P.format_metric(mp.value, metric)}: "
                + ("the non-uniform distribution with longer training helps."
                   if better else "no gain from the non-uniform distribution here."))
    return Section(
        id=f"{scope.key}-mpv2", title=f"{scope.title}: magnitude pruning v2",
        question="Does a non-uniform layer distribution with 1.5x the steps improve "
                 "magnitude pruning?",
        sentences=sentences, figures=[(name, "MP v2 frontier")],
        tables=[Table(f"{scope.key}_mpv2", ["sparsity %", "MP v2",
                                            *(P.display_name(t) for t in beside)], rows,
                      f"Best {P.metric_label(metric)} within ±{ctx.tolerance_pp:g} pp.")])


def pruned_weights_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Magnitude pruning's frontier per ``pruned_weights`` mode, when the runs tried more than
    one: "update" (masked weights get a straight-through gradient and may regrow) against
    "keep" (TF model_pruning: no gradient, values kept) or "drop"."""
    if scope.source != "ours":
        return None
    runs = [r for r in finished(ctx.scope_runs(scope)) if r.technique == catalogue.reference()]
    modes = {r.hyperparameters.get("pruned_weights", "update") for r in runs}
    if len(modes) < 2:
        return None
    metric, higher = metric_of(runs)
    points = P.points_from_runs(
        runs, series=lambda r: f"magnitude ({r.hyperparameters.get('pruned_weights', 'update')})")
    table = P.frontiers(points, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    name = f"{scope.key}_pruned_weights.png"
    figures.frontier_figure(table, points, ctx.out_dir / name, metric_name=metric,
                            baseline=P.dense_baseline(ctx.scope_runs(scope)),
                            title=f"{scope.title}: what masked weights do during pruning")
    names = sorted(table)
    rows, sentences = [], []
    for level in P.LEVELS:
        cells = {n: table[n][level].value for n in names if level in table[n]}
        if not cells:
            continue
        rows.append([f"{100 * level:g}", *[cell(cells[n], metric) if n in cells else "–"
                                           for n in names]])
        if len(cells) == len(names):
            best = max(cells, key=lambda n: cells[n] if higher else -cells[n])
            sentences.append(f"At {100 * level:g}%: " + ", ".join(
                f"{n.split('(')[1].rstrip(')')} {P.format_metric(cells[n], metric)}"
                for n in names) + f"; best: {best.split('(')[1].rstrip(')')}.")
    return Section(
        id=f"{scope.key}-pruned-weights", title=f"{scope.title}: what masked weights do",
        question="Should masked weights keep getting gradient (and may regrow) or be frozen "
                 "until the mask changes?",
        sentences=sentences, figures=[(name, "magnitude pruning frontier per mode")],
        tables=[Table(f"{scope.key}_pruned_weights",
                      ["sparsity %", *[n.split("(")[1].rstrip(")") for n in names]], rows,
                      f"Best {P.metric_label(metric)} of magnitude pruning within "
                      f"±{ctx.tolerance_pp:g} pp, per pruned_weights mode.")])


def small_dense_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Each small dense model beside the sparse model whose nonzero count it matches."""
    if scope.source != "ours":
        return None
    runs = finished(ctx.scope_runs(scope))
    small = [r for r in runs if r.technique == catalogue.SMALL_DENSE]
    if not small:
        return None
    by_id = {r.id: r for r in runs}
    metric, higher = metric_of(runs)
    rows, sentences = [], []
    for run in sorted(small, key=lambda r: r.hyperparameters.get("matched_sparsity", 0)):
        sparse = by_id.get(run.hyperparameters.get("matched_run", ""))
        if sparse is None or sparse.metric_value is None or run.metric_value is None:
            continue
        hp = run.hyperparameters
        nonzero, params = hp.get("matched_nonzero"), hp.get("parameters")
        rows.append([f"{100 * (sparse.achieved_sparsity or 0):.1f}", sparse.id, nonzero,
                     cell(sparse.metric_value, metric), run.variant, params,
                     cell(run.metric_value, metric)])
        wins = (sparse.metric_value > run.metric_value) == higher
        sentences.append(
            f"With {nonzero:,} nonzero parameters, the {100 * sparse.achieved_sparsity:.0f}% "
            f"sparse model reaches {P.format_metric(sparse.metric_value, metric)}; the dense "
            f"model at {run.variant} ({params:,} parameters) reaches "
            f"{P.format_metric(run.metric_value, metric)}: "
            + ("the sparse model is better." if wins else "the small dense model is as good "
                                                          "or better."))
    if not rows:
        return None
    seeds = _seed_comparisons(scope.key, small, runs, by_id, metric, higher)
    if seeds is not None:  # replicas on both sides: one verdict per level, not per pair
        sentences = seeds[1]
    name = f"{scope.key}_small_dense.png"
    series = _nonzero_series(ctx, scope, small, runs, by_id)
    small_dense_figure(series, ctx.out_dir / name, metric=metric,
                       title=f"{scope.title}: {P.metric_label(metric)} against nonzero "
                             "parameters")
    return Section(
        id=f"{scope.key}-small-dense", title=f"{scope.title}: sparse vs small dense",
        question="At equal parameter count, is a large sparse model better than a small dense "
                 "one?",
        sentences=sentences,
        figures=[(name, "against nonzero parameters: the sparse models and the small dense ones "
                        "matched to them, block-sparse runs and the full dense model")],
        tables=[Table(f"{scope.key}_small_dense", ["sparsity %", "sparse run", "nonzeros",
                                                   "sparse", "small dense", "parameters",
                                                   P.display_name(catalogue.DENSE)], rows,
                      f"{P.metric_label(metric)}; nonzeros counted on the finalized weights.")]
        + ([seeds[0]] if seeds is not None else []))


def _spread(x: int, values: Sequence[float]) -> tuple[int, float, float, float]:
    return x, sum(values) / len(values), min(values), max(values)


def _zeros(run: Run) -> int:
    return sum(int(la["size"]) - int(la["nonzeros"]) for la in run.layers
               if "size" in la and "nonzeros" in la)


def _nonzero_series(ctx: ReportContext, scope: Scope, small: Sequence[Run], runs: Sequence[Run],
                    by_id: dict[str, Run]) -> dict[str, list[tuple[int, float, float, float]]]:
    """The figure's lines, each point (nonzero parameters, mean, min, max over seeds): the
    sparse models the small dense ones were matched to, the small dense models, the same
    technique's block-sparse runs at those sparsities, and the full dense model. A block
    run's nonzeros are the matched run's, less the zeros it has beyond it (same model, so
    the same parameters outside the pruned layers)."""
    sparse: dict[str, tuple[int, float, float, float]] = {}
    dense: dict[str, list[float]] = {}
    matched: dict[float, tuple[Run, int]] = {}
    for run in small:
        hp = run.hyperparameters
        source = by_id.get(hp.get("matched_run", ""))
        if source is None or run.metric_value is None or hp.get("matched_nonzero") is None:
            continue
        seeds = [r.metric_value for r in _trained_alike(source, runs)]
        sparse[source.id] = _spread(hp["matched_nonzero"], seeds)
        dense.setdefault(run.variant, []).append(run.metric_value)
        dense[run.variant + " parameters"] = [hp.get("parameters", 0)]
        matched[source.target_sparsity or 0.0] = (source, hp["matched_nonzero"])
    technique = next(iter(matched.values()))[0].technique if matched else None
    series = {f"sparse ({P.display_name(technique)})" if technique else "sparse":
              list(sparse.values()),
              "small dense": [_spread(int(dense[v + " parameters"][0]), dense[v])
                              for v in dense if not v.endswith(" parameters")]}
    blocks: dict[tuple[int, int], dict[float, list[Run]]] = {}
    for run in finished(ctx.scope_runs(scope, structured=True)):
        if (run.technique == technique and run.metric_value is not None and run.layers
                and run.target_sparsity in matched and block_of(run) != (1, 1)):
            blocks.setdefault(block_of(run), {}).setdefault(run.target_sparsity, []).append(run)
    for (bh, bw), levels in sorted(blocks.items()):
        points = []
        for target, alike in levels.items():
            source, nonzero = matched[target]
            points.append(_spread(round(statistics.mean(nonzero + _zeros(source) - _zeros(r)
                                                         for r in alike)),
                                  [r.metric_value for r in alike]))
        series[f"sparse, {bh}x{bw} blocks"] = points
    full = [r.metric_value for r in runs
            if r.technique == catalogue.DENSE and r.metric_value is not None]
    if full and matched:
        source, nonzero = next(iter(matched.values()))
        series["dense (full size)"] = [_spread(nonzero + _zeros(source), full)]
    return series


def _trained_alike(run: Run, runs: Sequence[Run]) -> list[Run]:
    """The finished runs trained as ``run`` was but for the seed (itself included)."""
    return [r for r in runs if r.technique == run.technique and r.sweep == run.sweep
            and r.target_sparsity == run.target_sparsity and r.variant == run.variant
            and r.hyperparameters == run.hyperparameters and r.metric_value is not None]


def _seed_comparisons(key: str, small: Sequence[Run], runs: Sequence[Run],
                      by_id: dict[str, Run], metric: str, higher: bool
                      ) -> tuple[Table, list[str]] | None:
    """Per matched sparsity, the sparse model's seeds against the small dense model's: mean
    and range of each, whether one is ahead by more than the seed spread (their ranges do not
    overlap), and the training seconds per run of each, which say what the two would reach at
    equal training time. None unless some level has two seeds or more on both sides."""
    by_level: dict[float, list[Run]] = {}
    for run in small:
        if run.metric_value is not None and run.hyperparameters.get("matched_run") in by_id:
            by_level.setdefault(run.hyperparameters.get("matched_sparsity", 0.0), []).append(run)
    rows, sentences = [], []
    for level, dense in sorted(by_level.items()):
        sparse = _trained_alike(by_id[dense[0].hyperparameters["matched_run"]], runs)
        if len(sparse) < 2 or len(dense) < 2:
            continue
        s_vals = [r.metric_value for r in sparse]
        d_vals = [r.metric_value for r in dense]
        s_mean, d_mean = sum(s_vals) / len(s_vals), sum(d_vals) / len(d_vals)
        apart = min(s_vals) > max(d_vals) or max(s_vals) < min(d_vals)
        sparse_ahead = (s_mean > d_mean) == higher
        verdict = ("within the seed spread of each other" if not apart else
                   "the sparse model is ahead by more than the seed spread" if sparse_ahead
                   else "the small dense model is ahead by more than the seed spread")
        fmt = lambda v: P.format_metric(v, metric)  # noqa: E731
        hp = dense[0].hyperparameters
        sentence = (f"At {100 * level:.0f}% ({hp.get('matched_nonzero', 0):,} nonzero "
                    f"parameters), over {len(sparse)} and {len(dense)} seeds: sparse "
                    f"{fmt(s_mean)} ({fmt(min(s_vals))}–{fmt(max(s_vals))}), small dense "
                    f"{dense[0].variant} ({hp.get('parameters', 0):,} parameters) "
                    f"{fmt(d_mean)} ({fmt(min(d_vals))}–{fmt(max(d_vals))}): {verdict}.")
        s_time = [r.train_seconds for r in sparse if r.train_seconds]
        d_time = [r.train_seconds for r in dense if r.train_seconds]
        ratio = None
        if s_time and d_time:
            # Medians: a run trained beside other jobs on a shared machine takes longer
            # (one of the GRU study's took 2.5x the time of runs of the same steps).
            s_sec, d_sec = statistics.median(s_time), statistics.median(d_time)
            ratio = s_sec / d_sec
            sentence += (f" Training took {s_sec:,.0f} s per sparse run against {d_sec:,.0f} s "
                         f"per small dense run (medians; {ratio:.2f}×), so at equal training "
                         "time the "
                         + ("sparse model would have had at least as many steps." if ratio <= 1
                            else "sparse model would have had fewer steps (not measured)."))
        sentences.append(sentence)
        rows.append([f"{100 * level:.0f}", hp.get("matched_nonzero"), len(sparse),
                     cell(s_mean, metric), f"{cell(min(s_vals), metric)}–"
                     f"{cell(max(s_vals), metric)}", dense[0].variant, len(dense),
                     cell(d_mean, metric), f"{cell(min(d_vals), metric)}–"
                     f"{cell(max(d_vals), metric)}",
                     "–" if ratio is None else f"{ratio:.2f}", verdict])
    if not rows:
        return None
    columns = ["sparsity %", "nonzeros", "sparse seeds", "sparse mean", "sparse range",
               "small dense", "dense seeds", "dense mean", "dense range",
               "training time sparse / dense", "verdict"]
    caption = (f"{P.metric_label(metric)}; training time is the median seconds per run over "
               "the seeds, as measured on the machine that trained them (other jobs beside a "
               "run slow it).")
    return Table(f"{key}_small_dense_seeds", columns, rows, caption), sentences
