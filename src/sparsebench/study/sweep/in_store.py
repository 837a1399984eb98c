"""A sweep in the run store: the row each point starts as, the sweep file's text kept for the
report, and the second phase planned from the runs the store holds now."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from ...train import build_config
from ..store import Run, RunStore, model_family_of
from .load import parse_sweep
from .plan import (
    Point,
    best_magnitude_runs_among,
    magnitude_run_ids,
    phase2_source_of,
    plan_phase1,
    plan_phase2_from_runs,
)
from .spec import SweepSpec


def pending_row(point: Point, spec: SweepSpec, run_dir: Path, model_family: str) -> Run:
    """Returns the store row a point starts as (pending)."""
    return Run(id=point.run_id(spec.task), technique=point.technique, sweep=spec.name,
               task=spec.task, model_family=model_family, variant=point.variant,
               target_sparsity=point.target, hyperparameters=point.hyperparameters,
               replica=point.replica, seed=point.seed, run_dir=str(run_dir), status="pending")


def model_family(spec: SweepSpec) -> str:
    """Returns the model family of the sweep's task (``lenet300``, ``resnet50`` ...)."""
    return model_family_of(build_config(spec.task, steps=spec.steps,
                                        values=spec.overrides).model.name)


# ---- phase 2, from the runs in the store ----------------------------------------------------

def _finished_magnitude_runs(store: RunStore, spec: SweepSpec, phase1: Sequence[Point]
                             ) -> list[Run]:
    return store.runs(id=magnitude_run_ids(spec, phase1), status="finished")


def best_magnitude_runs(store: RunStore, spec: SweepSpec, phase1: Sequence[Point]
                        ) -> dict[float, Run]:
    """Returns :func:`~.plan.best_magnitude_runs_among` the finished runs in ``store``: per
    target sparsity, the best finished magnitude run of ``phase1``.

    Raises:
        ValueError: when ``select_by`` names a measure a finished run's result lacks.
    """
    return best_magnitude_runs_among(_finished_magnitude_runs(store, spec, phase1), spec, phase1)


def plan_phase2(spec: SweepSpec, store: RunStore, phase1: Sequence[Point],
                runs_dir: str | Path | None = None) -> list[Point]:
    """Returns :func:`~.plan.plan_phase2_from_runs` the finished runs in ``store``: the
    retraining and small-dense points, from the best finished magnitude run at each chosen
    sparsity (sparsities without one, or whose result.json is neither where the store says
    nor under ``runs_dir``, are skipped)."""
    return plan_phase2_from_runs(spec, _finished_magnitude_runs(store, spec, phase1), phase1,
                                 runs_dir)


def current_phase2_sources(store: RunStore, spec: SweepSpec | None) -> set[str] | None:
    """Returns the ids of the runs ``spec``'s phase 2 derives from now (the best magnitude run
    at each sparsity); None when that cannot be told (no spec, no phase 2, or a ``select_by``
    measure some run lacks, which the sweep reports itself)."""
    if spec is None or (spec.retraining is None and spec.small_dense is None):
        return None
    try:
        return {run.id for run in best_magnitude_runs(store, spec, plan_phase1(spec)).values()}
    except ValueError:
        return None


def orphaned_phase2_runs(store: RunStore, runs: Sequence[Run]) -> set[str]:
    """Returns the ids of the runs among ``runs`` that derive from a magnitude run that is no
    longer the best at its sparsity (one trained again, or a setting that finished later and
    did better): their sweep, as recorded in ``store``, plans that point from another source
    now, so they answer for a mask the study no longer retrains."""
    orphans: set[str] = set()
    for name, text in sweep_definitions(store).items():
        members = [r for r in runs if r.sweep == name and phase2_source_of(r) is not None]
        if not members:
            continue
        try:
            spec = parse_sweep(yaml.safe_load(text), name=name, text=text)
        except (ValueError, yaml.YAMLError):
            continue  # a definition this version cannot read: keep its runs
        sources = current_phase2_sources(store, spec)
        if sources is not None:
            orphans |= {r.id for r in members if phase2_source_of(r) not in sources}
    return orphans


# ---- the sweep definition, kept in the store for the report ---------------------------------

def save_sweep_definition(store: RunStore, spec: SweepSpec) -> None:
    """Keeps the sweep file's text in the store's meta table (the report shows it)."""
    save_sweep_text(store, spec.name, spec.text or yaml.safe_dump({"name": spec.name}))


def save_sweep_text(store: RunStore, name: str, text: str) -> None:
    """Records the text of the sweep file ``name`` in the store (replacing an older one)."""
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"sweep:{name}", text))


def sweep_definitions(store: RunStore) -> dict[str, str]:
    """Returns the sweep files recorded in the store, by sweep name."""
    with store.transaction() as db:
        rows = db.execute("SELECT key, value FROM meta WHERE key LIKE 'sweep:%' ORDER BY key")
        return {key.split(":", 1)[1]: value for key, value in rows.fetchall()}
