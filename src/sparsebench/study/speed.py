"""Inference speed of a study's trained models: which runs to time, and timing them into the
run store, so the report can set each model's quality beside what its sparsity buys at
inference on this machine.

``sparsebench bench-runs --store FILE`` times, for each model family in the store, the best
finished model of each technique at the headline sparsities (90% and 95%), every finished
block-sparse magnitude run (the block-size trade-off) and the dense baseline, each dense
against its compiled sparse copy (:func:`sparsebench.inference.bench.bench_model`: per-layer
dense/CSR/BSR choice, interleaved rounds in one process). Results go to the store's
``inference`` table, one row per (run, batch, threads); runs already timed at a batch and
thread count are skipped unless ``force``, so an interrupted timing resumes. Each run's line
prints every ratio with its range over both sides' quartiles, and one warning line follows when the
rounds' spread or the machine's load makes them unreliable (the stored rows keep their schema:
medians only, so rerun such a run with ``force`` on a quiet machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import rundir
from ..methods import catalogue
from . import pareto as P
from .store import InferenceResult, Run, RunStore

if TYPE_CHECKING:
    from ..inference.bench import BatchResult

__all__ = ["block_of", "runs_to_time", "time_run", "time_runs"]



def block_of(run: Run) -> tuple[int, int]:
    """Returns the pruning block of ``run`` (``(1, 1)``: unstructured, also when unset)."""
    block = run.hyperparameters.get("block") or (1, 1)
    return int(block[0]), int(block[1])


def _best(runs: Sequence[Run], level: float, tolerance_pp: float) -> Run | None:
    inside = [r for r in runs if r.achieved_sparsity is not None and r.metric_value is not None
              and P.nearest_level(r.achieved_sparsity, tolerance_pp=tolerance_pp) == level]
    if not inside:
        return None
    return max(inside, key=lambda r: r.metric_value if r.higher_is_better else -r.metric_value)


def runs_to_time(store: RunStore, *, levels: Sequence[float] = (0.9, 0.95),
                 tolerance_pp: float = 1.0) -> list[Run]:
    """Returns the finished runs of our own worth timing, per model family: the best model of
    each technique within ``tolerance_pp`` of each level among the study's runs, every run of
    the block experiments (a ``block`` hyperparameter, 1x1 included), every small dense model
    (the equal-nonzeros baselines) and the best dense run."""
    finished = [r for r in store.runs(source="ours", status="finished") if r.run_dir]
    chosen: dict[str, Run] = {}
    for family in sorted({r.model_family for r in finished}):
        runs = [r for r in finished if r.model_family == family]
        dense = [r for r in runs if r.technique == catalogue.DENSE and r.metric_value is not None]
        if dense:
            best = max(dense, key=lambda r: r.metric_value if r.higher_is_better
                       else -r.metric_value)
            chosen[best.id] = best
        # The techniques that sparsify while training: their best model per headline level
        # (they all end with masks).
        for technique in catalogue.trained():
            # The study's own runs; the block experiments (even 1x1) are timed below.
            mine = [r for r in runs if r.technique == technique
                    and "block" not in r.hyperparameters]
            for level in levels:
                best = _best(mine, level, tolerance_pp)
                if best is not None:
                    chosen[best.id] = best
        for run in runs:
            if run.technique == catalogue.reference() and "block" in run.hyperparameters:
                chosen[run.id] = run
            if run.technique == catalogue.SMALL_DENSE:  # the dense models of equal nonzeros
                chosen[run.id] = run
    return list(chosen.values())


def time_run(run: Run, batches: Sequence[int], *, threads: int, repeats: int = 15,
             budget_s: float = 20.0, calibration_s: float = 1.0,
             recalibrate: bool = False) -> list[InferenceResult]:
    """Times ``run``'s finalized model dense against compiled sparse at each batch size with
    ``threads`` torch threads; returns one :class:`InferenceResult` per batch.

    Raises:
        FileNotFoundError: when the run directory or its model file is gone.
    """
    return [stored for stored, _ in _measure_run(run, batches, threads=threads, repeats=repeats,
                                                  budget_s=budget_s, calibration_s=calibration_s,
                                                  recalibrate=recalibrate)]


def _measure_run(run: Run, batches: Sequence[int], *, threads: int, repeats: int,
                 budget_s: float, calibration_s: float = 1.0,
                 recalibrate: bool = False) -> list[tuple[InferenceResult, BatchResult]]:
    """Returns :func:`time_run`'s rows, each with the measurement (and its rounds' spread)."""
    from ..inference import PerformanceModel, machine_context
    from ..inference.bench import bench_model, workload_for

    run_dir = Path(run.run_dir or "")
    if not (run_dir / rundir.MODEL_FILE).is_file():
        raise FileNotFoundError(f"run {run.id}: {run_dir / rundir.MODEL_FILE} does not exist "
                                "(the run directory is gone; only the store was kept).")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = rundir.load_finalized_model(run_dir)
        options = (run.config.get("model") or {}).get("options", {})
        workload = workload_for(model, options)
        machine = machine_context()
        results = bench_model(model, workload, batches, repeats=repeats, budget_s=budget_s,
                              perf_model=PerformanceModel(budget_s=calibration_s,
                                                          recalibrate=recalibrate))
    finally:
        torch.set_num_threads(previous)
    return [(InferenceResult(run.id, r.batch, threads, r.dense_s, r.sparse_s,
                             sum(d.use_sparse for d in r.plan), len(r.plan),
                             workload.describe, machine, plan=_plan_rows(r)), r)
            for r in results]


def _plan_rows(result: BatchResult) -> list[dict[str, Any]]:
    """Returns the per-layer choice of one batch with the layer's own measured times."""
    rows = []
    for decision in result.plan:
        dense_s, sparse_s = result.layers.get(decision.name, (None, None))
        rows.append({"name": decision.name, "kind": decision.kind,
                     "density": round(decision.density, 6), "block": list(decision.block),
                     "break_even": round(decision.break_even_density, 6),
                     "sparse": bool(decision.use_sparse), "dense_s": dense_s,
                     "sparse_s": sparse_s})
    return rows


def time_runs(store: RunStore, runs: Sequence[Run], batches: Sequence[int], *, threads: int,
              repeats: int = 15, budget_s: float = 20.0, force: bool = False,
              recalibrate: bool = False, say: Callable[[str], None] = print) -> int:
    """Times each run not yet timed at every batch (all of them with ``force``) and records
    the results as it goes. Returns how many runs were timed; a run whose directory is gone
    is reported and skipped. Each run's line gives its ratios with their range over both
    sides' quartiles; a one-line warning follows a run whose rounds or machine load make them
    unreliable (it is stored all the same: the store keeps medians only)."""
    from ..inference.bench import results_warning
    from ..inference.timing import LoadWatch

    done = {(r.run_id, r.batch) for r in store.inference() if r.threads == threads}
    watch = LoadWatch(threads, set_torch=False)  # time_run sets the threads per run
    say(watch.choice.describe())
    timed = 0
    for index, run in enumerate(runs, 1):
        todo = [b for b in batches if force or (run.id, b) not in done]
        if not todo:
            continue
        started = time.monotonic()
        try:
            measured = _measure_run(run, todo, threads=threads, repeats=repeats,
                                    budget_s=budget_s, recalibrate=recalibrate)
        except FileNotFoundError as error:
            say(f"[{index}/{len(runs)}] skipped: {error}")
            continue
        if not measured:  # batch sizes the model's workload does not run (a sampler: b1)
            continue
        for stored, _ in measured:
            store.record_inference(stored)
        timed += 1
        cells = ", ".join(f"b{r.batch} {_ratio_cell(r)} ({s.sparse_layers}/{s.layers} sparse)"
                          for s, r in measured)
        say(f"[{index}/{len(runs)}] {run.id} ({run.technique}, block {block_of(run)}, "
            f"sparsity {run.achieved_sparsity or 0:.3f}): {cells} "
            f"[{time.monotonic() - started:.0f}s]")
        warning = results_warning([r for _, r in measured], watch.problem())
        if warning is not None:
            say(f"[{index}/{len(runs)}] {warning} (sparsebench bench-runs --force times it again)")
    return timed


def _ratio_cell(result: BatchResult) -> str:
    """Returns the dense/sparse ratio with its range over both sides' quartiles."""
    if result.comparison is None:
        return f"{result.ratio:.2f}x"
    return result.comparison.cell()
