"""The report's training-cost section for our runs: seconds per step and total training time
per technique, as ratios to magnitude pruning, beside the study's quoted Transformer ratios."""

from __future__ import annotations

import statistics

from ...methods import catalogue
from .. import figures
from .. import pareto as P
from ..our_figures import training_cost_figure
from ..store import Run
from .shared import ReportContext, Scope, Section, Table, finished, run_layers

__all__ = ["training_cost_section"]

#: Training cost relative to magnitude pruning as the study reports it for the Transformer
#: (Gale et al. 2019, section 4.1): quoted from the paper's text, not measured here.

#: How the store names a run's activation layout (runs before the option were NCHW).
_LAYOUT_NAMES = {"contiguous_format": "NCHW", "channels_last": "channels-last"}


def _layout(run: Run) -> str:
    """Returns how the run trained, as far as its speed goes: the activation layout (of a
    convolutional model; others have none to choose), and the device when it was not the CPU
    (a study may go on on a GPU machine)."""
    device = run.device
    layers = run_layers(run)  # unknown (a row without them): possibly convolutional
    if layers and not any(layer.get("kind") == "conv" for layer in layers):
        return "CPU" if device == "cpu" else device
    layout = _LAYOUT_NAMES.get(run.flags.get("memory_format", "contiguous_format"),
                               str(run.flags.get("memory_format")))
    return layout if device == "cpu" else f"{layout}, {device}"


#: What a run's seconds per step hold, said wherever a ratio of them is shown.
_WHAT_TIMES_INCLUDE = ("Each ratio is of medians over whole runs' wall-clock time per step: "
                       "data loading, the first steps' warm-up and whatever else ran on the "
                       "machine at the time are included; evaluation is not.")


def _paper_cost_ratios() -> dict[str, float]:
    """Returns the training cost relative to magnitude pruning the study reports (its
    Transformer), per technique: the cheapest first."""
    ratios = {t.name: t.paper_cost_ratio for t in catalogue.entries() if t.paper_cost_ratio}
    return dict(sorted(ratios.items(), key=lambda item: item[1]))


def training_cost_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Seconds per step and total training time per technique and variant (medians over
    runs), as ratios to magnitude pruning, beside the study's Transformer ratios. Runs trained
    in different activation layouts (``run.memory_format``) run at different speeds, so each
    layout's runs are compared among themselves."""
    if scope.source != "ours":
        return None
    groups: dict[str, dict[str, list[Run]]] = {}
    for run in finished(ctx.scope_runs(scope)):
        if run.seconds_per_step and run.train_seconds:
            # By series: a variant trained differently (IMP at 4x the steps, a narrower small
            # dense model) has a cost of its own, which a median over both would blur.
            groups.setdefault(_layout(run), {}).setdefault(run.label, []).append(run)
    reference = catalogue.reference()
    groups = {layout: by for layout, by in groups.items() if reference in by and len(by) > 1}
    if not groups:
        return None
    step = {layout: {t: statistics.median(r.seconds_per_step for r in rs)
                     for t, rs in by.items()} for layout, by in groups.items()}
    total = {layout: {t: statistics.median(r.train_seconds for r in rs)
                      for t, rs in by.items()} for layout, by in groups.items()}
    techniques = {t for by in groups.values() for t in by}
    order = sorted(techniques, key=lambda t: (t != catalogue.DENSE, figures.series_order(t)))
    paper = _paper_cost_ratios()
    layouts = sorted(groups, key=lambda layout: -sum(len(rs) for rs in groups[layout].values()))
    rows, sentences = [], []
    for layout in layouts:
        by, st, tot = groups[layout], step[layout], total[layout]
        for t in (t for t in order if t in by):
            study = paper.get(t)
            rows.append([P.display_name(t), layout, len(by[t]), f"{1000 * st[t]:.2f}",
                         f"{st[t] / st[reference]:.2f}", f"{tot[t]:.1f}",
                         f"{tot[t] / tot[reference]:.2f}", f"{study:.2f}" if study else "–"])
    for t, study in paper.items():
        here = [f"{step[layout][t] / step[layout][reference]:.2f}x ({layout} runs, median "
                f"of {len(groups[layout][t])})" for layout in layouts if t in groups[layout]]
        if here:
            listed = ", ".join(here[:-1]) + (" and " if len(here) > 1 else "") + here[-1]
            sentences.append(f"{P.sentence_start(P.display_name(t))} runs took {listed} "
                             "magnitude pruning's wall-clock time per step here, against "
                             f"{study:.2f}x in the study's Transformer.")
    if len(layouts) > 1:
        sentences.append("Runs from before channels-last training (run.memory_format) were "
                         "NCHW and slower per step; each layout's runs are compared only with "
                         "its own magnitude runs.")
    sentences.append(_WHAT_TIMES_INCLUDE + " These ratios are not the techniques' cost "
                     "alone: benchmarks/training_step_cost.py --tasks times the steps side by "
                     "side in one process, in interleaved rounds, and is the measure to quote.")
    name = f"{scope.key}_cost.png"
    ratios = {layout: {t: s / step[layout][reference] for t, s in step[layout].items()}
              for layout in layouts}
    training_cost_figure(order, ratios, paper, ctx.out_dir / name,
                         title=f"{scope.title}: training cost relative to magnitude pruning",
                         note=_WHAT_TIMES_INCLUDE)
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
