"""Report sections on what sparsity buys at inference: the block-size trade-off (quality lost
to block structure beside the speed it gains, and a wider block-sparse model at the dense
model's nonzero count) and the inference speed of the best sparse models. Timings come from
the store's ``inference`` table (``sparsebench bench-runs``); a run not timed yet shows "–".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...methods import catalogue
from .. import pareto as P
from ..our_figures import block_figure, break_even_figure, inference_figure
from ..speed import block_of
from ..store import InferenceResult, Run
from .shared import (
    HEADLINE_LEVELS,
    ReportContext,
    Scope,
    Section,
    Table,
    cell,
    finished,
    metric_of,
)

__all__ = ["WORTH_IT_LOSS", "block_section", "inference_section"]

#: Most quality a block size may cost, in the metric's own points (top-1 percentage points
#: or BLEU), to count as "worth it" in the block section's sentence.
WORTH_IT_LOSS = 1.0
#: The same for a metric without points (bits per character, a loss): a share of the
#: unstructured model's value.
WORTH_IT_SHARE = 0.02
_POINTS = ("top1", "bleu")


def _width(run: Run) -> int | None:
    return ((run.config.get("model") or {}).get("options") or {}).get("width")


def _timings(ctx: ReportContext, runs: Sequence[Run]) -> dict[str, dict[int, InferenceResult]]:
    """Returns run id -> batch -> timing, at the thread count most runs were timed with."""
    rows = ctx.store.inference([r.id for r in runs])
    if not rows:
        return {}
    threads = max({r.threads for r in rows}, key=lambda t: sum(r.threads == t for r in rows))
    out: dict[str, dict[int, InferenceResult]] = {}
    for row in rows:
        if row.threads == threads:
            out.setdefault(row.run_id, {})[row.batch] = row
    return out


def _empty_layers(run: Run) -> int:
    """Returns how many of the run's sparsified layers have no nonzero weight left."""
    return sum(1 for layer in run.layers if layer.get("size") and layer.get("nonzeros") == 0)


def _pruned_layers(run: Run) -> int:
    """Returns how many reported layers have any zero: the ones the run sparsified (a layer
    left out of the selection, such as an embedding by default, has none)."""
    return sum(1 for layer in run.layers
               if layer.get("size") and (layer.get("nonzeros") or 0) < layer["size"])


def _untouched_layers(runs: list[Run]) -> list[str]:
    """Returns the reported layers some run of ``runs`` left fully dense (outside its pruned
    selection; older runs' lists did not report embeddings at all)."""
    return sorted({la["name"] for run in runs for la in run.layers
                   if la.get("size") and la.get("nonzeros") == la["size"]})


def _block_label(block: tuple[int, int]) -> str:
    return "unstructured" if block == (1, 1) else f"{block[0]}x{block[1]}"


def _points(metric: str, value: float) -> float:
    """Returns a metric in the points a reader compares: top-1 in percent, BLEU as is."""
    return 100.0 * value if metric == "top1" else value


def _worth_it_loss(metric: str, reference: float) -> float:
    """Returns the most a block size may lose against unstructured pruning (in ``_points``)
    and still be worth it: WORTH_IT_LOSS points, or WORTH_IT_SHARE of the reference for a
    metric without points."""
    return WORTH_IT_LOSS if metric in _POINTS else WORTH_IT_SHARE * abs(reference)


def _worth_limit(metric: str, reference: float) -> str:
    """Says the worth-it limit: "1 point", or "2% of 2.670 bpc"."""
    if metric in _POINTS:
        return f"{WORTH_IT_LOSS:g} point"
    return f"{100 * WORTH_IT_SHARE:g}% ({_amount(metric, _worth_it_loss(metric, reference))})"


def _amount(metric: str, loss: float) -> str:
    """Says a difference in the metric: "1.20 points of top-1 accuracy (%)", "0.14 bpc"."""
    if metric in _POINTS:
        return f"{loss:.2f} points of {P.metric_label(metric)}"
    return f"{loss:.3f} {metric}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def block_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Quality against block size at a fixed sparsity (the price of structure) beside the speed
    of each model's own compiled layers (the reward), and wider-at-the-same-budget models."""
    if scope.source != "ours":
        return None
    structured = ctx.scope_runs(scope, structured=True)
    runs = [r for r in finished(structured) if r.metric_value is not None]
    if not runs:
        return None
    lost = [r for r in structured if r.status in ("diverged", "failed")]
    plain = finished(ctx.scope_runs(scope))
    dense = [r for r in plain if r.technique == catalogue.DENSE and r.metric_value is not None]
    baseline = P.dense_baseline(plain)
    dense_width = _width(dense[0]) if dense else None
    metric, higher = metric_of(runs)
    # Unstructured magnitude pruning from the main sweep, where the block sweep has none of
    # its own: the reference each block size's quality is set against.
    block_techniques = {r.technique for r in runs}
    plain_pruned = [r for r in plain if r.technique in block_techniques and r.target_sparsity
                    and r.metric_value is not None and _width(r) == dense_width]
    timings = _timings(ctx, runs + dense + plain_pruned)
    batches = sorted({b for t in timings.values() for b in t})
    same_width = [r for r in runs if _width(r) == dense_width]
    wider = [r for r in runs if _width(r) != dense_width]

    block_rows, sentences, figs = [], [], []
    for target in sorted({r.target_sparsity for r in same_width if r.target_sparsity}):
        at = sorted((r for r in same_width if r.target_sparsity == target),
                    key=lambda r: (block_of(r)[0] * block_of(r)[1], block_of(r)))
        if not at:
            continue
        name = f"{scope.key}_blocks_{100 * target:g}.png"
        block_figure([_block_label(block_of(r)) for r in at], [r.metric_value for r in at],
                     {b: [t.speedup if (t := timings.get(r.id, {}).get(b)) else None
                          for r in at] for b in batches},
                     ctx.out_dir / name, metric=metric, target=target, baseline=baseline,
                     title=f"{scope.title}: the price and reward of block sparsity at "
                           f"{100 * target:g}%")
        figs.append((name, f"quality and speed vs block size at {100 * target:g}%"))
        rows, said = _blocks_at(target, at, timings, batches, metric, higher,
                                [r for r in plain_pruned if r.target_sparsity == target])
        block_rows += rows
        sentences += said

    if untouched := _untouched_layers(same_width):
        sentences.append("Left dense in these block runs (not in their pruned selection): "
                         + ", ".join(untouched) + "; their sparsity is over the other layers.")
    for run in lost:
        sentences.append(f"{_block_label(block_of(run))} blocks at "
                         f"{100 * (run.target_sparsity or 0):g}% ({run.id}) {run.status}"
                         + (f": {run.error.splitlines()[0]}" if run.error else "") + ".")
    wide_rows, said = _wider(wider, dense, baseline, timings, batches, metric, higher)
    sentences += said
    tables = _block_tables(scope, metric, batches, block_rows, wide_rows)
    if not tables:
        return None
    return Section(
        id=f"{scope.key}-blocks", title=f"{scope.title}: block sparsity, price and reward",
        question="What does block structure cost in quality and gain in speed, and is a wider "
                 "block-sparse model better at the same number of weights?",
        sentences=sentences, figures=figs, tables=tables)


def _blocks_at(target: float, at: Sequence[Run], timings: dict[str, dict[int, InferenceResult]],
               batches: Sequence[int], metric: str, higher: bool,
               unstructured_elsewhere: Sequence[Run] = ()) -> tuple[list[list[str]], list[str]]:
    """Returns the table rows and sentences of the block sizes trained at one ``target``
    sparsity (``at``, smallest block first): each one's quality against unstructured pruning
    and its speed-up, and the fastest block size worth its loss.

    The reference is the unstructured run among ``at``; without one, the mean of
    ``unstructured_elsewhere`` (the same technique's unstructured seeds from another sweep)."""
    rows, sentences, worth = [], [], []
    unstructured = next((r for r in at if block_of(r) == (1, 1)), None)
    reference_runs = [unstructured] if unstructured else list(unstructured_elsewhere)
    reference = (_mean([r.metric_value for r in reference_runs]) if reference_runs else None)
    against = ("unstructured pruning" if len(reference_runs) < 2 else
               f"unstructured pruning (mean of {len(reference_runs)} seeds, "
               f"{P.format_metric(reference, metric)})")
    for run in at:
        label = _block_label(block_of(run))
        t = timings.get(run.id, {})
        loss = (_points(metric, reference) - _points(metric, run.metric_value)
                ) * (1 if higher else -1) if reference is not None else None
        empty = _empty_layers(run)
        rows.append([f"{100 * target:g}", label, run.id,
                     f"{100 * (run.achieved_sparsity or 0):.2f}", cell(run.metric_value, metric),
                     "–" if loss is None else
                     f"{(-loss) + 0.0:+.2f}" if metric in _POINTS else f"{loss + 0.0:+.3f}",
                     f"{empty}/{_pruned_layers(run)}" if run.layers else "–",
                     *[f"{t[b].speedup:.2f}" if b in t else "–" for b in batches]])
        if empty:
            sentences.append(
                f"With {label} blocks at {100 * target:g}%, {empty} of {_pruned_layers(run)} "
                "layers lost every weight: a layer only one or two blocks tall or wide "
                "cannot keep a tenth of them, so its whole block goes.")
        if loss is not None and run is not unstructured and t:
            gain = max(t.values(), key=lambda x: x.batch)
            sentences.append(
                f"At {100 * target:g}%, {label} blocks "
                + (f"cost {_amount(metric, loss)}" if loss > 0
                   else f"gain {_amount(metric, -loss)}")
                + f" against {against} and run {gain.speedup:.2f}x dense at batch "
                f"{gain.batch}.")
            if loss <= _worth_it_loss(metric, _points(metric, reference)):
                worth.append((gain.speedup, label, gain.batch))
    base_t = next((timings[r.id] for r in reference_runs if r.id in timings), {})
    if worth:
        speed, label, batch = max(worth)
        ref = base_t.get(batch)
        sentences.append(
            f"Worth it on this machine at {100 * target:g}%: {label} blocks, the fastest "
            f"block size losing at most {_worth_limit(metric, reference)} ({speed:.2f}x dense "
            f"at batch "
            f"{batch}" + (f" against {ref.speedup:.2f}x unstructured)." if ref else ")."))
    elif reference is not None and (len(at) > 1 or unstructured is None):
        sentences.append(f"At {100 * target:g}%, every block size measured so far loses "
                         f"more than {_worth_limit(metric, reference)} or is not timed yet.")
    return rows, sentences


def _wider(wider: Sequence[Run], dense: Sequence[Run], baseline: P.Summary | None,
           timings: dict[str, dict[int, InferenceResult]], batches: Sequence[int], metric: str,
           higher: bool) -> tuple[list[list[str]], list[str]]:
    """Returns the table rows and sentences of the wider block-sparse models, each against
    the dense model of the same number of weights (its quality and its time)."""
    rows, sentences = [], []
    for run in wider:
        t = timings.get(run.id, {})
        nonzero = sum(la.get("nonzeros", 0) for la in run.layers) or None
        # The dense model of the same budget that was timed (bench-runs times the best one).
        narrow = next((r for r in dense if r.id in timings), dense[0] if dense else None)
        dense_params = sum(la.get("size", 0) for la in narrow.layers) if narrow else None
        narrow_t = timings.get(narrow.id, {}) if narrow else {}
        cells = [f"{narrow_t[b].dense_seconds / t[b].sparse_seconds:.2f}"
                 if b in t and b in narrow_t else "–" for b in batches]
        rows.append([_block_label(block_of(run)), f"width {_width(run)}", run.id,
                     f"{100 * (run.achieved_sparsity or 0):.2f}", nonzero or "–",
                     dense_params or "–", cell(run.metric_value, metric),
                     cell(baseline.mean, metric) if baseline else "–", *cells])
        if baseline is not None:
            better = (run.metric_value > baseline.mean) == higher
            sentences.append(
                f"Twice as wide ({_block_label(block_of(run))}, "
                f"{100 * (run.achieved_sparsity or 0):.2f}% sparse"
                + (f", {nonzero:,} nonzero weights against the dense model's {dense_params:,}"
                   if nonzero and dense_params else "")
                + f"): {P.format_metric(run.metric_value, metric)} against the dense baseline's "
                f"{P.format_metric(baseline.mean, metric)}: "
                + ("the wider sparse model is better." if better
                   else "the wider sparse model is not better here."))
    return rows, sentences


def _block_tables(scope: Scope, metric: str, batches: Sequence[int],
                  block_rows: list[list[str]], wide_rows: list[list[str]]) -> list[Table]:
    """Returns the block section's tables: the block sizes, and the wider models (each only
    when it has rows)."""
    tables = []
    if block_rows:
        tables.append(Table(
            f"{scope.key}_blocks",
            ["sparsity %", "block", "run", "achieved %", P.metric_label(metric),
             "vs unstructured", "empty layers", *[f"speed-up b{b}" for b in batches]],
            block_rows,
            "Magnitude pruning with block masks; speed-up is the model's dense time over its "
            "compiled sparse time, side by side in one process (sparsebench bench-runs)."))
    if wide_rows:
        tables.append(Table(
            f"{scope.key}_wider",
            ["block", "model", "run", "sparsity %", "nonzero weights", "dense model weights",
             P.metric_label(metric), "dense baseline", *[f"narrow dense / wide sparse b{b}"
                                                         for b in batches]], wide_rows,
            "A model twice as wide, pruned to the dense model's number of weights; time ratio "
            "of the narrow dense model to the wide sparse one."))
    return tables


def inference_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The timed unstructured models: the best of each technique at 90% and 95%."""
    if scope.source != "ours":
        return None
    runs = [r for r in finished(ctx.scope_runs(scope)) if r.technique != catalogue.DENSE]
    timings = _timings(ctx, runs)
    timed = [r for r in runs if r.id in timings]
    if not timed:
        return None
    metric, _ = metric_of(timed)
    batches = sorted({b for t in timings.values() for b in t})
    timed.sort(key=lambda r: (r.achieved_sparsity or 0, r.technique))
    rows, sentences = [], []
    for run in timed:
        for batch in batches:
            t = timings[run.id].get(batch)
            if t is None:
                continue
            rows.append([P.display_name(run.technique), run.id,
                         f"{100 * (run.achieved_sparsity or 0):.2f}",
                         cell(run.metric_value, metric), batch, f"{1e3 * t.dense_seconds:.2f}",
                         f"{1e3 * t.sparse_seconds:.2f}", f"{t.speedup:.2f}",
                         f"{t.sparse_layers}/{t.layers}"])
    any_t = next(iter(timings[timed[0].id].values()))
    name = f"{scope.key}_inference.png"
    inference_figure([(r.technique, r.achieved_sparsity or 0) for r in timed],
                     {b: [timings[r.id][b].speedup if b in timings[r.id] else 0 for r in timed]
                      for b in batches}, ctx.out_dir / name,
                     title=f"{scope.title}: inference speed-up of the best sparse models "
                           f"({any_t.threads} thread{'s' if any_t.threads > 1 else ''})")
    for level in HEADLINE_LEVELS:
        at = [r for r in timed if P.nearest_level(r.achieved_sparsity or 0,
                                                  tolerance_pp=ctx.tolerance_pp) == level]
        for run in at:
            cells = ", ".join(f"{timings[run.id][b].speedup:.2f}x at batch {b}"
                              for b in batches if b in timings[run.id])
            sentences.append(f"The best {P.display_name(run.technique)} model at "
                             f"{100 * level:g}% ({P.format_metric(run.metric_value, metric)}) "
                             f"runs {cells} against its own dense execution.")
    sentences.append(f"Measured with: {any_t.workload}; {any_t.machine}.")
    figs = [(name, "inference speed-up per model and batch")]
    focus = _focus_run(timed, timings, ctx.tolerance_pp)
    if focus is not None:
        sweet = f"{scope.key}_break_even.png"
        sentences.append(_break_even(focus, timings[focus.id], ctx.out_dir / sweet,
                                     scope.title))
        figs.append((sweet, "layer density against the performance model's break-even"))
    return Section(
        id=f"{scope.key}-inference", title=f"{scope.title}: inference speed of the sparse models",
        question="How much faster than dense does each technique's best sparse model run on a "
                 "CPU?",
        sentences=sentences, figures=figs,
        tables=[Table(f"{scope.key}_inference",
                      ["technique", "run", "sparsity %", P.metric_label(metric), "batch",
                       "dense ms", "sparse ms", "speed-up", "sparse layers"], rows,
                      "Finalized model run dense against its compiled sparse copy "
                      "(per-layer choice of dense/CSR/BSR), medians of interleaved rounds.")])


def _focus_run(timed: Sequence[Run], timings: dict[str, dict[int, InferenceResult]],
               tolerance_pp: float) -> Run | None:
    """Returns the model whose layers the break-even figure shows: the timed magnitude model
    nearest 90%, else the first timed model with a per-layer plan."""
    with_plan = [r for r in timed if any(t.plan for t in timings[r.id].values())]
    mp = [r for r in with_plan if r.technique == catalogue.reference()
          and P.nearest_level(r.achieved_sparsity or 0, tolerance_pp=tolerance_pp) == 0.9]
    return (mp or with_plan or [None])[0]


def _break_even(run: Run, by_batch: dict[int, InferenceResult], path: Path, title: str) -> str:
    """Draws each layer's density against the performance model's break-even density (the
    density under which its sparse kernel wins) at each batch; returns a sentence on how many
    layers went sparse."""
    batches = sorted(b for b, t in by_batch.items() if t.plan)
    plans = {b: by_batch[b].plan for b in batches}
    break_even_figure(plans, path,
                      title=f"{title}: where the sparse kernel wins "
                            f"({P.display_name(run.technique)}, "
                            f"{100 * (run.achieved_sparsity or 0):.1f}%); below a line: sparse "
                            "is faster")
    layers = len(plans[batches[0]])
    counts = ", ".join(f"{sum(r['sparse'] for r in plans[b])} of {layers} at batch {b}"
                       for b in batches)
    return (f"Per layer, the performance model's break-even density decides the kernel; for the "
            f"{P.display_name(run.technique)} model at {100 * (run.achieved_sparsity or 0):.1f}% "
            f"the sparse kernel was chosen for {counts}.")
