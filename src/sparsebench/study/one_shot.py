"""One-shot pruning of a store's trained dense models, as runs of the study (issue 25).

One-shot techniques (the catalogue's ``ONE_SHOT`` role: magnitude, Wanda, SparseGPT) need no
training: :func:`one_shot_runs` takes every finished dense run of ours whose finalized model is
on disk, prunes a copy at each target with calibration batches drawn from the run's own task
(its training data, in the run's batch order), optionally fine-tunes it a few steps with the
mask fixed, estimates BatchNorm's running statistics again (the run's ``eval.bn_batches``, or
50 training batches), evaluates it on the run's validation and test splits with the run's evaluation
settings, and stores one row per (dense run, technique, target). The report then draws them
on the frontiers beside the techniques that prune while training: how far pruning without
training is from joint pruning and training, at each sparsity.

A row prunes the weights the task's joint runs prune, so that both count sparsity over the same
weights and a level means as many nonzeros: the layer selection (``sparsity.include`` and
``exclude``) of the store's finished runs on that task of the techniques that prune while
they train, unless ``include`` / ``exclude`` are given. On the translation task that takes
the shared embedding / softmax matrix (``include: ["*"]``), calibrated on its output
projection's input. (Rows
stored before session 25 left it dense, so a "50%" one-shot model there kept 76% of the
weights the joint runs count; they were removed from the store.)

    sparsebench one-shot --store results/study/fmnist-resnet.db --method wanda sparsegpt

A row's id hashes what defines it (source run, technique, target, calibration batches,
fine-tuning steps), so running the command again skips what is stored. Several processes may
work on one store at once, as sweeps do: each claims a row before pruning it (a "running" row
naming its process, kept alive by a heartbeat) and skips rows another live process holds; a
row left behind by a process killed outright is taken over, and a stopped one (Ctrl-C,
SIGTERM) deletes the rows it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..methods import catalogue
from ..rundir import MODEL_FILE, RESULT_FILE
from .store import Run, RunStore
from .workers import Heartbeat, claim_open_run, sigterm_as_interrupt, worker_id

__all__ = ["OneShotCounts", "Selection", "fine_tuned_variant", "joint_selection",
           "one_shot_run_id", "one_shot_runs"]

#: The sweep name of the rows this writes.
SWEEP = "one-shot"

#: A layer selection: (include patterns, exclude patterns), None for the default.
Selection = tuple[list[str] | None, list[str] | None]


@dataclass
class OneShotCounts:
    """What :func:`one_shot_runs` did: rows stored, rows already there, dense runs without
    their model file, rows left to another process pruning them."""

    stored: int = 0
    present: int = 0
    no_model: int = 0
    elsewhere: int = 0


def fine_tuned_variant(fine_tune_steps: int) -> str:
    """Returns a one-shot row's variant label: empty without fine-tuning."""
    return f"fine-tuned {fine_tune_steps} steps" if fine_tune_steps else ""


def one_shot_run_id(source: str, technique: str, target: float, calibration_batches: int,
                    fine_tune_steps: int, selection: Selection = (None, None)) -> str:
    """Returns the row id of one one-shot pruning of run ``source`` (readable prefix, hash);
    the layer selection enters the hash only when it is not the default."""
    identity: list = [source, technique, target, calibration_batches, fine_tune_steps]
    if selection != (None, None):
        identity.append([selection[0], selection[1]])
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    return f"{technique}-s{100 * target:g}-{digest}"


def one_shot_runs(store: RunStore, *, methods: Sequence[str], sparsities: Sequence[float],
                  calibration_batches: int = 8, fine_tune_steps: int = 0,
                  runs_dir: str | Path | None = None, device: str = "cpu",
                  threads: int | None = None, include: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None,
                  say: Callable[[str], None] | None = None,
                  stale_after: float = 600.0) -> OneShotCounts:
    """Prunes every finished dense run of ours at each of ``sparsities`` with each of
    ``methods`` (see the module docstring) and stores the results. ``include`` / ``exclude``
    choose the weights (``select_layers`` patterns); by default, those of the task's joint
    runs (:func:`joint_selection`). A row another process claimed is skipped unless that
    process is gone or its heartbeat is older than ``stale_after`` seconds.

    Raises:
        ValueError: one sentence for a technique that is not one-shot, a target outside
            (0, 1), fewer than one calibration batch, or joint runs of one task that prune
            different weights (then pass ``include``).
    """
    import torch

    techniques = [catalogue.get(m, role=catalogue.ONE_SHOT).name for m in methods]
    if not sparsities or any(not 0 < s < 1 for s in sparsities):
        raise ValueError(f"sparsities must be in (0, 1), got {list(sparsities)}.")
    if calibration_batches < 1 or fine_tune_steps < 0:
        raise ValueError(f"calibration_batches must be >= 1 and fine_tune_steps >= 0, got "
                         f"{calibration_batches} and {fine_tune_steps}.")
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    counts = OneShotCounts()
    claims = _RowClaims(store, stale_after)
    claims.heartbeat.start()
    try:
        with sigterm_as_interrupt():
            _prune_all(store, techniques, sparsities, calibration_batches, fine_tune_steps,
                       runs_dir, torch.device(device), include, exclude, claims, counts, say)
    finally:
        claims.release_all()
    return counts


def _prune_all(store: RunStore, techniques: Sequence[str], sparsities: Sequence[float],
               calibration_batches: int, fine_tune_steps: int, runs_dir: str | Path | None,
               device, include: Sequence[str] | None, exclude: Sequence[str] | None,
               claims: _RowClaims, counts: OneShotCounts, say: Callable[[str], None]) -> None:
    for dense in store.runs(source="ours", status="finished", technique=catalogue.DENSE):
        if dense.variant:  # a wider or narrower model than the study's: not a baseline
            continue
        run_dir = Path(runs_dir) / dense.id if runs_dir is not None else (
            Path(dense.run_dir) if dense.run_dir else None)
        if run_dir is None or not (run_dir / MODEL_FILE).is_file():
            counts.no_model += 1
            continue
        joint_include, joint_exclude = joint_selection(store, dense.task)
        selection: Selection = (  # each half given overrides that half only
            _patterns(include) if include else joint_include,
            _patterns(exclude) if exclude else joint_exclude)
        ids = {(t, s): one_shot_run_id(dense.id, t, s, calibration_batches, fine_tune_steps,
                                       selection) for t in techniques for s in sparsities}
        wanted = [key for key, run_id in ids.items() if not _stored(store, run_id)]
        counts.present += len(ids) - len(wanted)
        source = None  # loaded for the first row this process claims
        for technique, target in wanted:
            run_id = ids[technique, target]
            if not claims.claim(run_id, dense, technique, target, fine_tune_steps, say):
                if _stored(store, run_id):  # finished by another process since
                    counts.present += 1
                else:
                    counts.elsewhere += 1
                continue
            if source is None:
                source = _Source(run_dir, device, calibration_batches)
            row = source.prune(dense, technique, target, fine_tune_steps, selection)
            store.upsert([row])
            claims.done(run_id)
            counts.stored += 1
            say(f"{row.id}: {row.metric_name} {row.metric_value:.4f} at sparsity "
                f"{row.achieved_sparsity:.3f} ({row.train_seconds:.1f}s)")


class _RowClaims:
    """This process's claims on the one-shot rows it prunes: a row is written "running" under
    this process's name before it is pruned, so a second process on the store leaves it."""

    def __init__(self, store: RunStore, stale_after: float) -> None:
        self.store, self.stale_after = store, stale_after
        self.worker = worker_id()
        self.heartbeat = Heartbeat(store.path, self.worker, every=max(1.0, stale_after / 10))

    def claim(self, run_id: str, dense: Run, technique: str, target: float,
              fine_tune_steps: int, say: Callable[[str], None]) -> bool:
        """Returns True when this process now holds ``run_id``: a new row, a pending one, or
        one whose holder is gone (on this host) or silent for ``stale_after`` seconds."""
        self.store.add_pending(Run(
            id=run_id, technique=technique, sweep=SWEEP, task=dense.task,
            model_family=dense.model_family,
            variant=fine_tuned_variant(fine_tune_steps),
            target_sparsity=target, hyperparameters={"source": dense.id}, source="ours",
            seed=dense.seed, replica=dense.replica))
        held = self.store.get(run_id)
        claimed = held is not None and claim_open_run(
            self.store, held, self.worker, self.stale_after,
            lambda dead: say(f"  taking over {run_id} from {dead} (process gone)"))
        if claimed:
            self.heartbeat.hold(run_id)
        return claimed

    def done(self, run_id: str) -> None:
        self.heartbeat.drop(run_id)

    def release_all(self) -> None:
        """Deletes the rows this process claimed and did not finish (a one-shot row is only
        ever written whole), and stops the heartbeat."""
        self.heartbeat.stopped.set()
        for run_id in self.heartbeat.take_all():
            self.store.delete(id=run_id, worker=self.worker, status="running")


def joint_selection(store: RunStore, task: str) -> Selection:
    """Returns the layer selection (``sparsity.include``, ``sparsity.exclude``) of the store's
    finished runs on ``task`` of the techniques that prune while they train (the sparsifiers
    the answers compare), block-structured ones aside: the weights a one-shot row must prune
    to be set beside them. The default selection when there are none yet.

    Raises:
        ValueError: when those runs prune different weights.
    """
    found = set()
    for run in store.runs(source="ours", status="finished", technique=catalogue.sparsifiers()):
        if run.task != task or "block" in run.hyperparameters:
            continue
        sparsity = (run.config or {}).get("sparsity") or {}
        found.add((_key(sparsity.get("include")), _key(sparsity.get("exclude"))))
    if len(found) > 1:
        raise ValueError(f"The {task} runs in this store that prune while they train prune "
                         f"different weights ({sorted(found, key=str)}); pass include / "
                         f"exclude to choose the one-shot rows' weights.")
    include, exclude = found.pop() if found else (None, None)
    return (list(include) if include else None, list(exclude) if exclude else None)


def _key(patterns: Any) -> tuple[str, ...] | None:
    return None if not patterns else tuple(_patterns(patterns) or ())


def _patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if not patterns:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _stored(store: RunStore, run_id: str) -> bool:
    run = store.get(run_id)
    return run is not None and run.status == "finished"


class _Source:
    """A dense run's task, calibration batches and finalized weights, loaded once."""

    def __init__(self, run_dir: Path, device, calibration_batches: int) -> None:
        from ..train.config import RunConfig
        from ..train.loop import DEFAULT_BN_BATCHES
        from ..train.tasks import make_task

        self.run_dir, self.device = run_dir, device
        self.result = json.loads((run_dir / RESULT_FILE).read_text())
        self.config = RunConfig.from_dict(self.result["config"])
        self.task = make_task(self.config)
        self.calibration = [self.task.next_batch(device) for _ in range(calibration_batches)]
        # Every row starts from the same data position and random state, so what a row gets
        # (fine-tuning and BatchNorm batches, augmentation) does not depend on which rows ran
        # before it in this process or in an earlier, interrupted one.
        self.order = self.task.order.state_dict()
        own = self.config.eval.bn_batches  # None: the default for a perturbed network
        self.bn_batches = DEFAULT_BN_BATCHES if own is None else own

    def prune(self, dense: Run, technique: str, target: float, fine_tune_steps: int,
              selection: Selection) -> Run:
        import torch

        from ..methods.one_shot import fine_tune, prune_one_shot
        from ..metrics import sparsity_report
        from ..rundir import load_finalized_model
        from ..train.loop import recalibrate_batch_norm
        from ..train.tasks import seed_everything

        start = time.monotonic()
        self.task.order.load_state_dict(self.order)
        seed_everything(self.config.run.seed)
        model = load_finalized_model(self.run_dir).to(self.device)
        include, exclude = selection
        with warnings.catch_warnings():
            # "Embedding layers hold most parameters" under the default selection: it is the
            # joint runs' selection then, so the rows compare as they are.
            warnings.filterwarnings("ignore", message="Embedding layers hold", category=UserWarning)
            report = prune_one_shot(model, self.calibration, technique, target,
                                    include=include, exclude=exclude,
                                    forward=lambda m, batch: self.task.loss(m, batch))
        if fine_tune_steps:
            data = [self.task.next_batch(self.device) for _ in range(fine_tune_steps)]
            lr = self.config.optim.lr * 0.01  # a short, gentle repair, not a second schedule
            fine_tune(model, report.masks, data, steps=fine_tune_steps, lr=lr,
                      loss=lambda m, batch: self.task.loss(m, batch))
        # Pruning moves every later layer's activations, and BatchNorm's running statistics
        # no longer fit them: measured on a 1,200-step dense ResNet-50 shape at 50%, one-shot
        # magnitude fell from 90.6% to 24.1% valid top-1, and 89.5% once the statistics were
        # estimated again over training batches (SparseGPT 89.8%). Models without BatchNorm
        # are unchanged.
        recalibrate_batch_norm(model, self.task, self.device, self.bn_batches)
        metrics = {split: {k: float(v) for k, v in
                           self.task.evaluate(model, split, self.device).items()}
                   for split in ("valid", "test")}
        with torch.no_grad():
            example = tuple(t.to(self.device) for t in self.task.example_input())
            layers = sparsity_report(model, *example).to_dict()["layers"]
        metric = self.task.metric_name
        chosen = {"include": include, "exclude": exclude}
        return Run(
            id=one_shot_run_id(dense.id, technique, target, len(self.calibration),
                               fine_tune_steps, selection),
            technique=technique, sweep=SWEEP, task=dense.task, model_family=dense.model_family,
            variant=fine_tuned_variant(fine_tune_steps),
            target_sparsity=target, achieved_sparsity=report.sparsity, metric_name=metric,
            metric_value=(metrics["test"] or metrics["valid"]).get(metric),
            higher_is_better=self.task.higher_is_better,
            hyperparameters={"source": dense.id, "calibration_batches": len(self.calibration),
                             "fine_tune_steps": fine_tune_steps, "bn_batches": self.bn_batches,
                             **{k: v for k, v in chosen.items() if v}},
            layers=layers, config=self.result["config"], status="finished", source="ours",
            train_seconds=time.monotonic() - start, metrics=metrics, seed=dense.seed,
            replica=dense.replica,
        )
