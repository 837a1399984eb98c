"""The figures of the report's sections that only our own runs have, drawn like those of
:mod:`.figures` (same colours, Agg renderer, PNG written atomically by :func:`.figures.save_png`):

* :func:`per_layer_figure`: each layer's sparsity in the best model of each technique.
* :func:`training_cost_figure`: wall-clock per step relative to magnitude pruning, per
  activation layout, beside the study's quoted ratios.
* :func:`small_dense_figure`: sparse models against small dense ones of equal parameters.
* :func:`sampling_figure`: a language model's sampling speed against its nonzero weights.
* :func:`block_figure`: quality against block size (the price) beside each model's inference
  speed-up (the reward), at one target sparsity.
* :func:`inference_figure`: the inference speed-up of the best sparse models per batch size.
* :func:`break_even_figure`: each layer's density against the performance model's break-even.
* :func:`budget_figure`: issue 28's gaps to magnitude pruning against the training budget.
* :func:`one_shot_figure`: one-shot pruning of trained models against pruning while training.

Each returns the path of the PNG it wrote. Top-1 is drawn in percent.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..methods.catalogue import DENSE
from .budget import BudgetGap
from .figures import MARKERS, colours, save_png, series_order
from .pareto import Summary, display_name, format_metric, metric_label

__all__ = [
    "block_figure",
    "break_even_figure",
    "budget_figure",
    "inference_figure",
    "one_shot_figure",
    "per_layer_figure",
    "sampling_figure",
    "small_dense_figure",
    "training_cost_figure",
]


def _scale(metric: str) -> float:
    # The store holds top-1 as a fraction; the figures read it in percent.
    return 100.0 if metric == "top1" else 1.0


def per_layer_figure(
    chosen: Mapping[str, tuple[float, Sequence[Mapping[str, Any]]]],
    names: Sequence[str],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draws the sparsity of each layer in ``names`` (x, in order) as bars, one per technique of
    ``chosen`` (technique -> (its model's achieved sparsity, its per-layer report)); a layer a
    model does not report is drawn at 0. Returns the PNG path."""
    fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 3), 4.2))
    ax = fig.subplots()
    width = 0.8 / len(chosen)
    colour_of = colours(list(chosen))
    for index, (technique, (sparsity, layers)) in enumerate(chosen.items()):
        by_name = {la["name"]: la for la in layers}
        xs = [i + (index - (len(chosen) - 1) / 2) * width for i in range(len(names))]
        ys = [100 * by_name[n]["sparsity"] if n in by_name else 0.0 for n in names]
        ax.bar(xs, ys, width=width, color=colour_of[technique],
               label=f"{display_name(technique)} ({100 * sparsity:.1f}%)")
    ax.set_xticks(range(len(names)), [n.removesuffix(".weight") for n in names],
                  rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8
                  else "center", fontsize=8)
    ax.set_ylabel("layer sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


def training_cost_figure(
    order: Sequence[str],
    ratios: Mapping[str, Mapping[str, float]],
    quoted: Mapping[str, float],
    path: str | Path,
    *,
    title: str,
    note: str,
) -> Path:
    """Draws, per technique of ``order``, its wall-clock per step over magnitude pruning's in
    each activation layout (``ratios``: layout -> technique -> ratio; a technique missing in a
    layout is drawn at 0) beside the study's ``quoted`` ratios (grey), with ``note`` (what the
    times include) under the axis: a figure travels without the sentences beside it. Returns
    the PNG path."""
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    xs = range(len(order))
    layouts = list(ratios)
    width = 0.8 / (len(layouts) + 1)
    bar_colours = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    for i, layout in enumerate(layouts):
        ax.bar([x + (i - len(layouts) / 2) * width for x in xs],
               [ratios[layout].get(t, 0.0) for t in order], width=width,
               color=bar_colours[i % len(bar_colours)],
               label=f"ours: wall-clock per step, whole runs ({layout})")
    ax.bar([x + len(layouts) / 2 * width for x in xs],
           [quoted.get(t, 0.0) for t in order], width=width,
           label="study (Transformer), quoted", color="#bbbbbb")
    ax.axhline(1.0, color="black", linewidth=1.0, linestyle=":")
    ax.set_xticks(list(xs), [display_name(t) for t in order], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("wall-clock per step / magnitude pruning's")
    ax.set_title(title)
    ax.set_xlabel(textwrap.fill(note, 95), fontsize=7.5, color="#555555")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def small_dense_figure(
    series: Mapping[str, Sequence[tuple[int, float, float, float]]],
    path: str | Path,
    *,
    metric: str,
    title: str,
) -> Path:
    """Draws the metric against the nonzero parameter count (log axis), one line per series
    (sparse models, small dense ones, block-sparse ones, the full dense model): ``series``
    maps a label to points (nonzeros, mean, min, max) over the seeds, drawn as the mean with
    the seeds' range as an error bar. Returns the PNG path."""
    k = _scale(metric)
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.subplots()
    styles = ("o-", "s--", "^-.", "D:")
    for (label, points), style in zip(series.items(), styles * len(series), strict=False):
        points = sorted(points)
        xs = [p[0] for p in points]
        means = [k * p[1] for p in points]
        below = [k * (p[1] - p[2]) for p in points]
        above = [k * (p[3] - p[1]) for p in points]
        ax.errorbar(xs, means, yerr=[below, above], fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (nonzero)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def block_figure(
    labels: Sequence[str],
    values: Sequence[float],
    speedups: Mapping[int, Sequence[float | None]],
    path: str | Path,
    *,
    metric: str,
    target: float,
    baseline: Summary | None,
    title: str,
) -> Path:
    """Draws, for the models of one ``target`` sparsity (one per block size, named in
    ``labels``), their metric ``values`` as bars beside the dense ``baseline`` (left), and
    their inference speed-up at each batch (right; ``speedups``: batch -> speed-up per model,
    None where not timed). Returns the PNG path."""
    k = _scale(metric)
    fig = Figure(figsize=(11.0, 4.0))
    left, right = fig.subplots(1, 2)
    points = [k * v for v in values]
    left.bar(range(len(labels)), points, color="#4c72b0")
    if baseline is not None:
        left.axhline(k * baseline.mean, color="black", ls="--", lw=1,
                     label=f"dense ({format_metric(baseline.mean, metric)})")
        left.legend(fontsize=8, loc="lower left")
    spread = max(points) - min(points)
    # Accuracy and BLEU are never negative: a collapsed run must not push the axis below 0.
    left.set_ylim(max(0.0, min(points) - max(0.15 * spread, 1.0)), max(points + [
        k * baseline.mean if baseline else max(points)]) + 0.5)
    left.set_xticks(range(len(labels)), labels)
    left.set_xlabel("block (rows x columns)")
    left.set_ylabel(metric_label(metric))
    left.set_title(f"quality at {100 * target:g}% sparsity")
    left.grid(True, axis="y", alpha=0.3)
    for batch, ys in speedups.items():
        right.plot([i for i, y in enumerate(ys) if y is not None],
                   [y for y in ys if y is not None], "o-", label=f"batch {batch}")
    right.axhline(1.0, color="black", ls="--", lw=1)
    right.set_xticks(range(len(labels)), labels)
    right.set_xlabel("block (rows x columns)")
    right.set_ylabel("dense time / sparse time (this model)")
    right.set_title("inference speed-up on this machine")
    right.grid(True, alpha=0.3)
    if speedups:
        right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def sampling_figure(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draws characters per second against nonzero weights, log-log, one line per series
    (``series``: name -> [(nonzeros, characters per second)]). Returns the PNG path."""
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.subplots()
    for i, (name, points) in enumerate(series.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], MARKERS[i % len(MARKERS)] + "-",
                label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nonzero weights (sparsified layers)")
    ax.set_ylabel("characters per second, batch 1")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def inference_figure(
    models: Sequence[tuple[str, float]],
    speedups: Mapping[int, Sequence[float]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draws each model's inference speed-up (dense time over sparse time) as bars, one per
    batch size (``speedups``: batch -> speed-up per model, 0 where not timed); ``models``
    holds each model's technique and achieved sparsity, in x order. Returns the PNG path."""
    fig = Figure(figsize=(max(6.5, 0.9 * len(models) + 3), 4.0))
    ax = fig.subplots()
    width = 0.8 / max(1, len(speedups))
    for i, (batch, ys) in enumerate(speedups.items()):
        xs = [j + (i - (len(speedups) - 1) / 2) * width for j in range(len(models))]
        ax.bar(xs, ys, width=width, label=f"batch {batch}")
    ax.axhline(1.0, color="black", ls="--", lw=1)
    # Wrapped: "magnitude pruning v2" beside its neighbour would run into it.
    ax.set_xticks(range(len(models)), [f"{textwrap.fill(display_name(technique), 12)}\n"
                                       f"{100 * sparsity:.1f}%" for technique, sparsity in models],
                  fontsize=8)
    ax.set_ylabel("dense time / sparse time")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def break_even_figure(
    plans: Mapping[int, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draws each layer's density (of the first batch's plan) against the performance model's
    break-even density at each batch (``plans``: batch -> per-layer plan rows with "name",
    "density" and "break_even"; below a line the sparse kernel wins, Park et al.'s "sweet
    spot"). Returns the PNG path."""
    first = next(iter(plans.values()))
    names = [row["name"] for row in first]
    fig = Figure(figsize=(max(7.0, 0.28 * len(names) + 3), 4.2))
    ax = fig.subplots()
    xs = range(len(names))
    ax.plot(xs, [row["density"] for row in first], "ko", ms=4, label="layer density")
    for batch, plan in plans.items():
        ax.plot(xs, [row["break_even"] for row in plan], "-", marker=".",
                label=f"break-even at batch {batch}")
    ax.set_xticks(list(xs), [n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("density (fraction of nonzeros)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return save_png(fig, path)


def budget_figure(
    gaps: Sequence[BudgetGap],
    dense: Mapping[int, Summary],
    path: str | Path,
    *,
    paper: Mapping[str, float] | None = None,
    title: str = "",
) -> Path:
    """Draws issue 28's question: each arm's gap to magnitude pruning against the step budget,
    in top-1 points (left) and test loss (middle, inverted so better is up), each point its
    mean over seeds with bars over the arm's seed range (against the reference's mean), a zero
    line, and the paper's gap at its converged budget as a dashed line in the arm's colour
    (top-1 only: the study published no ResNet-50 losses); right, the dense model's test top-1
    against the budget, so a reader sees how far from converged each budget is. Gaps of one
    target sparsity only. Returns the PNG path."""
    if len({g.target for g in gaps}) > 1:
        raise ValueError("budget_figure draws the gaps of one target sparsity.")
    arms = sorted({g.comparison for g in gaps}, key=series_order)
    colour_of = colours(arms)
    fig = Figure(figsize=(14.0, 4.4))
    top1, loss, converge = fig.subplots(1, 3)
    budgets = sorted({g.budget for g in gaps} | set(dense))
    for ax, measure in ((top1, "top1"), (loss, "loss")):
        for index, arm in enumerate(arms):
            cells = sorted((g for g in gaps if g.comparison == arm and g.measure == measure),
                           key=lambda g: g.budget)
            if not cells:
                continue
            # Side by side within a budget: a few percent of the budget apart on a log axis.
            xs = [g.budget * (1 + 0.04 * (index - (len(arms) - 1) / 2)) for g in cells]
            means = [g.gap for g in cells]
            lower = [max(0.0, g.gap - g.scale * (g.arm.min - g.reference.mean)) for g in cells]
            upper = [max(0.0, g.scale * (g.arm.max - g.reference.mean) - g.gap) for g in cells]
            ax.errorbar(xs, means, yerr=[lower, upper], fmt=MARKERS[index % len(MARKERS)] + "-",
                        color=colour_of[arm], capsize=3, markersize=5, linewidth=1.2,
                        label=f"{display_name(arm)} - magnitude (n={max(g.arm.n for g in cells)})")
            if measure == "top1" and paper and arm in paper:
                ax.axhline(paper[arm], color=colour_of[arm], linestyle="--", linewidth=0.9,
                           label=f"paper, converged: {display_name(arm)} ({paper[arm]:+.1f})")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
        ax.set_xlabel("training steps (budget)")
        ax.grid(True, alpha=0.3)
    top1.set_ylabel("gap in test top-1 (points; above 0: ahead of magnitude)")
    loss.set_ylabel("gap in test loss (nats; drawn inverted: up is better)")
    loss.invert_yaxis()
    top1.legend(fontsize=7, loc="best")
    if dense:
        points = sorted(dense.items())
        xs = [b for b, _ in points]
        means = [100 * s.mean for _, s in points]
        converge.errorbar(xs, means, yerr=[[100 * (s.mean - s.min) for _, s in points],
                                           [100 * (s.max - s.mean) for _, s in points]],
                          fmt="o-", color=colours([DENSE])[DENSE], capsize=3,
                          label="dense (mean, seed range)")
        converge.set_xscale("log", base=2)
        converge.set_xticks(xs, [f"{b:,}" for b in xs])
        converge.legend(fontsize=7)
    converge.set_xlabel("training steps (budget)")
    converge.set_ylabel("dense test top-1 (%)")
    converge.grid(True, alpha=0.3)
    target = f" at {100 * gaps[0].target:g}%" if gaps else ""
    fig.suptitle(title or f"Does the budget explain the gaps{target}?")
    fig.tight_layout()
    return save_png(fig, path)


def one_shot_figure(
    panels: Sequence[tuple[str, bool, Mapping[str, Mapping[float, Summary]],
                           Mapping[float, tuple[str, float]], Summary | None]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draws one panel per measure (metric name, higher is better, series, joint, dense): each
    one-shot series' mean over the dense models it pruned against the target sparsity, with
    their range as bars (a fine-tuned variant dashed, in its technique's colour); the best
    run of any technique that prunes while it trains at each level, in black, its technique
    written where the leader changes; the dense models' mean as a dotted line. A
    lower-is-better axis is inverted, as in the report's other loss figures, so better is
    always up. Returns the PNG path."""
    fig = Figure(figsize=(6.2 * len(panels), 5.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, higher, series, joint, dense) in zip(axes, panels, strict=True):
        k = _scale(metric)
        names = sorted(series, key=series_order)
        plain = {n.split(" ", 1)[0] for n in names}
        colour_of = colours(sorted(plain, key=series_order))
        for index, name in enumerate(names):
            cells = sorted(series[name].items())
            xs = [100 * level for level, _ in cells]
            means = [k * s.mean for _, s in cells]
            ax.errorbar(xs, means, yerr=[[k * (s.mean - s.min) for _, s in cells],
                                         [k * (s.max - s.mean) for _, s in cells]],
                        fmt=MARKERS[index % len(MARKERS)] + ("-" if name in plain else "--"),
                        color=colour_of[name.split(" ", 1)[0]], capsize=3, markersize=5,
                        label=f"{display_name(name)} (n={max(s.n for _, s in cells)})")
        points = sorted(joint.items())
        ax.plot([100 * level for level, _ in points], [k * v for _, (_, v) in points], "k*-",
                markersize=9, linewidth=1.6, label="best run pruning while training")
        previous = None
        for level, (technique, value) in points:
            if technique != previous:  # a run of levels led by one technique: named once
                ax.annotate(display_name(technique), (100 * level, k * value), fontsize=6,
                            textcoords="offset points", xytext=(3, 5))
            previous = technique
        if dense is not None:
            ax.axhline(k * dense.mean, color="grey", linestyle=":",
                       label=f"dense (mean of {dense.n})")
        ax.set_xlabel("target sparsity (%)")
        if higher:
            ax.set_ylabel(f"test {metric_label(metric)} (higher is better)")
        else:  # as the report's other loss figures: better is up
            ax.set_ylabel(f"test {metric_label(metric)} (lower is better, drawn upward)")
            ax.invert_yaxis()
        ax.grid(True, alpha=0.3)
        # Below the axes: the curves fill every corner between 50 and 98%.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
