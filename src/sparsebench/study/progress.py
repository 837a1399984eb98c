"""Where a study stands: the runs of each sweep by status, the runs in progress (the step each
last reported in its ``progress.json``) and how much training is left, read from the run store
while its sweeps run (``sparsebench status``).

The time left is an estimate: each open run's remaining steps times the seconds per step of
its technique, the median over that technique's latest finished runs in the store on the same
kind of device (retraining kinds use magnitude pruning's, small dense models the dense runs'):
runs a study trained on a GPU machine say nothing of the CPU's pace. Evaluation is not counted.
Retraining and small-dense points enter the store only once their sweep's first phase is done;
until then they are counted from the sweep file the store keeps.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..methods import catalogue
from ..rundir import CHECKPOINT_DIR, CHECKPOINT_FILE, PROGRESS_FILE
from .store import Run, RunStore, device_kind
from .sweep import (
    SweepError,
    SweepSpec,
    current_phase2_sources,
    parse_sweep,
    phase2_source_of,
    plan_phase1,
    sweep_definitions,
)

__all__ = ["LATEST", "StudyProgress", "SweepProgress", "format_progress", "study_progress"]

#: Finished runs per technique whose seconds per step make its estimate (the latest ones:
#: code gets faster, and older runs would make the estimate too long).
LATEST = 5
_OPEN = ("pending", "running")


@dataclass
class SweepProgress:
    """One sweep's runs by status, and its open work in steps."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    #: Retraining / small-dense points the sweep file asks for that are not in the store yet.
    unplanned: int = 0
    #: (technique, steps left) of every open run, planned or not.
    open_steps: list[tuple[str, int]] = field(default_factory=list)
    #: Retraining / small-dense runs in the store (finished or open) that derive from a
    #: magnitude run no longer the best at its sparsity: the sweep does not run them.
    orphaned: int = 0
    orphaned_open: int = 0


@dataclass
class StudyProgress:
    """A store's sweeps, its running runs and the estimated training time left."""

    path: str
    sweeps: list[SweepProgress]
    #: (run id, step reached or None, total steps or None, seconds since heartbeat, steps
    #: per second or None)
    running: list[tuple[str, int | None, int | None, float | None, float | None]]
    seconds_per_step: dict[str, float]
    seconds_left: float
    #: Techniques with open runs and no measured speed (theirs or a borrowed one).
    unmeasured: list[str]
    #: The kind of device whose finished runs timed the estimate.
    device: str = "cpu"


def _progress_step(run_dir: str | None) -> tuple[int | None, float | None]:
    """Returns the step the run last reported (``progress.json``) and its steps per second,
    or the step of its last checkpoint and None when it reported nothing yet."""
    if not run_dir:
        return None, None
    try:
        progress = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
        return int(progress["step"]), progress.get("steps_per_second")
    except (OSError, ValueError, KeyError, TypeError):
        return _checkpoint_step(run_dir), None


def _checkpoint_step(run_dir: str | None) -> int | None:
    """Returns the step of the run's last checkpoint, read from the file's JSON header only."""
    if not run_dir:
        return None
    path = Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE
    try:
        with path.open("rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
        return int(json.loads(header["__metadata__"]["sparsebench_checkpoint"])["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _speeds(runs: Sequence[Run], device: str = "cpu") -> dict[str, float]:
    """Returns the median seconds per step of each technique's latest finished runs on
    ``device`` (``cpu``, ``cuda``)."""
    by: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "finished" and run.seconds_per_step and run.device == device:
            by.setdefault(run.technique, []).append(run)
    return {technique: statistics.median(r.seconds_per_step for r in
                                         sorted(rs, key=lambda r: r.updated)[-LATEST:])
            for technique, rs in by.items()}


def _spec(name: str, text: str) -> SweepSpec | None:
    try:
        return parse_sweep(yaml.safe_load(text), name=name, text=text)
    except (SweepError, ValueError, yaml.YAMLError):
        return None  # a definition this version cannot read: count what the store holds


def _steps_of(spec: SweepSpec | None) -> dict[str, int]:
    """Returns the steps of each first-phase point of ``spec`` by run id."""
    if spec is None:
        return {}
    return {point.run_id(spec.task): point.steps for point in plan_phase1(spec)}


def _finished_budget(runs: Sequence[Run]) -> int | None:
    """Returns the most common step budget of the finished runs (for a sweep whose file the
    store does not hold)."""
    budgets = [r.config.get("run", {}).get("steps") for r in runs if r.status == "finished"]
    budgets = [b for b in budgets if isinstance(b, int)]
    return statistics.mode(budgets) if budgets else None


def _steps_factor(technique: str) -> float:
    entry = catalogue.find(technique)
    return entry.steps_factor if entry is not None else 1.0


def _phase2_wanted(spec: SweepSpec | None) -> list[tuple[str, int]]:
    """Returns (technique, steps) of every retraining and small-dense point ``spec`` asks for."""
    if spec is None:
        return []
    wanted = []
    if spec.retraining is not None:
        for kind in spec.retraining.kinds:
            steps = int(round(catalogue.get(kind).steps_factor * spec.steps))
            wanted += [(kind, steps)] * (len(spec.retraining.sparsities)
                                         * spec.retraining.replicas)
    if spec.small_dense is not None:
        wanted += [(catalogue.SMALL_DENSE, spec.steps)] * (len(spec.small_dense.sparsities)
                                                           * spec.small_dense.replicas)
    return wanted


def study_progress(store: RunStore, now: float | None = None, device: str = "cpu"
                   ) -> StudyProgress:
    """Returns where the study in ``store`` stands (see the module's docstring); the time
    left is for runs on ``device`` (``cpu``, ``cuda``)."""
    now = time.time() if now is None else now
    ours = store.runs(source="ours")
    definitions = sweep_definitions(store)
    names = sorted({r.sweep for r in ours if r.sweep} | set(definitions))
    sweeps, running = [], []
    for name in names:
        spec = _spec(name, definitions[name]) if name in definitions else None
        steps_of = _steps_of(spec)
        runs = [r for r in ours if r.sweep == name]
        budget = spec.steps if spec is not None else _finished_budget(runs)
        progress = SweepProgress(name)
        sources = current_phase2_sources(store, spec)
        for run in runs:
            progress.counts[run.status] = progress.counts.get(run.status, 0) + 1
            orphan = sources is not None and phase2_source_of(run) not in (None, *sources)
            if orphan:
                progress.orphaned += 1
            if run.status not in _OPEN:
                continue
            if orphan:
                progress.orphaned_open += 1
                continue
            steps = steps_of.get(run.id)
            if steps is None and budget is not None:
                steps = int(round(_steps_factor(run.technique) * budget))
            done = None
            if run.status == "running":
                done, rate = _progress_step(run.run_dir)
                beat = now - run.heartbeat if run.heartbeat else None
                running.append((run.id, done, steps, beat, rate))
            if steps is not None:
                progress.open_steps.append((run.technique, max(0, steps - (done or 0))))
        planned: dict[str, int] = {}
        for run in runs:
            source = phase2_source_of(run)
            current = sources is None or source is None or source in sources
            if run.technique in catalogue.from_source() and current:
                planned[run.technique] = planned.get(run.technique, 0) + 1
        for technique, steps in _phase2_wanted(spec):
            if planned.get(technique, 0) > 0:
                planned[technique] -= 1  # already in the store, counted above
            else:
                progress.unplanned += 1
                progress.open_steps.append((technique, steps))
        sweeps.append(progress)
    device = device_kind(device)  # cuda:1 trains at the pace of cuda
    speeds = _speeds(ours, device)
    left, unmeasured = 0.0, set()
    for progress in sweeps:
        for technique, steps in progress.open_steps:
            # A technique without finished runs borrows the speed of the one that trains it.
            speed = speeds.get(technique, speeds.get(catalogue.trains_as(technique) or "", None))
            if speed is None:
                unmeasured.add(technique)
            else:
                left += steps * speed
    return StudyProgress(str(store.path), sweeps, running, speeds, left, sorted(unmeasured),
                         device)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"


def format_progress(progress: StudyProgress) -> str:
    """Returns the progress as the text ``sparsebench status`` prints."""
    statuses = ("finished", "running", "pending", "failed", "diverged")
    width = max([len("sweep")] + [len(s.name) for s in progress.sweeps])
    lines = [progress.path,
             f"  {'sweep':<{width}}  " + "  ".join(f"{s:>8}" for s in statuses)
             + "  to plan (phase 2)"]
    for sweep in progress.sweeps:
        lines.append(f"  {sweep.name:<{width}}  "
                     + "  ".join(f"{sweep.counts.get(s, 0):>8}" for s in statuses)
                     + f"  {sweep.unplanned:>17}")
    for sweep in progress.sweeps:
        if sweep.orphaned:
            lines.append(
                f"  {sweep.name}: {sweep.orphaned} retraining/small-dense runs derive from a "
                "magnitude run that is no longer the best at its sparsity"
                + (f" ({sweep.orphaned_open} of them open: the sweep will not run them)"
                   if sweep.orphaned_open else "")
                + "; the report leaves them out")
    for run_id, done, steps, beat, rate in progress.running:
        at = f"step {done}" if done is not None else "no step reported yet"
        of = f" of {steps}" if steps is not None and done is not None else ""
        speed = f", {rate:.2f} step/s" if rate else ""
        alive = f", heartbeat {beat:.0f} s ago" if beat is not None else ""
        lines.append(f"  running: {run_id} ({at}{of}{speed}{alive})")
    open_runs = sum(len(s.open_steps) for s in progress.sweeps)
    timed = sum(1 for s in progress.sweeps for technique, _ in s.open_steps
                if technique not in progress.unmeasured)
    if open_runs and not timed:  # "about 0 min" would read as nearly done
        lines.append(f"  left: {open_runs} runs, not estimated yet: no finished "
                     f"{progress.device} run of {', '.join(progress.unmeasured)} in this "
                     "store to time them by")
    elif open_runs:
        estimate = _duration(progress.seconds_left)
        lines.append(f"  left: {open_runs} runs, about {estimate} of training for one "
                     f"{progress.device} worker (each technique's median seconds per step over "
                     f"its {LATEST} latest finished runs there; evaluation not counted)")
        if progress.unmeasured:
            lines.append(f"  not in the estimate (no finished {progress.device} run to time "
                         f"them by): "
                         f"{', '.join(progress.unmeasured)}")
    else:
        lines.append("  nothing left to run")
    return "\n".join(lines)
