"""The report's section on sampling speed: a character language model's characters per second
at batch 1 against its nonzero weights (the Sparse WaveRNN claim that sampling time follows
the nonzeros), for every timed model of the scope: sparse (per block shape), small dense and
dense. Timings come from ``sparsebench bench-runs --batch 1`` (``GRUSampler``'s compiled
loop, the model as trained against its compiled copy)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ...methods import catalogue
from .. import pareto as P
from ..our_figures import sampling_figure
from ..speed import block_of
from ..store import InferenceResult, Run
from .shared import ReportContext, Scope, Section, Table, cell, finished, metric_of

__all__ = ["sampling_section"]

_SAMPLED = re.compile(r"sampling (\d+) characters")


def nonzero_weights(run: Run) -> int:
    """Returns the nonzero weights of the run's reported layers (the sparsified ones, or a
    dense model's prunable ones: the same set in every model of a family)."""
    return sum(int(layer.get("nonzeros") or 0) for layer in run.layers)


def series_of(run: Run) -> str:
    """Returns the line a model belongs to: its technique, and its block shape when it has
    one."""
    name = P.display_name(run.technique)
    block = block_of(run)
    return f"{name} ({block[0]}x{block[1]} blocks)" if block != (1, 1) else name


def fit(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Returns ``(a, b)`` of the least-squares line ``seconds = a + b · nonzeros`` through
    ``(nonzeros, seconds)``, or None with fewer than two distinct nonzero counts."""
    if len({n for n, _ in points}) < 2:
        return None
    xs = [float(n) for n, _ in points]
    ys = [t for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _sampling_timings(ctx: ReportContext, runs: Sequence[Run]
                      ) -> dict[str, tuple[InferenceResult, int]]:
    """Returns run id -> (its batch-1 sampling timing, characters per call), at the thread
    count most such timings were taken with."""
    rows = [r for r in ctx.store.inference([run.id for run in runs])
            if r.batch == 1 and _SAMPLED.search(r.workload)]
    if not rows:
        return {}
    threads = max({r.threads for r in rows}, key=lambda t: sum(r.threads == t for r in rows))
    return {r.run_id: (r, int(_SAMPLED.search(r.workload).group(1)))
            for r in rows if r.threads == threads}


def sampling_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Characters per second against nonzero weights, per series, with each series' line."""
    if scope.source != "ours":
        return None
    # Block-pruned models too: the speed side is where their structure pays.
    runs = finished([*ctx.scope_runs(scope), *ctx.scope_runs(scope, structured=True)])
    timings = _sampling_timings(ctx, runs)
    timed = [r for r in runs if r.id in timings and r.layers]
    if not timed:
        return None
    metric, _ = metric_of(timed)
    timed.sort(key=lambda r: (series_of(r), nonzero_weights(r)))
    rows, series, seconds = [], {}, {}
    for run in timed:
        timing, chars = timings[run.id]
        nonzeros = nonzero_weights(run)
        # The model as trained for dense runs; the compiled copy, as it would be served,
        # for the others.
        per_char = (timing.dense_seconds if run.technique == catalogue.DENSE
                    else timing.sparse_seconds) / chars
        series.setdefault(series_of(run), []).append((nonzeros, 1.0 / per_char))
        seconds.setdefault(series_of(run), []).append((nonzeros, per_char))
        rows.append([series_of(run), run.id, f"{100 * (run.achieved_sparsity or 0):.1f}",
                     nonzeros, cell(run.metric_value, metric),
                     f"{1e6 * timing.dense_seconds / chars:.1f}",
                     f"{1e6 * timing.sparse_seconds / chars:.1f}", f"{1 / per_char:,.0f}",
                     f"{1e9 * per_char / max(nonzeros, 1):.3f}"])
    sentences = []
    for name, points in seconds.items():
        line = fit(points)
        if line is None:
            continue
        a, b = line
        shares = ", ".join(f"{a / t:.0%}" for _, t in sorted(points))
        sentences.append(
            f"{name}: time per character = {1e6 * a:.1f} µs + {1e9 * b:.3f} ns × nonzeros "
            f"over {len(points)} models; the constant is {shares} of their times "
            f"(from the fewest nonzeros up), so time is "
            + ("about proportional to the nonzeros." if max(abs(a) / t for _, t in points)
               <= 0.2 else "not proportional to the nonzeros."))
    any_timing = timings[timed[0].id][0]
    sentences.append(f"Measured with: {any_timing.workload}; {any_timing.machine}.")
    name = f"{scope.key}_sampling.png"
    sampling_figure(series, ctx.out_dir / name,
                    title=f"{scope.title}: sampling speed against nonzero weights")
    return Section(
        id=f"{scope.key}-sampling", title=f"{scope.title}: sampling speed",
        question="Does sampling time follow the nonzero weights, and which model samples "
                 "fastest?",
        sentences=sentences, figures=[(name, "characters per second against nonzeros")],
        tables=[Table(f"{scope.key}_sampling",
                      ["series", "run", "sparsity %", "nonzero weights",
                       P.metric_label(metric), "as trained µs/char", "compiled µs/char",
                       "characters/s", "ns per nonzero"], rows,
                      "Batch 1, the whole generation in GRUSampler's compiled loop; characters "
                      "per second from the compiled model (the dense model as trained).")])
