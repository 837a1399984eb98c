"""The report's per-layer section for our runs: how each technique spreads its sparsity across
the layers of its best model at the headline levels (read from each run's layer report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...methods import catalogue
from .. import pareto as P
from ..our_figures import per_layer_figure
from ..store import Run
from .shared import (
    HEADLINE_LEVELS,
    ReportContext,
    Scope,
    Section,
    Table,
    finished,
    metric_of,
    run_layers,
)

__all__ = ["per_layer_section"]



def _best_per_level(runs: Sequence[Run], level: float, tolerance_pp: float,
                    higher: bool) -> Run | None:
    inside = [r for r in runs if r.achieved_sparsity is not None and r.metric_value is not None
              and P.nearest_level(r.achieved_sparsity, tolerance_pp=tolerance_pp) == level]
    if not inside:
        return None
    return max(inside, key=lambda r: r.metric_value if higher else -r.metric_value)


def _best_models(runs: Sequence[Run], level: float, tolerance_pp: float, higher: bool
                 ) -> dict[str, tuple[Run, list[dict[str, Any]]]]:
    """Returns, per technique with a model at ``level``, its best model and the layers it
    sparsifies: biases and norms stay dense, so only weights (and anything sparse) count."""
    chosen: dict[str, tuple[Run, list[dict[str, Any]]]] = {}
    # The techniques of the frontiers, in the catalogue's order: those that sparsify while
    # training, then those that prune a trained model once (rows that store their layers).
    for technique in catalogue.on_frontiers():
        # At the study's budget: a sweep's variant ("4x steps") is not this technique's model.
        # Of the runs that kept their layer report (one-shot rows stored before it did not).
        own = [r for r in runs if r.technique == technique and not r.variant and run_layers(r)]
        best = _best_per_level(own, level, tolerance_pp, higher)
        all_layers = run_layers(best) if best else []
        layers = [la for la in all_layers if la.get("sparsity", 0) > 0
                  or la["name"].endswith("weight")]
        if best and layers:  # a report of biases and norms alone has nothing to draw
            chosen[technique] = (best, layers)
    return chosen


def per_layer_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The sparsity of each layer in the best model of each technique at 90% and 95%, as a
    bar chart by layer (read from each run's result.json)."""
    if scope.source != "ours":
        return None
    runs = finished(ctx.scope_runs(scope))
    metric, higher = metric_of(runs)
    figs, rows, sentences = [], [], []
    for level in HEADLINE_LEVELS:
        chosen = _best_models(runs, level, ctx.tolerance_pp, higher)
        if not chosen:
            continue
        names = list(dict.fromkeys(la["name"] for _, ls in chosen.values() for la in ls))
        for technique, (run, layers) in chosen.items():
            by_name = {la["name"]: la for la in layers}
            for layer in names:
                if layer in by_name:
                    la = by_name[layer]
                    rows.append([f"{100 * level:g}", P.display_name(technique), run.id, layer,
                                 la["size"], la["nonzeros"], f"{100 * la['sparsity']:.2f}"])
            spread = [by_name[n]["sparsity"] for n in names if n in by_name]
            sentences.append(
                f"At {100 * level:g}%, the best {P.display_name(technique)} model "
                f"({P.format_metric(run.metric_value, metric)}) has layers from "
                f"{100 * min(spread):.1f}% to {100 * max(spread):.1f}% sparse.")
        name = f"{scope.key}_layers_{100 * level:g}.png"
        per_layer_figure({t: (run.achieved_sparsity, layers)
                          for t, (run, layers) in chosen.items()}, names, ctx.out_dir / name,
                         title=f"{scope.title}: per-layer sparsity of the best model at "
                               f"{100 * level:g}%")
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
