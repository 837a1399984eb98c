"""The study's figures, drawn with matplotlib's Agg renderer (no display, no pyplot state).

* :func:`frontier_figure`: top panel, each technique's frontier against sparsity with the dense
  baseline as a horizontal line; bottom panel, every run as a scatter (as in the study).
* :func:`retraining_figure`: scratch-e / scratch-b / lottery / augmented, mean with min/max bars
  over replicas, against the magnitude-pruning frontier.
* :func:`relative_frontiers_figure`: a published frontier beside the user's own, both as a
  fraction of their own dense baseline, so the shapes compare although the tasks differ.
* :func:`loss_frontier_figure`: each technique's frontier in test loss (lower is better, so
  the axis runs downward), every run behind it and the dense replicas' range as a band.

Each returns the path of the PNG it wrote (atomically). Top-1 is drawn in percent. The figures
of the sections only our own runs have are in :mod:`.our_figures`, with the same colours
(:func:`colours`) and writer (:func:`save_png`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from .._io import atomic_write_bytes
from ..methods import catalogue
from .pareto import Frontier, Point, Summary, display_name, metric_label

__all__ = [
    "MARKERS",
    "collapsed_runs",
    "colours",
    "frontier_figure",
    "loss_axis_cap",
    "loss_frontier_figure",
    "relative_frontiers_figure",
    "retraining_figure",
    "save_png",
    "series_order",
]

_EXTRA = ("#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def colours(series: Sequence[str]) -> dict[str, str]:
    """Returns a colour per series: the technique's own, or a spare one for each variant after
    the first of a technique, so two variants never share a colour."""
    out: dict[str, str] = {}
    used: set[str] = set()
    spare = iter(_EXTRA * 4)
    for name in series:
        technique = catalogue.find(name.split(" ", 1)[0])
        colour = technique.colour if technique is not None else None
        if colour is None or colour in used:
            colour = next(spare)
        used.add(colour)
        out[name] = colour
    return out


def _scale(metric_name: str) -> float:
    # The store holds top-1 as a fraction; the study's figures read it in percent.
    return 100.0 if metric_name == "top1" else 1.0


def save_png(fig: Figure, path: str | Path) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (atomically), as every report figure is written;
    returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


#: The frontier figures' sparsity axis starts here (the study's range is 50-98%).
_X_FROM = 45.0


def _lower_limit(series_values: Sequence[Sequence[float]], baseline: float | None) -> float | None:
    """Returns a y lower limit that keeps the informative range readable. A series whose best
    value is under half of the dense baseline (chance-level L0 on ResNet-50) would squash every
    other line into a sliver, so it falls below the axis and is named in a note instead; every
    point of the other series stays in view."""
    if baseline is None or baseline <= 0:
        return None
    kept = [v for values in series_values if values and max(values) >= 0.5 * baseline
            for v in values]
    if not kept:
        return None
    low = min(kept)
    return low - 0.05 * (max(max(kept), baseline) - low + 1e-9)


def _with_edge(low: float | None, top: float, any_off: bool) -> tuple[float | None,
                                                                      float | None]:
    """Returns (axis bottom, edge): with values to draw off the scale (``any_off``), the edge
    where they sit is the old bottom ``low`` and the axis reaches a little under it; else
    the bottom stays ``low`` and there is no edge."""
    if low is None or not any_off:
        return low, None
    return low - 0.04 * max(top - low, 1e-9), low


# Over 80 lines: both panels share one axis range (low, edge) and collapsed-run rule.
def frontier_figure(
    frontiers: Mapping[str, Frontier],
    points: Sequence[Point],
    path: str | Path,
    *,
    metric_name: str,
    baseline: Summary | None = None,
    title: str = "",
    collapsed: Collection[str] = (),
) -> Path:
    """Draws the study's two-panel figure: frontiers per series (top) and all runs (bottom),
    with the dense baseline's mean as a horizontal line. The runs whose ``train_id`` is in
    ``collapsed`` (:func:`collapsed_runs`: a network that fell apart in training) sit on
    each panel's bottom edge, a frontier point there labelled with its value, so the axis
    spans the runs that trained. Returns the PNG path."""
    k = _scale(metric_name)
    names = sorted(frontiers, key=series_order)
    colour_of = colours(names)
    # The frontiers' panel is the taller: its gaps of a point or less are what it is read for.
    fig = Figure(figsize=(8.0, 9.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    base = baseline.mean * k if baseline else None
    sound = {name: [fp.value * k for fp in f.values() if fp.train_id not in collapsed]
             for name, f in frontiers.items()}
    sound_values = [v for values in sound.values() for v in values]
    off = [(name, fp) for name, f in frontiers.items() for fp in f.values()
           if fp.train_id in collapsed]
    ceiling = max(sound_values + ([base] if base is not None else []), default=0.0)
    low, edge = _with_edge(_lower_limit(list(sound.values()), base), ceiling, bool(off))
    hidden = []
    for index, name in enumerate(names):
        levels = sorted(frontiers[name])
        xs = [100 * lv for lv in levels]
        ys = [edge if edge is not None and frontiers[name][lv].train_id in collapsed
              else frontiers[name][lv].value * k for lv in levels]
        top.plot(xs, ys, marker=MARKERS[index % len(MARKERS)], color=colour_of[name],
                 label=display_name(name), linewidth=1.8)
        if low is not None and sound[name] and max(sound[name]) < low:
            hidden.append(f"{display_name(name)} (best {max(sound[name]):.2f})")
    for name, fp in off:  # a frontier point on the edge says what it is
        if edge is not None:
            top.annotate(f"{fp.value * k:.3g}", (100 * fp.level, edge), xytext=(6, -2),
                         textcoords="offset points", ha="left", fontsize=7,
                         color=colour_of[name])
    if base is not None:
        top.axhline(base, color="black", linestyle="--", linewidth=1.2,
                    label=f"dense ({base:.2f}, n={baseline.n})")
    if low is not None:
        top.set_ylim(bottom=low, top=ceiling + 0.02 * abs(base))
    notes = [f"below the axis: {'; '.join(hidden)}"] if hidden else []
    if edge is not None:
        notes.append(f"{len(off)} collapsed frontier point{'s' if len(off) > 1 else ''} "
                     "(test loss over 5x dense) drawn at the bottom edge, labelled")
    if notes:  # under the panel, where no line or legend can hide it
        top.set_xlabel("; ".join(notes), fontsize=8, color="#555555")
    top.set_ylabel(metric_label(metric_name))
    top.set_title(title or "Pareto frontier per technique")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8, loc="lower left" if not hidden else "center left")

    by_series: dict[str, list[Point]] = {}
    for point in points:
        by_series.setdefault(point.series, []).append(point)
    values = [p.value * k for p in points]
    sound_runs = [p.value * k for p in points if p.train_id not in collapsed]
    off_runs = len(values) - len(sound_runs)
    low_all = edge_all = None
    if low is not None:
        # The frontiers' range, widened to every run above half the dense baseline: a run
        # below the frontier is what this panel is for. Chance-level runs stay below.
        low_runs = _lower_limit([[v] for v in sound_runs], base)
        low_all, edge_all = _with_edge(
            (edge if edge is not None else low) if low_runs is None
            else min(edge if edge is not None else low, low_runs),
            max(sound_runs + [base]), bool(off_runs))
    for name in sorted(by_series, key=series_order):
        pts = by_series[name]
        bottom.scatter([100 * p.sparsity for p in pts],
                       [edge_all if edge_all is not None and p.train_id in collapsed
                        else p.value * k for p in pts], s=9, alpha=0.45,
                       color=colour_of.get(name, "#7f7f7f"), label=display_name(name),
                       edgecolors="none")
    if base is not None:
        bottom.axhline(base, color="black", linestyle="--", linewidth=1.0)
    subtitle = f"All {len(values)} runs"
    notes = []
    if low_all is not None:
        bottom.set_ylim(bottom=low_all, top=max(sound_runs + [base]) + 0.02 * abs(base))
        if edge_all is not None:
            notes.append(f"{off_runs} collapsed at the bottom edge")
        below = sum(v < low_all for v in sound_runs)
        if below:
            notes.append(f"{below} below the axis: failed or chance-level")
    left = sum(100 * p.sparsity < _X_FROM for p in points)
    if left:
        notes.append(f"{left} left of it: under {_X_FROM:g}% sparsity")
    if notes:
        subtitle += f" ({'; '.join(notes)})"
    bottom.set_xlabel("sparsity (%)")
    bottom.set_ylabel(metric_label(metric_name))
    bottom.set_title(subtitle, fontsize=10)
    bottom.set_xlim(_X_FROM, 100)
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8, loc="lower left", markerscale=2)
    fig.tight_layout()
    return save_png(fig, path)


def collapsed_runs(losses: Mapping[str, float], baseline: float | None) -> set[str]:
    """Returns the keys (train ids) of ``losses`` (test losses) that mark a collapsed run, by
    the loss figure's rule (:func:`loss_axis_cap`): over :data:`OFF_SCALE_FACTOR` times the
    dense mean ``baseline`` (the lower median without one), or not finite. A low top-1 or
    BLEU alone cannot tell a network that fell apart from one that is merely weak."""
    finite = sorted(v for v in losses.values() if math.isfinite(v))
    if not finite:
        return set()
    reference = (baseline if baseline is not None and baseline > 0
                 else finite[(len(finite) - 1) // 2])
    return {key for key, v in losses.items()
            if not math.isfinite(v) or v > OFF_SCALE_FACTOR * reference}


#: A test loss over this many times the reference (the dense mean, else the median run) is a
#: collapsed run: the image task's chance level (ln 10 = 2.30 nats) is 5.7x its dense loss,
#: and a collapsed network's BatchNorm statistics can put its loss anywhere up to 1e16.
OFF_SCALE_FACTOR = 5.0


def loss_axis_cap(values: Sequence[float], baseline: float | None) -> float | None:
    """Returns the worst test loss the loss axis shows, or None when every value fits: losses
    over :data:`OFF_SCALE_FACTOR` times ``baseline`` (the dense mean; the median of
    ``values`` without one) are drawn at the axis's edge, so one collapsed run does not
    flatten every frontier into a line."""
    finite = sorted(v for v in values if v == v and v not in (float("inf"), float("-inf")))
    if not finite:
        return None
    # The lower median: of two runs, one collapsed, the sound one is the reference.
    reference = (baseline if baseline is not None and baseline > 0
                 else finite[(len(finite) - 1) // 2])
    if reference <= 0:
        return None
    cap = OFF_SCALE_FACTOR * reference
    if finite[-1] <= cap:
        return None
    return max([v for v in finite if v <= cap] + [reference])


def loss_frontier_figure(
    frontiers: Mapping[str, Frontier],
    points: Sequence[Point],
    path: str | Path,
    *,
    baseline: Summary | None = None,
    unit: str = "nats",
    title: str = "",
) -> Path:
    """Draws each series' frontier in test loss against sparsity over every run's point, with
    the dense replicas' mean (dashed) and min-max range (band). The loss axis is inverted, so
    better is up as in the other figures; collapsed runs (:func:`loss_axis_cap`) sit on its
    bottom edge, a frontier point there labelled with its loss. Returns the PNG path."""
    names = sorted(frontiers, key=series_order)
    colour_of = colours(names)
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.subplots()
    shown = [p.value for p in points if 100 * p.sparsity >= _X_FROM]
    shown += [f.value for name in names for f in frontiers[name].values()]
    cap = loss_axis_cap(shown, baseline.mean if baseline is not None else None)
    edge = cap * 1.06 if cap is not None else None  # where off-scale values are drawn

    def place(value: float) -> float:
        return value if edge is None or value <= cap else edge

    for name in sorted({p.series for p in points}, key=series_order):
        pts = [p for p in points if p.series == name]
        ax.scatter([100 * p.sparsity for p in pts], [place(p.value) for p in pts], s=16,
                   alpha=0.5, color=colour_of.get(name, "#7f7f7f"), edgecolors="none")
    for index, name in enumerate(names):
        levels = sorted(frontiers[name])
        ax.plot([100 * lv for lv in levels], [place(frontiers[name][lv].value) for lv in levels],
                marker=MARKERS[index % len(MARKERS)], color=colour_of[name],
                label=display_name(name), linewidth=1.8)
        for level in levels:  # an off-scale frontier point says what it is
            value = frontiers[name][level].value
            if edge is not None and value > cap:
                ax.annotate(f"{value:.3g}", (100 * level, edge), textcoords="offset points",
                            xytext=(0, 7), ha="center", fontsize=7, color=colour_of[name])
    if baseline is not None:
        ax.axhspan(baseline.min, baseline.max, color="black", alpha=0.08, linewidth=0)
        ax.axhline(baseline.mean, color="black", linestyle="--", linewidth=1.2,
                   label=f"dense ({baseline.mean:.3f}, range {baseline.min:.3f}-"
                         f"{baseline.max:.3f}, n={baseline.n})")
    left = sum(100 * p.sparsity < _X_FROM for p in points)
    ax.set_xlim(_X_FROM, 100)
    notes = [f"{left} runs under {_X_FROM:g}% not shown"] if left else []
    if edge is not None:
        low = min(shown + ([baseline.min] if baseline is not None else []))
        ax.set_ylim(low - 0.04 * (edge - low), edge + 0.04 * (edge - low))
        off = sum(p.value > cap for p in points if 100 * p.sparsity >= _X_FROM)
        notes.append(f"{off} runs over {cap:.3g} drawn at the bottom edge")
    ax.invert_yaxis()
    ax.set_xlabel("sparsity (%)" + (f"  ({'; '.join(notes)})" if notes else ""))
    ax.set_ylabel(f"test loss ({unit}; lower is better, drawn upward)")
    ax.set_title(title or "Frontier per technique in test loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def retraining_figure(
    summaries: Mapping[str, Mapping[float, Summary]],
    reference: Frontier,
    path: str | Path,
    *,
    metric_name: str,
    baseline: Summary | None = None,
    reference_name: str | None = None,
    title: str = "",
    higher_is_better: bool = True,
    unit: str = "nats",
) -> Path:
    """Draws retraining series as mean markers with min/max bars over replicas, beside the
    ``reference`` frontier (of ``reference_name``, by default the catalogue's reference,
    magnitude pruning) and the dense baseline. A measure where lower
    is better (a test loss, in ``unit``) is drawn on an inverted axis, so that better is up
    as in every other figure. Returns the PNG path."""
    k = _scale(metric_name)
    names = sorted(summaries, key=series_order)
    reference_name = reference_name or catalogue.reference()
    colour_of = colours([reference_name, *names])
    fig = Figure(figsize=(10.0, 4.8))
    ax = fig.subplots()
    levels = sorted(reference)
    ax.plot([100 * lv for lv in levels], [reference[lv].value * k for lv in levels],
            color=colour_of[reference_name], linewidth=2.2, marker="o",
            label=f"{display_name(reference_name)} frontier")
    width = 1.6  # percentage points across which the series at one level are spread
    all_values = [reference[lv].value * k for lv in levels]
    for index, name in enumerate(names):
        offset = (index - (len(names) - 1) / 2) * width / max(len(names) - 1, 1)
        cells = sorted(summaries[name].items())
        xs = [100 * lv + offset for lv, _ in cells]
        means = [s.mean * k for _, s in cells]
        # Equal replicas (three runs at chance, say) can put the float mean a hair outside
        # [min, max]; matplotlib refuses a negative bar.
        lower = [max(0.0, (s.mean - s.min) * k) for _, s in cells]
        upper = [max(0.0, (s.max - s.mean) * k) for _, s in cells]
        all_values += [s.max * k for _, s in cells] + means
        # A min from a failed replica (BLEU 0) is left to run off the bottom of the plot.
        all_values += [s.min * k for _, s in cells
                       if baseline is None or s.min >= 0.5 * baseline.mean]
        ax.errorbar(xs, means, yerr=[lower, upper], fmt=MARKERS[(index + 1) % len(MARKERS)],
                    color=colour_of[name], capsize=3, markersize=5, linewidth=1.2,
                    label=f"{display_name(name)} (n={max(s.n for _, s in cells)})")
    base = baseline.mean * k if baseline else None
    if base is not None:
        digits = 2 if higher_is_better else 3  # a loss moves in the third decimal
        ax.axhline(base, color="black", linestyle="--", linewidth=1.0,
                   label=f"dense ({base:.{digits}f})")
        all_values.append(base)
    if higher_is_better:
        # Bars reaching a failed replica (BLEU 0) run off the bottom rather than flatten the
        # plot.
        low = _lower_limit([all_values], base)
        if low is not None:
            ax.set_ylim(bottom=low, top=max(all_values) + 0.02 * abs(base))
        ax.set_ylabel(metric_label(metric_name))
    else:
        # A collapsed replica's loss runs off the bottom edge likewise (loss_axis_cap).
        cap = loss_axis_cap(all_values, base)
        if cap is not None:  # all_values holds the dense mean too
            ax.set_ylim(bottom=min(all_values) * 0.99, top=cap * 1.06)
        ax.invert_yaxis()
        ax.set_ylabel(f"test loss ({unit}; lower is better, drawn upward)")
    ax.set_xlabel("sparsity (%)")
    ax.set_title(title or "Training the sparse architecture from scratch: mean, min/max bars")
    ax.grid(True, alpha=0.3)
    # Outside the axes: inside, it hides the bars of the lowest series.
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


def relative_frontiers_figure(
    published: Mapping[str, Frontier],
    published_baseline: Summary,
    ours: Mapping[str, Frontier],
    our_baseline: Summary,
    path: str | Path,
    *,
    published_label: str = "published",
    our_label: str = "ours",
    title: str = "",
) -> Path:
    """Draws two frontier tables as fractions of their own dense baselines: the published one
    dashed, ours solid, one colour per technique. Returns the PNG path."""
    names = sorted(set(published) | set(ours), key=series_order)
    colour_of = colours(names)
    fig = Figure(figsize=(8.0, 4.8))
    ax = fig.subplots()
    for table, baseline, style, label in ((published, published_baseline, "--", published_label),
                                          (ours, our_baseline, "-", our_label)):
        for name in names:
            if name not in table or not table[name]:
                continue
            levels = sorted(table[name])
            ax.plot([100 * lv for lv in levels],
                    [table[name][lv].value / baseline.mean for lv in levels],
                    linestyle=style, marker="o", markersize=4, color=colour_of[name],
                    label=f"{display_name(name)}, {label}")
    ax.axhline(1.0, color="black", linewidth=1.0, linestyle=":", label="dense = 1")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("fraction of its own dense baseline")
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    ax.set_title(title or f"Frontiers relative to dense: {our_label} vs {published_label}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", ncol=2)
    fig.tight_layout()
    return save_png(fig, path)


def series_order(series: str) -> tuple[int, str]:
    """Sorts series in the catalogue's order (MP, MP v2, VD, L0, random, then retraining
    kinds); the dense arms and unknown names come last, by name."""
    order = [t.name for t in catalogue.entries() if t.role != catalogue.BASELINE]
    technique = series.split(" ", 1)[0]
    return (order.index(technique) if technique in order else len(order), series)
