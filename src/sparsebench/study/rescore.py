"""Completing a store's evaluations: the metrics a task reports now that older runs lack.

A run is evaluated once, as it finishes. When a task learns a new metric (the translation
task's reference loss was added while the CPU study ran), the runs that finished before lack
it. :func:`rescore_runs` loads each such run's finalized model (``model.safetensors``: the very
weights, masks and BatchNorm statistics that were evaluated) and computes only the missing
metrics, on the same splits with the same evaluation settings, then adds them to the run's
``result.json`` and to its store row. Metrics a run already has are evaluated again only
when named (``--recompute loss``: its definition changed), and never the headline metric a
run is ranked by.

    sparsebench rescore --store results/study/ding-transformer.db
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..rundir import RESULT_FILE, atomic_write_json
from .store import Run, RunStore, metrics_of_result

__all__ = ["RescoreCounts", "missing_metrics", "rescore_runs"]


@dataclass
class RescoreCounts:
    """What :func:`rescore_runs` did: runs given metrics, runs with nothing to add, runs whose
    run directory (or its result or model file) is gone, runs whose result or config could
    not be read (each named as it is met)."""

    rescored: int = 0
    complete: int = 0
    no_files: int = 0
    unreadable: int = 0


def missing_metrics(result: dict[str, Any], reported: tuple[str, ...],
                    recompute: Collection[str] = ()) -> dict[str, list[str]]:
    """Returns, for each split evaluated in ``result`` (a result.json dict), the metrics of
    ``reported`` it lacks, plus those of ``recompute`` the task reports. A split with no
    metrics at all was not evaluated (no such split in the data) and stays so."""
    metrics = result.get("metrics") or {}
    return {split: names for split, values in metrics.items()
            if values and (names := [m for m in reported
                                     if m not in values or m in recompute])}


def _task_key(config) -> str:
    # Runs share a task (data, vocabulary, evaluation pairs) when these agree.
    return json.dumps([config.task, asdict(config.data), asdict(config.eval)], sort_keys=True,
                      default=str)


def rescore_runs(store: RunStore, *, runs_dir: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None, recompute: Collection[str] = (),
                 say: Callable[[str], None] | None = None) -> RescoreCounts:
    """Adds the metrics each finished run of ours lacks (see the module docstring) to its
    result.json and store row; ``recompute`` names metrics evaluated again even where a run
    has them (their definition changed). ``runs_dir``: where the run directories are
    (``runs_dir/<id>``; default: each row's ``run_dir``).

    Returns:
        The counts of runs rescored, complete, without their files and unreadable.
    """
    import torch

    from ..train.tasks import ClassificationTask, TranslationTask

    headline = {ClassificationTask.metric_name, TranslationTask.metric_name} & set(recompute)
    if headline:
        raise ValueError(f"{sorted(headline)} is the metric runs are ranked by; evaluating it "
                         "again would set it apart from the rest of its row. Train the run "
                         "again instead.")
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    counts = RescoreCounts()
    tasks: dict[str, Any] = {}
    runs = store.runs(source="ours", status="finished")
    for index, run in enumerate(runs, 1):
        run_dir = Path(runs_dir) / run.id if runs_dir is not None else (
            Path(run.run_dir) if run.run_dir else None)
        if run_dir is None or not (run_dir / RESULT_FILE).is_file():
            counts.no_files += 1
            continue
        try:
            outcome = _rescore_one(store, run, run_dir, tasks, torch.device(device), recompute)
        except (KeyError, TypeError, ValueError, OSError) as error:
            counts.unreadable += 1
            say(f"[{index}/{len(runs)}] {run.id}: left as it is ({type(error).__name__}: "
                f"{error})")
            continue
        if outcome is None:
            counts.no_files += 1
        elif not outcome[0]:
            counts.complete += 1
        else:
            counts.rescored += 1
            say(f"[{index}/{len(runs)}] {run.id}: {outcome[1]}")
    return counts


def _rescore_one(store: RunStore, run: Run, run_dir: Path, tasks: dict[str, Any],
                 device, recompute: Collection[str]) -> tuple[bool, str] | None:
    """Evaluates what ``run`` lacks; returns (whether anything was added, what), or None when
    its model file is gone."""
    from ..rundir import load_finalized_model
    from ..train.config import RunConfig
    from ..train.tasks import make_task, task_class

    result_path = run_dir / RESULT_FILE
    result = json.loads(result_path.read_text())
    config = RunConfig.from_dict(result["config"])
    wanted = missing_metrics(result, task_class(config).eval_metrics, recompute)
    added: dict[str, dict[str, float]] = {}
    start = time.monotonic()
    if wanted:
        try:
            model = load_finalized_model(run_dir).to(device)
        except FileNotFoundError:
            return None
        key = _task_key(config)
        if key not in tasks:
            tasks[key] = make_task(config)
        for split, names in wanted.items():
            values = tasks[key].evaluate(model, split, device, metrics=names)
            # Only what the evaluation gives: top-5 of a task with fewer than 5 classes, say,
            # stays absent rather than being asked for at every pass.
            if got := {n: float(values[n]) for n in names if n in values}:
                added[split] = got
                result["metrics"][split].update(got)
    if added:
        atomic_write_json(result_path, result)
    if added or (result.get("metrics") and not run.metrics):  # a row from before the column
        store.set_metrics(run.id, metrics_of_result(result))
    said = "; ".join(f"{split} " + ", ".join(f"{n} {v:.4f}" for n, v in got.items())
                     for split, got in added.items())
    return bool(added), f"{said} ({time.monotonic() - start:.1f}s)"
