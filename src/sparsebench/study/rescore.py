"""Completing a store's evaluations: the metrics a task reports now that older runs lack.

A run is evaluated once, as it finishes. When a task learns a new metric (the translation
task's reference loss was added while the CPU study ran), the runs that finished before lack
it. :func:`rescore_runs` loads each such run's finalized model (``model.safetensors``: the very
weights, masks and BatchNorm statistics that were evaluated) and computes only the missing
metrics, on the same splits with the same evaluation settings, then adds them to the run's
``result.json`` and to its store row. Metrics a run already has are never recomputed, so
its headline number cannot change.

    sparsebench rescore --store results/study/ding-transformer.db
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..rundir import RESULT_FILE, atomic_write_json
from .store import Run, RunStore, metrics_of_result

__all__ = ["RescoreCounts", "missing_metrics", "rescore_runs"]


@dataclass
class RescoreCounts:
    """What :func:`rescore_runs` did: runs completed, runs already complete, runs whose run
    directory (or its result or model file) is gone."""

    rescored: int = 0
    complete: int = 0
    no_files: int = 0


def missing_metrics(result: dict[str, Any], reported: tuple[str, ...]) -> dict[str, list[str]]:
    """Returns, for each split evaluated in ``result`` (a result.json dict), the metrics of
    ``reported`` it lacks. A split with no metrics at all was not evaluated (no such split
    in the data) and stays so."""
    metrics = result.get("metrics") or {}
    return {split: missing for split, values in metrics.items()
            if values and (missing := [m for m in reported if m not in values])}


def _task_key(config) -> str:
    # Runs share a task (data, vocabulary, evaluation pairs) when these agree.
    return json.dumps([config.task, asdict(config.data), asdict(config.eval)], sort_keys=True,
                      default=str)


def rescore_runs(store: RunStore, *, runs_dir: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None,
                 say: Callable[[str], None] | None = None) -> RescoreCounts:
    """Adds the metrics each finished run of ours lacks (see the module docstring) to its
    result.json and store row. ``runs_dir``: where the run directories are
    (``runs_dir/<id>``; default: each row's ``run_dir``).

    Returns:
        The counts of runs rescored, already complete and without their files.
    """
    import torch

    from ..rundir import load_finalized_model
    from ..train.config import RunConfig
    from ..train.tasks import make_task, task_class

    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    counts = RescoreCounts()
    tasks: dict[str, Any] = {}
    runs = store.runs(source="ours", status="finished")
    for index, run in enumerate(runs, 1):
        run_dir = Path(runs_dir) / run.id if runs_dir is not None else (
            Path(run.run_dir) if run.run_dir else None)
        result_path = run_dir / RESULT_FILE if run_dir is not None else None
        if result_path is None or not result_path.is_file():
            counts.no_files += 1
            continue
        result = json.loads(result_path.read_text())
        config = RunConfig.from_dict(result["config"])
        missing = missing_metrics(result, task_class(config).eval_metrics)
        if not missing:
            counts.complete += 1
            if result.get("metrics") and not run.metrics:  # a row from before the column
                _update_row(store, run, result)
            continue
        try:
            model = load_finalized_model(run_dir)
        except FileNotFoundError:
            counts.no_files += 1
            continue
        key = _task_key(config)
        if key not in tasks:
            tasks[key] = make_task(config)
        start = time.monotonic()
        target = torch.device(device)
        model.to(target)
        for split, names in missing.items():
            added = tasks[key].evaluate(model, split, target, metrics=names)
            result["metrics"][split].update({n: added[n] for n in names if n in added})
        atomic_write_json(result_path, result)
        _update_row(store, run, result)
        counts.rescored += 1
        said = "; ".join(f"{split} " + ", ".join(f"{n} {result['metrics'][split][n]:.4f}"
                                                  for n in names if n in result["metrics"][split])
                         for split, names in missing.items())
        say(f"[{index}/{len(runs)}] {run.id}: {said} ({time.monotonic() - start:.1f}s)")
    return counts


def _update_row(store: RunStore, run: Run, result: dict[str, Any]) -> None:
    fresh = store.get(run.id) or run  # the row may have moved on while we evaluated
    store.upsert([replace(fresh, metrics=metrics_of_result(result))])
