"""The sweep driver: adds a sweep's points to the run store as pending, claims them one at a
time and hands them to an executor, records each result (or failure) and shows progress.

Safe to stop and restart at any moment, and to run twice at once on one store:

* a point is trained only by the process that claimed it (:meth:`RunStore.claim` is one
  ``BEGIN IMMEDIATE`` transaction); finished, failed and diverged points are never claimed again
  (``--retry-failed`` puts failed ones back);
* a process killed outright (SIGKILL) leaves its claims "running"; a later process on the same
  host sees that the claiming pid is gone and takes them over at once, and claims whose
  heartbeat stopped (another host) are taken after ``stale_after`` seconds. The run itself
  resumes from its last checkpoint in its run directory;
* a clean stop (Ctrl-C, SIGTERM) puts its claims back to pending.

Retraining and small-dense points depend on the finished magnitude runs, so the sweep runs in
two phases: the second is planned from the store once every first-phase point is done.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..methods import catalogue
from ..rundir import INIT_FILE, MASK_FILE
from .executors import Executor
from .source_masks import archive_path, archive_source, restore_source
from .store import RunStore
from .sweep import (
    Point,
    SweepSpec,
    model_family,
    pending_row,
    plan_phase1,
    plan_phase2,
    save_sweep_definition,
)
from .workers import Heartbeat, claim_open_run, sigterm_as_interrupt, worker_id

__all__ = ["SweepResult", "run_sweep", "worker_id"]

TERMINAL = ("finished", "failed", "diverged")

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep process saw: points in the sweep, and how many it ran itself."""

    total: int = 0
    finished: int = 0
    failed: int = 0
    ran: int = 0
    skipped: int = 0


def _reads_source(point: Point) -> bool:
    """Whether ``point`` reads its source run's folder (its mask and initial weights): the
    retraining arms do; a small dense model only took its size from the source's nonzeros
    (recorded in the store), so a source whose folder is gone is not trained again for it."""
    technique = catalogue.find(point.technique)
    return (point.source is not None and technique is not None
            and technique.role == catalogue.RETRAINING)


class _Driver:
    def __init__(self, spec: SweepSpec, store: RunStore, executor: Executor, runs_dir: Path,
                 *, poll: float, stale_after: float, retry_failed: bool,
                 say: Callable[[str], None], device: str | None = None) -> None:
        self.spec, self.store, self.executor = spec, store, executor
        self.device = device
        self.runs_dir, self.poll, self.stale_after = runs_dir, poll, stale_after
        self.retry_failed, self.say = retry_failed, say
        self.worker = worker_id()
        self.family = model_family(spec)
        self.result = SweepResult()
        self.durations: list[float] = []
        self.heartbeat = Heartbeat(store.path, self.worker, every=max(1.0, stale_after / 10))

    # -- one phase ----------------------------------------------------------------------------

    def run_phase(self, points: Sequence[Point], label: str) -> None:
        ids = {p.run_id(self.spec.task): p for p in points}
        added = sum(self.store.add_pending(pending_row(p, self.spec, self.runs_dir / i,
                                                       self.family))
                    for i, p in ids.items())
        if self.retry_failed and ids:
            with self.store.transaction() as db:
                marks = ", ".join("?" * len(ids))
                db.execute(f"UPDATE runs SET status='pending', error=NULL WHERE status='failed' "
                           f"AND id IN ({marks})", list(ids))
        for source in sorted({p.source for p in points if p.source is not None}):
            self._kept_source_dir(source)
        done_before = self.store.count(id=list(ids), status=list(TERMINAL))
        self.result.total += len(ids)
        self.result.skipped += done_before
        self.say(f"{label}: {len(ids)} points ({added} new, {done_before} already done)")
        inflight: dict[Future, tuple[str, float]] = {}
        while True:
            while len(inflight) < self.executor.slots:
                run_id = self._claim_next(ids)
                if run_id is None:
                    break
                inflight[self._submit(run_id, ids[run_id])] = (run_id, time.monotonic())
            if not inflight:
                if self.store.count(id=list(ids), status=list(TERMINAL)) == len(ids):
                    return
                time.sleep(self.poll)  # the rest is being run by another process
                continue
            done, _ = wait(list(inflight), timeout=self.poll, return_when=FIRST_COMPLETED)
            for future in done:
                run_id, started = inflight.pop(future)
                self._record(run_id, ids[run_id], future.result(), time.monotonic() - started,
                             ids, len(inflight))

    def _claim_next(self, ids: dict[str, Point]) -> str | None:
        """Returns the id of a point this process just claimed, or None. Points are claimed
        in the order they were planned (see :func:`plan_phase1`)."""
        open_runs = {run.id: run for run in self.store.runs(id=list(ids),
                                                             status=["pending", "running"])}
        for run in (open_runs[i] for i in ids if i in open_runs):
            if claim_open_run(self.store, run, self.worker, self.stale_after,
                              partial(self._say_taken_over, run.id)):
                self.heartbeat.hold(run.id)
                return run.id
        return None

    def _say_taken_over(self, run_id: str, dead: str | None) -> None:
        self.say(f"  taking over {run_id} from {dead} (process gone); it resumes from its last "
                 "checkpoint")

    def _submit(self, run_id: str, point: Point) -> Future:
        source_dir = None
        try:
            if _reads_source(point):
                source_dir = self._source_dir(point.source)
                if (catalogue.get(point.technique).init == catalogue.SOURCE_INIT
                        and not (source_dir / INIT_FILE).is_file()):
                    from ..train.loop import write_initial_weights

                    self.say(f"  writing {source_dir / INIT_FILE} again from its config")
                    write_initial_weights(source_dir)
            config = point.config(self.spec.task, source_dir=source_dir)
        except ValueError as error:
            future: Future = Future()
            future.set_result({"ok": False, "error": str(error)})
            return future
        if self.device is not None:  # where it trains, not what: the run's id stays
            config.run.device = self.device
        self.say(f"  start {run_id}")
        return self.executor.submit({"config": config.to_dict(),
                                     "run_dir": str(self.runs_dir / run_id)})

    def _source_dir(self, source_id: str) -> Path:
        """Returns the directory of the run a retraining point derives from. The store keeps
        absolute paths; a checkout moved elsewhere finds the run under its own runs folder, and
        a fresh checkout without it has one rebuilt from the mask kept beside the store
        (:mod:`.source_masks`)."""
        folder = self._kept_source_dir(source_id)
        if folder is not None:
            return folder
        source = self.store.get(source_id)
        archive = archive_path(self.store.path, source_id)
        if source is not None and archive.is_file():
            folder = restore_source(archive, source.config, source.layers,
                                    self.runs_dir / source_id)
            self.say(f"  rebuilt {folder} from {archive} and the store")
            return folder
        raise ValueError(
            f"retraining needs the mask and initial weights of {source_id}, but neither its run "
            f"directory (looked in {', '.join(str(c) for c in self._source_candidates(source_id))})"
            f" nor its kept mask ({archive}) is here. Copy one of them here, or delete that run "
            "from the store so the sweep trains it again.")

    def requeue_lost_sources(self, phase2: Sequence[Point]) -> bool:
        """Puts back to pending each finished source of ``phase2`` whose mask is lost (neither
        its run directory nor its kept mask is here: a run finished on another checkout before
        masks were kept beside the store), and the phase-2 runs of that source that failed,
        for want of it. Returns whether any source was put back. The source is a first-phase
        point of this sweep, so training it again from its id reproduces it; the phase-2 plan
        is made again once it has finished."""
        sources = sorted({p.source for p in phase2 if _reads_source(p)})
        lost = [s for s in sources if self._kept_source_dir(s) is None
                and not archive_path(self.store.path, s).is_file()]
        if not lost:
            return False
        dependants = [p.run_id(self.spec.task) for p in phase2
                      if p.source in lost and _reads_source(p)]
        with self.store.transaction() as db:
            marks = ", ".join("?" * len(lost))
            db.execute(f"UPDATE runs SET status='pending', error=NULL, worker=NULL "
                       f"WHERE status='finished' AND id IN ({marks})", lost)
            marks = ", ".join("?" * len(dependants))
            db.execute(f"UPDATE runs SET status='pending', error=NULL, worker=NULL "
                       f"WHERE status='failed' AND id IN ({marks})", dependants)
        self.say(f"phase 2 derives from {', '.join(lost)}, whose mask and run directory are "
                 "not here: training it again (same id, same seed) before its retraining runs")
        return True

    def _source_candidates(self, source_id: str) -> list[Path]:
        source = self.store.get(source_id)
        candidates = [Path(source.run_dir)] if source and source.run_dir else []
        return candidates + [self.runs_dir / source_id]

    def _kept_source_dir(self, source_id: str) -> Path | None:
        """Returns the source's run directory when it is here (None otherwise), having first
        kept its mask beside the store if that was not done yet: the retraining runs still to
        come then survive a fresh checkout, which has no run directories."""
        for folder in self._source_candidates(source_id):
            if (folder / MASK_FILE).is_file():
                archive = archive_path(self.store.path, source_id)
                if archive_source(folder, archive):
                    self.say(f"  kept the mask of {source_id} in {archive} (commit it with "
                             "the store)")
                return folder
        return None

    def _record(self, run_id: str, point: Point, answer: dict[str, Any], seconds: float,
                ids: dict[str, Point], running: int) -> None:
        self.heartbeat.drop(run_id)
        self.result.ran += 1
        if answer.get("ok"):
            result = answer["result"]
            self.store.record_result(run_id, result, self.runs_dir / run_id,
                                     sweep=self.spec.name, technique=point.technique,
                                     variant=point.variant,
                                     hyperparameters=point.hyperparameters,
                                     replica=point.replica)
            metric = result.get("metric") or {}
            value = metric.get("test") if metric.get("test") is not None else metric.get("valid")
            what = (f"{result.get('status')}: {metric.get('name', 'metric')} "
                    + (f"{value:.4f}" if isinstance(value, float) else str(value))
                    + (f" at sparsity {result['sparsity']:.3f}"
                       if isinstance(result.get("sparsity"), float) else ""))
            self.durations.append(seconds)
        else:
            self.store.mark_failed(run_id, str(answer.get("error")))
            what = "FAILED: " + str(answer.get("error")).splitlines()[0]
        done = self.store.count(id=list(ids), status=list(TERMINAL))
        failed = self.store.count(id=list(ids), status=["failed", "diverged"])
        eta = ""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            remaining = len(ids) - done
            eta = f", ETA {_duration(mean * remaining / max(1, self.executor.slots))}"
        self.say(f"[{done}/{len(ids)}] {run_id} {what} ({seconds:.1f}s) | failures {failed}"
                 f"{eta}")

    def release_all(self) -> None:
        for run_id in self.heartbeat.take_all():
            self.store.release(run_id, self.worker)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_sweep(spec: SweepSpec, store: RunStore, executor: Executor, runs_dir: str | Path, *,
              poll: float = 2.0, stale_after: float = 600.0, retry_failed: bool = False,
              say: Callable[[str], None] | None = None,
              device: str | None = None) -> SweepResult:
    """Runs every point of ``spec`` not yet done, both phases, recording each in ``store`` and
    training into ``runs_dir/<run id>``. Returns the counts this process saw. ``device``
    (``cpu``, ``cuda[:N]``) sets every run's ``run.device`` without changing its identity, so
    a study may go on on another machine.

    A SIGTERM is turned into KeyboardInterrupt, so both put this process's claims back to
    pending before the exception propagates.
    """
    def default_say(text: str) -> None:
        print(text, flush=True)

    driver = _Driver(spec, store, executor, Path(runs_dir), poll=poll, stale_after=stale_after,
                     retry_failed=retry_failed, say=say or default_say, device=device)
    save_sweep_definition(store, spec)
    driver.heartbeat.start()
    try:
        with sigterm_as_interrupt():
            phase1 = plan_phase1(spec)
            driver.run_phase(phase1, f"sweep {spec.name}, phase 1")
            phase2 = plan_phase2(spec, store, phase1, driver.runs_dir)
            if driver.requeue_lost_sources(phase2):
                driver.run_phase(phase1, f"sweep {spec.name}, phase 1 again (lost sources)")
                phase2 = plan_phase2(spec, store, phase1, driver.runs_dir)
            if phase2:
                driver.run_phase(phase2,
                                 f"sweep {spec.name}, phase 2 (retraining, small dense)")
            elif spec.retraining is not None or spec.small_dense is not None:
                driver.say("phase 2: no finished magnitude run at the chosen sparsities; "
                           "nothing to retrain")
    except KeyboardInterrupt:
        driver.release_all()
        print("sweep stopped; its unfinished runs are pending again", file=sys.stderr)
        raise
    finally:
        driver.heartbeat.stopped.set()
        executor.close()
    result = driver.result
    all_ids = [p.run_id(spec.task) for p in (*phase1, *phase2)]
    result.finished = store.count(id=all_ids, status="finished")
    result.failed = store.count(id=all_ids, status=["failed", "diverged"])
    driver.say(f"sweep {spec.name}: {result.finished}/{result.total} finished, "
               f"{result.failed} failed or diverged; this process ran {result.ran}")
    return result
