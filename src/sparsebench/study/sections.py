"""Report sections for our own runs (the store's ``source="ours"``): per-layer sparsity of the
best models, training cost against magnitude pruning, MP v2, sparse vs small dense at equal
parameters, runs that missed their target, and the sweep files themselves. Each is a
``builder(ctx, scope) -> Section | None`` appended to :data:`report.SECTION_BUILDERS`; each
returns None when the store has nothing for it, and every number is read from the runs.
"""

from __future__ import annotations

import io
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..rundir import atomic_write_bytes
from . import figures
from . import pareto as P
from .report import HEADLINE_LEVELS, ReportContext, Scope, Section, Table, _cell, _metric_of
from .store import Run, result_layers

__all__ = ["OUR_SECTION_BUILDERS", "STUDY_COST_RATIOS", "pruned_weights_section"]

#: Training cost relative to magnitude pruning as the study reports it for the Transformer
#: (Gale et al. 2019, section 4.1): quoted from the paper's text, not measured here.
STUDY_COST_RATIOS = {"l0": 1.24, "variational_dropout": 1.65}
#: The techniques that sparsify during training (their best models per level are compared).
_TRAINED = ("magnitude", "mp-v2", "variational_dropout", "l0", "random")


def _finished(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.status == "finished"]


def _layers(run: Run) -> list[dict[str, Any]]:
    """Returns the run's per-layer report: kept in the store, else read from its result.json
    (stores written before schema 2)."""
    return run.layers or result_layers(run.run_dir or "")


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _best_per_level(runs: Sequence[Run], level: float, tolerance_pp: float,
                    higher: bool) -> Run | None:
    inside = [r for r in runs if r.achieved_sparsity is not None and r.metric_value is not None
              and P.nearest_level(r.achieved_sparsity, tolerance_pp=tolerance_pp) == level]
    if not inside:
        return None
    return max(inside, key=lambda r: r.metric_value if higher else -r.metric_value)


# ---- per-layer sparsity -------------------------------------------------------------------

def per_layer_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The sparsity of each layer in the best model of each technique at 90% and 95%, as a
    bar chart by layer (read from each run's result.json)."""
    if scope.source != "ours":
        return None
    runs = _finished(ctx.scope_runs(scope))
    metric, higher = _metric_of(runs)
    figs, rows, sentences = [], [], []
    for level in HEADLINE_LEVELS:
        chosen: dict[str, tuple[Run, list[dict[str, Any]]]] = {}
        for technique in _TRAINED:
            best = _best_per_level([r for r in runs if r.technique == technique], level,
                                   ctx.tolerance_pp, higher)
            all_layers = _layers(best) if best else []
            if best and all_layers:
                # Only the weights a technique sparsifies: biases and norms stay dense.
                layers = [la for la in all_layers if la.get("sparsity", 0) > 0
                          or la["name"].endswith("weight")]
                chosen[technique] = (best, layers)
        if not chosen:
            continue
        names = list(dict.fromkeys(la["name"] for _, ls in chosen.values() for la in ls))
        fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 3), 4.2))
        ax = fig.subplots()
        width = 0.8 / len(chosen)
        colours = figures._colours(list(chosen))
        for index, (technique, (run, layers)) in enumerate(chosen.items()):
            by_name = {la["name"]: la for la in layers}
            xs = [i + (index - (len(chosen) - 1) / 2) * width for i in range(len(names))]
            ys = [100 * by_name[n]["sparsity"] if n in by_name else 0.0 for n in names]
            ax.bar(xs, ys, width=width, color=colours[technique],
                   label=f"{P.display_name(technique)} ({100 * run.achieved_sparsity:.1f}%)")
            for name in names:
                if name in by_name:
                    la = by_name[name]
                    rows.append([f"{100 * level:g}", P.display_name(technique), run.id, name,
                                 la["size"], la["nonzeros"], f"{100 * la['sparsity']:.2f}"])
            spread = [by_name[n]["sparsity"] for n in names if n in by_name]
            sentences.append(
                f"At {100 * level:g}%, the best {P.display_name(technique)} model "
                f"({P.format_metric(run.metric_value, metric)}) has layers from "
                f"{100 * min(spread):.1f}% to {100 * max(spread):.1f}% sparse.")
        ax.set_xticks(range(len(names)), [n.removesuffix(".weight") for n in names],
                      rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8
                      else "center", fontsize=8)
        ax.set_ylabel("layer sparsity (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{scope.title}: per-layer sparsity of the best model at {100 * level:g}%")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        name = f"{scope.key}_layers_{100 * level:g}.png"
        _save(fig, ctx.out_dir / name)
        figs.append((name, f"per-layer sparsity at {100 * level:g}%"))
    if not figs:
        return None
    return Section(
        id=f"{scope.key}-layers", title=f"{scope.title}: sparsity by layer",
        question="How does each technique spread its sparsity across the layers?",
        sentences=sentences, figures=figs,
        tables=[Table(f"{scope.key}_layers", ["level %", "technique", "run", "layer", "size",
                                              "nonzeros", "sparsity %"], rows,
                      f"Best model per technique within ±{ctx.tolerance_pp:g} pp of the level.")])


# ---- training cost ------------------------------------------------------------------------

#: How the store names a run's activation layout (runs before the option were NCHW).
_LAYOUT_NAMES = {"contiguous_format": "NCHW", "channels_last": "channels-last"}


def _layout(run: Run) -> str:
    """Returns how the run trained, as far as its speed goes: the activation layout (of a
    convolutional model; others have none to choose), and the device when it was not the CPU
    (a study may go on on a GPU machine)."""
    device = run.device
    layers = _layers(run)  # unknown (a row without them): possibly convolutional
    if layers and not any(layer.get("kind") == "conv" for layer in layers):
        return "CPU" if device == "cpu" else device
    layout = _LAYOUT_NAMES.get(run.flags.get("memory_format", "contiguous_format"),
                               str(run.flags.get("memory_format")))
    return layout if device == "cpu" else f"{layout}, {device}"


#: What a run's seconds per step hold, said wherever a ratio of them is shown.
_WHAT_TIMES_INCLUDE = ("Each ratio is of medians over whole runs' wall-clock time per step: "
                       "data loading, the first steps' warm-up and whatever else ran on the "
                       "machine at the time are included; evaluation is not.")


def training_cost_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Seconds per step and total training time per technique (medians over runs), as ratios
    to magnitude pruning, beside the study's Transformer ratios. Runs trained in different
    activation layouts (``run.memory_format``) run at different speeds, so each layout's runs
    are compared among themselves."""
    if scope.source != "ours":
        return None
    groups: dict[str, dict[str, list[Run]]] = {}
    for run in _finished(ctx.scope_runs(scope)):
        if run.seconds_per_step and run.train_seconds:
            groups.setdefault(_layout(run), {}).setdefault(run.technique, []).append(run)
    groups = {layout: by for layout, by in groups.items() if "magnitude" in by and len(by) > 1}
    if not groups:
        return None
    step = {layout: {t: statistics.median(r.seconds_per_step for r in rs)
                     for t, rs in by.items()} for layout, by in groups.items()}
    total = {layout: {t: statistics.median(r.train_seconds for r in rs)
                      for t, rs in by.items()} for layout, by in groups.items()}
    techniques = {t for by in groups.values() for t in by}
    order = sorted(techniques, key=lambda t: (t != "dense", figures.series_order(t)))
    layouts = sorted(groups, key=lambda layout: -sum(len(rs) for rs in groups[layout].values()))
    rows, sentences = [], []
    for layout in layouts:
        by, st, tot = groups[layout], step[layout], total[layout]
        for t in (t for t in order if t in by):
            study = STUDY_COST_RATIOS.get(t)
            rows.append([P.display_name(t), layout, len(by[t]), f"{1000 * st[t]:.2f}",
                         f"{st[t] / st['magnitude']:.2f}", f"{tot[t]:.1f}",
                         f"{tot[t] / tot['magnitude']:.2f}", f"{study:.2f}" if study else "–"])
    for t, study in STUDY_COST_RATIOS.items():
        here = [f"{step[layout][t] / step[layout]['magnitude']:.2f}x ({layout} runs, median "
                f"of {len(groups[layout][t])})" for layout in layouts if t in groups[layout]]
        if here:
            listed = ", ".join(here[:-1]) + (" and " if len(here) > 1 else "") + here[-1]
            sentences.append(f"{P.display_name(t).capitalize()} runs took {listed} "
                             "magnitude pruning's wall-clock time per step here, against "
                             f"{study:.2f}x in the study's Transformer.")
    if len(layouts) > 1:
        sentences.append("Runs from before channels-last training (run.memory_format) were "
                         "NCHW and slower per step; each layout's runs are compared only with "
                         "its own magnitude runs.")
    sentences.append(_WHAT_TIMES_INCLUDE + " These ratios are not the techniques' cost "
                     "alone: benchmarks/training_step_cost.py --tasks times the steps side by "
                     "side in one process, in interleaved rounds, and is the measure to quote.")
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    xs = range(len(order))
    width = 0.8 / (len(layouts) + 1)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    for i, layout in enumerate(layouts):
        ax.bar([x + (i - len(layouts) / 2) * width for x in xs],
               [step[layout][t] / step[layout]["magnitude"] if t in step[layout] else 0.0
                for t in order], width=width, color=colors[i % len(colors)],
               label=f"ours: wall-clock per step, whole runs ({layout})")
    ax.bar([x + len(layouts) / 2 * width for x in xs],
           [STUDY_COST_RATIOS.get(t, 0.0) for t in order], width=width,
           label="study (Transformer), quoted", color="#bbbbbb")
    ax.axhline(1.0, color="black", linewidth=1.0, linestyle=":")
    ax.set_xticks(list(xs), [P.display_name(t) for t in order], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("wall-clock per step / magnitude pruning's")
    ax.set_title(f"{scope.title}: training cost relative to magnitude pruning")
    # Said in the figure too: a figure travels without the sentences beside it.
    ax.set_xlabel(textwrap.fill(_WHAT_TIMES_INCLUDE, 95), fontsize=7.5, color="#555555")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    name = f"{scope.key}_cost.png"
    _save(fig, ctx.out_dir / name)
    return Section(
        id=f"{scope.key}-cost", title=f"{scope.title}: training cost",
        question="What does each technique cost to train, relative to magnitude pruning?",
        sentences=sentences, figures=[(name, "training cost ratios")],
        tables=[Table(f"{scope.key}_cost", ["technique", "layout", "runs", "ms per step",
                                            "per step / MP", "train s", "total / MP",
                                            "study / MP"], rows,
                      "Medians over finished runs, against the magnitude runs of the same "
                      "activation layout; the study's column is quoted from its text "
                      "(Transformer).")])


# ---- MP v2 --------------------------------------------------------------------------------

def mp_v2_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """MP v2 (first layer dense, last 80%, the rest filled; 1.5x steps) against uniform
    magnitude pruning and variational dropout, frontier by frontier."""
    if scope.source != "ours":
        return None
    runs = [r for r in ctx.scope_runs(scope)
            if r.technique in ("mp-v2", "magnitude", "variational_dropout")]
    if not any(r.technique == "mp-v2" for r in runs):
        return None
    metric, higher = _metric_of(runs)
    points = P.points_from_runs(runs)
    table = P.frontiers(points, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    name = f"{scope.key}_mpv2.png"
    figures.frontier_figure(table, points, ctx.out_dir / name, metric_name=metric,
                            baseline=P.dense_baseline(ctx.scope_runs(scope)),
                            title=f"{scope.title}: MP v2 vs uniform magnitude pruning and VD")
    rows, sentences = [], []
    for level in sorted(table.get("mp-v2", {})):
        v2 = table["mp-v2"][level].value
        cells = [_cell(table[t][level].value, metric) if level in table.get(t, {}) else "–"
                 for t in ("magnitude", "variational_dropout")]
        rows.append([f"{100 * level:g}", _cell(v2, metric), *cells])
        mp = table.get("magnitude", {}).get(level)
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
        tables=[Table(f"{scope.key}_mpv2", ["sparsity %", "MP v2", "magnitude pruning",
                                            "variational dropout"], rows,
                      f"Best {P.metric_label(metric)} within ±{ctx.tolerance_pp:g} pp.")])


# ---- what masked weights do ---------------------------------------------------------------

def pruned_weights_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Magnitude pruning's frontier per ``pruned_weights`` mode, when the runs tried more than
    one: "update" (masked weights get a straight-through gradient and may regrow) against
    "keep" (TF model_pruning: no gradient, values kept) or "drop"."""
    if scope.source != "ours":
        return None
    runs = [r for r in _finished(ctx.scope_runs(scope)) if r.technique == "magnitude"]
    modes = {r.hyperparameters.get("pruned_weights", "update") for r in runs}
    if len(modes) < 2:
        return None
    metric, higher = _metric_of(runs)
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
        rows.append([f"{100 * level:g}", *[_cell(cells[n], metric) if n in cells else "–"
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


# ---- sparse vs small dense ----------------------------------------------------------------

def small_dense_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Each small dense model beside the sparse model whose nonzero count it matches."""
    if scope.source != "ours":
        return None
    runs = _finished(ctx.scope_runs(scope))
    small = [r for r in runs if r.technique == "small-dense"]
    if not small:
        return None
    by_id = {r.id: r for r in runs}
    metric, higher = _metric_of(runs)
    rows, sentences, pairs = [], [], []
    for run in sorted(small, key=lambda r: r.hyperparameters.get("matched_sparsity", 0)):
        sparse = by_id.get(run.hyperparameters.get("matched_run", ""))
        if sparse is None or sparse.metric_value is None or run.metric_value is None:
            continue
        hp = run.hyperparameters
        nonzero, params = hp.get("matched_nonzero"), hp.get("parameters")
        rows.append([f"{100 * (sparse.achieved_sparsity or 0):.1f}", sparse.id, nonzero,
                     _cell(sparse.metric_value, metric), run.variant, params,
                     _cell(run.metric_value, metric)])
        pairs.append((nonzero, sparse.metric_value, params, run.metric_value))
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
    k = 100.0 if metric == "top1" else 1.0
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.subplots()
    pairs.sort()
    ax.plot([p[0] for p in pairs], [k * p[1] for p in pairs], "o-", label="sparse (magnitude)")
    ax.plot([p[2] for p in pairs], [k * p[3] for p in pairs], "s--", label="small dense")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (nonzero)")
    ax.set_ylabel(P.metric_label(metric))
    ax.set_title(f"{scope.title}: sparse vs small dense at equal parameters")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{scope.key}_small_dense.png"
    _save(fig, ctx.out_dir / name)
    return Section(
        id=f"{scope.key}-small-dense", title=f"{scope.title}: sparse vs small dense",
        question="At equal parameter count, is a large sparse model better than a small dense "
                 "one?",
        sentences=sentences, figures=[(name, "sparse vs small dense")],
        tables=[Table(f"{scope.key}_small_dense", ["sparsity %", "sparse run", "nonzeros",
                                                   "sparse", "small dense", "parameters",
                                                   "dense"], rows,
                      f"{P.metric_label(metric)}; nonzeros counted on the finalized weights.")])


# ---- off-target runs ----------------------------------------------------------------------

def off_target_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Runs whose achieved sparsity misses their target by more than the tolerance."""
    if scope.source != "ours":
        return None
    targeted = [r for r in ctx.scope_runs(scope) if r.target_sparsity is not None
                and r.achieved_sparsity is not None and r.status == "finished"]
    if not targeted:
        return None
    missed = P.off_target(targeted, tolerance=ctx.tolerance_pp / 100)
    rows = [[r.id, P.display_name(r.technique), f"{100 * r.target_sparsity:.2f}",
             f"{100 * r.achieved_sparsity:.2f}",
             f"{100 * (r.achieved_sparsity - r.target_sparsity):+.2f}"] for r in missed]
    sentence = (f"All {len(targeted)} runs with a target reached it within "
                f"{ctx.tolerance_pp:g} pp." if not missed else
                f"{len(missed)} of {len(targeted)} runs with a target miss it by more than "
                f"{ctx.tolerance_pp:g} pp; the report places them at their achieved sparsity.")
    return Section(
        id=f"{scope.key}-off-target", title=f"{scope.title}: runs off their target sparsity",
        sentences=[sentence],
        tables=[Table(f"{scope.key}_off_target", ["run", "technique", "target %",
                                                  "achieved %", "gap pp"], rows,
                      "Runs whose achieved sparsity misses the target.")] if rows else [])


# ---- the sweep files ----------------------------------------------------------------------

def sweep_definition_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The sweep files that produced the runs of this scope, as recorded by the sweep."""
    if scope.source != "ours":
        return None
    from .sweep import sweep_definitions

    runs = ctx.scope_runs(scope) + ctx.scope_runs(scope, structured=True)
    names = {r.sweep for r in runs if r.sweep}
    definitions = {n: t for n, t in sweep_definitions(ctx.store).items() if n in names}
    if not definitions:
        return None
    rows = [[name, len([r for r in runs if r.sweep == name]), text]
            for name, text in sorted(definitions.items())]
    # Shown as text: in a table cell the YAML's line breaks and indents collapse into one
    # paragraph. The CSV keeps the same rows.
    return Section(id=f"{scope.key}-sweeps", title=f"{scope.title}: sweep definitions",
                   texts=[(f"{name} ({count} runs)", text) for name, count, text in rows],
                   tables=[Table(f"{scope.key}_sweeps", ["sweep", "runs", "file"], rows,
                                 "The sweep files as run (YAML), as a table:", shown=False)])


#: Appended to the report's builders, in this order, after the colleague's sections.
OUR_SECTION_BUILDERS = [per_layer_section, pruned_weights_section, training_cost_section,
                        mp_v2_section, small_dense_section, off_target_section,
                        sweep_definition_section]


def _register() -> None:
    from .report import register_section

    for index, builder in enumerate(OUR_SECTION_BUILDERS):  # after the questions' (10-40)
        register_section(builder, order=50 + index)


_register()
