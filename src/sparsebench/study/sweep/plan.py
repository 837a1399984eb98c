"""Planning a sweep: from a validated spec (and, for phase 2, the finished runs) to the points
it trains, one run each. Pure but for reading models' sizes and a source run's result.json;
the store is read in :mod:`.in_store`, which hands the runs in here."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ... import models
from ...methods import catalogue
from ...methods.catalogue import DENSE, MP_V2, SMALL_DENSE
from ...train import build_config
from ...train.config import RunConfig
from ..store import Run, read_result
from .spec import SearchSpec, SweepSpec, fail

# ---- points ---------------------------------------------------------------------------------

@dataclass
class Point:
    """One run of a sweep: what the store records (``technique``, ``variant``, target,
    ``hyperparameters``, ``replica``) and what the runner needs (``seed``, ``steps``, nested
    config ``values``; the ``method`` follows from the technique). ``source`` names the run it
    derives from."""

    technique: str
    target: float | None
    seed: int
    replica: int
    steps: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    source: str | None = None
    phase: int = 1

    @property
    def method(self) -> str:
        """Returns the technique the runner trains: the point's own, or the one a retraining
        kind or variant borrows (magnitude), or the dense baseline (small dense models)."""
        return catalogue.trains_as(self.technique) or DENSE

    def identity(self, task: str) -> dict[str, Any]:
        """Returns what defines the run (and its id): no paths, no sweep name."""
        return {"task": task, "technique": self.technique, "method": self.method,
                "target": self.target, "seed": self.seed, "steps": self.steps,
                "hyperparameters": self.hyperparameters, "values": self.values,
                "variant": self.variant, "source": self.source}

    def run_id(self, task: str) -> str:
        """Returns ``<technique>[-s<target%>]-r<replica>-<12 hex digits>``, stable across
        processes and re-runs (a hash of :meth:`identity`)."""
        digest = hashlib.sha256(json.dumps(self.identity(task), sort_keys=True,
                                           default=str).encode()).hexdigest()[:12]
        target = f"-s{100 * self.target:g}" if self.target is not None else ""
        return f"{self.technique}{target}-r{self.replica}-{digest}"

    def config(self, task: str, runs_dir: Path | None = None,
               source_dir: str | Path | None = None) -> RunConfig:
        """Returns the validated run configuration; ``source_dir`` is the run directory of
        :attr:`source` (its mask and initial weights), needed by retraining points."""
        values = self.values
        technique = catalogue.find(self.technique)
        if technique is not None and technique.role == catalogue.RETRAINING:
            if source_dir is None:
                raise ValueError(f"{self.technique} point needs its source run's directory.")
            extra: dict[str, Any] = {"mask_from": str(Path(source_dir) / "mask.safetensors")}
            if technique.init == catalogue.SOURCE_INIT:
                extra["init_from"] = str(Path(source_dir) / "init.safetensors")
            if technique.init == catalogue.AUGMENTED:
                extra["augmented_init"] = True
            values = _merge(values, {"sparsity": extra})
        return build_config(task, method=self.method, sparsity=self.target, steps=self.steps,
                            seed=self.seed, values=values)


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the nested merge of ``layers`` (later wins, mappings merged key by key)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = value
    return out


def _sparsity_values(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {"sparsity": dict(hparams)} if hparams else {}


def coarse_to_fine(values: Sequence[float]) -> list[float]:
    """Returns ``values`` (sorted) in bisection order: the middle one, both ends, then the
    midpoints of the gaps left, widest first, so a study stopped early has already covered its
    whole range coarsely. ``[.5, .6, .7, .8, .9, .95, .98]`` gives
    ``[.8, .5, .98, .6, .9, .7, .95]``."""
    ordered = sorted(values)
    if len(ordered) <= 2:
        return ordered
    middle = len(ordered) // 2
    picks, gaps = [middle, 0, len(ordered) - 1], [(0, middle), (middle, len(ordered) - 1)]
    while gaps:
        gaps.sort(key=lambda gap: gap[0] - gap[1])  # widest first, then leftmost (stable)
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        mid = (low + high) // 2
        picks.append(mid)
        gaps += [(low, mid), (mid, high)]
    return [ordered[i] for i in picks]


def _interleave(groups: Sequence[Sequence[Point]]) -> list[Point]:
    """Returns the points of ``groups`` taken one from each group in turn."""
    merged: list[Point] = []
    for round_ in range(max((len(g) for g in groups), default=0)):
        merged += [group[round_] for group in groups if round_ < len(group)]
    return merged


def plan_phase1(spec: SweepSpec) -> list[Point]:
    """Returns the points that need no other run: dense replicas, every technique's settings
    at every target (pruning) or on their own (VD, L0), and MP v2.

    The order is the order they are trained in: the dense baseline first, then the techniques
    taken in turn, each walking its targets coarse to fine (:func:`coarse_to_fine`) with all its
    settings at a target before the next, so a study stopped part way compares every technique
    over the whole sparsity range rather than finishing one technique first.
    """
    common = spec.overrides
    points = [Point(DENSE, None, seed, seed, spec.steps, {}, common, variant=spec.variant)
              for seed in spec.dense_seeds]
    groups: list[list[Point]] = []
    for name, search in spec.techniques.items():
        targeted = catalogue.get(name).takes_target
        group = []
        for target in (coarse_to_fine(spec.sparsities) if targeted else (None,)):
            for seed in spec.seeds:
                for hparams in search.settings():
                    values = _merge(common, search.overrides, _sparsity_values(hparams))
                    group.append(Point(name, target, seed, seed, spec.steps,
                                       dict(hparams), values, variant=spec.variant))
        groups.append(group)
    if spec.mp_v2 is not None:
        reference = catalogue.reference()
        search = spec.mp_v2.search or spec.techniques.get(reference, SearchSpec())
        steps = int(round(spec.mp_v2.steps_factor * spec.steps))
        group = []
        for target in coarse_to_fine(spec.mp_v2.sparsities):
            layers = mp_v2_layer_targets(spec, target)
            for seed in spec.seeds:
                for hparams in search.settings():
                    values = _merge(common, search.overrides, _sparsity_values(hparams),
                                    {"sparsity": {"layer_sparsity": layers,
                                                  "distribution": "fill"}})
                    group.append(Point(MP_V2, target, seed, seed, steps,
                                       dict(hparams), values))
        groups.append(group)
    return points + _interleave(groups)


def _model_of(spec: SweepSpec, values: Mapping[str, Any] | None = None):
    config = build_config(spec.task, steps=spec.steps, values=_merge(spec.overrides, values or {}))
    return config, models.create(config.model.name, **config.model.options)


def mp_v2_layer_targets(spec: SweepSpec, target: float) -> dict[str, float]:
    """Returns MP v2's fixed layers (``{first: first_sparsity, last: last_sparsity}``) for
    ``target``, after checking that the other layers can make up the overall target.

    Raises:
        SweepError: when a named layer is not sparsified or the target is unreachable.
    """
    from ...distributions import fill
    from ...sparsify import select_layers

    assert spec.mp_v2 is not None
    config, model = _model_of(spec)
    layers = select_layers(model, config.sparsity.include, config.sparsity.exclude)
    names = [layer.name for layer in layers]
    first, last = spec.mp_v2.first or names[0], spec.mp_v2.last or names[-1]
    for key, value in (("first", first), ("last", last)):
        if value not in names:
            fail(f"mp_v2.{key}", f"{value!r} is not a sparsified weight of {config.model.name}; "
                                  f"they are {names[:12]}.")
    fixed = {first: spec.mp_v2.first_sparsity, last: spec.mp_v2.last_sparsity}
    try:
        fill({layer.name: layer.shape for layer in layers}, target, fixed)
    except ValueError as error:
        fail("mp_v2.sparsities", f"{target:g} is unreachable on {config.model.name} "
                                  f"({error}) MP v2 needs a first layer small next to the rest.")
    return fixed


def validate_points(spec: SweepSpec) -> None:
    """Resolves every phase-1 point's configuration (and checks the small-dense option), so a
    bad hyperparameter fails now, in one sentence, and not hours into the sweep."""
    seen: set[str] = set()
    for point in plan_phase1(spec):
        key = json.dumps([point.technique, point.hyperparameters, point.target], default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            point.config(spec.task)
        except ValueError as error:
            where = ("overrides" if point.technique == DENSE
                     else f"techniques.{point.method}" if point.technique != MP_V2 else "mp_v2")
            fail(where, f"{error}".rstrip("."))
    if spec.small_dense is not None:
        config, _ = _model_of(spec)
        options = models.defaults(config.model.name)
        option = spec.small_dense.option
        if option not in options:
            fail("small_dense.option", f"model {config.model.name} has no option {option!r}; "
                                        f"its options are {sorted(options)}.")
        current = config.model.options.get(option, options[option])
        if isinstance(current, bool) or not isinstance(current, int):
            fail("small_dense.option", f"{option!r} of {config.model.name} is "
                                        f"{current!r}, not an integer size to narrow.")


# ---- phase 2: derived from finished magnitude runs ------------------------------------------

def magnitude_run_ids(spec: SweepSpec, phase1: Sequence[Point]) -> list[str]:
    """Returns the ids of the magnitude-pruning runs of the sweep's first phase ``phase1``."""
    return [p.run_id(spec.task) for p in phase1 if p.technique == catalogue.reference()]


def best_magnitude_runs_among(runs: Iterable[Run], spec: SweepSpec, phase1: Sequence[Point]
                              ) -> dict[float, Run]:
    """Returns, per target sparsity, the finished magnitude-pruning run of this sweep's first
    phase with the best metric (the study retrains "the best magnitude run"), or the best
    ``spec.select_by`` measure where the sweep names one.

    Raises:
        ValueError: when ``select_by`` names a measure a finished run's result lacks (picking
            among the others would pass a worse run for the best).

    Runs that are not finished, or not magnitude runs of ``phase1``, are passed over; ties go
    to the earlier run in ``runs``.
    """
    ids = set(magnitude_run_ids(spec, phase1))
    best: dict[float, tuple[float, Run]] = {}
    for run in runs:
        if run.id not in ids or run.status != "finished" or run.target_sparsity is None:
            continue
        key = next((s for s in spec.sparsities if abs(s - run.target_sparsity) < 1e-9), None)
        if key is None:
            continue
        score = _selection_score(run, spec.select_by)
        if score is None:
            continue
        if key not in best or score > best[key][0]:
            best[key] = (score, run)
    return {key: run for key, (_, run) in best.items()}


def phase2_source_of(run: Run) -> str | None:
    """Returns the id of the magnitude run a retraining or small-dense run derives from, or
    None for any other run."""
    if run.technique not in catalogue.from_source():
        return None
    source = run.hyperparameters.get("source") or run.hyperparameters.get("matched_run")
    return str(source) if source else None


def _selection_score(run: Run, select_by: str | None) -> float | None:
    """Returns a number that is larger for the better run: the headline metric, or the
    ``select_by`` measure, negated where lower is better; None for a run that cannot be
    ranked (no headline metric, or a value that is not finite)."""
    if select_by is None:
        if run.metric_value is None or not math.isfinite(run.metric_value):
            return None
        return run.metric_value if run.higher_is_better else -run.metric_value
    split, _, measure = select_by.partition(".")
    value = (run.metrics.get(split) or {}).get(measure)
    if value is None:
        raise ValueError(f"Run {run.id} has no {select_by} in its metrics, which select_by "
                         "picks phase 2's sources by; rescore it (sparsebench rescore) or "
                         "remove select_by from the sweep.")
    if not math.isfinite(float(value)):
        return None
    # Losses are lower-better, and so is the headline metric of a task that says so (bits
    # per character): the others (top-1, BLEU) are higher-better.
    lower = measure == "loss" or (measure == run.metric_name and not run.higher_is_better)
    return -float(value) if lower else float(value)


def parameter_count(model_name: str, options: Mapping[str, Any]) -> int:
    """Returns the parameter count of the dense model ``model_name`` with ``options``."""
    return sum(p.numel() for p in models.create(model_name, **options).parameters())


def width_for_parameters(model_name: str, options: Mapping[str, Any], option: str,
                         parameters: int) -> tuple[int, int]:
    """Returns ``(value, count)``: the value of the integer model option ``option`` (at most
    its current value) whose dense model's parameter count is nearest ``parameters``, and that
    count. Counts grow with the option, so a binary search finds the crossing."""
    def count(value: int) -> int:
        return parameter_count(model_name, {**options, option: value})

    high = int(options[option])
    lo, hi = 1, high
    while lo < hi:  # the largest value whose count is <= parameters (or 1)
        mid = (lo + hi + 1) // 2
        if count(mid) <= parameters:
            lo = mid
        else:
            hi = mid - 1
    candidates = [(abs(count(v) - parameters), v) for v in {lo, min(lo + 1, high)}]
    _, value = min(candidates)
    return value, count(value)


def _read_parameters(run: Run, runs_dir: str | Path | None = None,
                     total: Callable[[], int] | None = None) -> int | None:
    """Returns the nonzero weight count of a finished run, from its result.json where the
    store says it is, else under ``runs_dir`` (a checkout moved, or a study gone on on
    another machine with its sources beside it), else, given ``total`` (which returns the
    dense model's parameter count), that count less the zeros the store records in the run's
    layers: run folders are not committed, so a fresh checkout of a study has the store
    alone. That counts every parameter outside the recorded layers (biases, gates) as
    nonzero, as result.json's count does for a trained model."""
    result = read_result(run.run_dir or "")
    if not result and runs_dir is not None:
        result = read_result(Path(runs_dir) / run.id)
    nonzero = (result.get("parameters") or {}).get("nonzero")
    if nonzero is not None:
        return int(nonzero)
    if total is None or not run.layers:
        return None
    zeros = sum(int(layer["size"]) - int(layer["nonzeros"]) for layer in run.layers
                if "size" in layer and "nonzeros" in layer)
    return total() - zeros


def _source_model_options(config, source: Run) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Returns the model options ``source`` trained with: the preset's, overlaid with those
    its stored config records, which include what its data implied (a character model's
    vocabulary: 85 characters of Shakespeare against the preset's 256; sized with 256, the
    small dense GRUs matched to a 98% run's 27,162 nonzeros trained with 12,385 parameters)."""
    recorded = ((source.config or {}).get("model") or {}).get("options") or {}
    return {**models.defaults(config.model.name), **config.model.options, **recorded}


def plan_phase2_from_runs(spec: SweepSpec, runs: Iterable[Run], phase1: Sequence[Point],
                          runs_dir: str | Path | None = None) -> list[Point]:
    """Returns the retraining and small-dense points, from the best finished magnitude run
    among ``runs`` at each chosen sparsity (sparsities without one, or whose result.json is
    neither where the run says nor under ``runs_dir``, are skipped)."""
    best = best_magnitude_runs_among(runs, spec, phase1)
    points: list[Point] = []
    common = spec.overrides
    if spec.retraining is not None:
        for target in spec.retraining.sparsities:
            source = best.get(target)
            if source is not None:
                points += retraining_points(spec, target, source.id, source.seed or 0)
    if spec.small_dense is not None:
        config, _ = _model_of(spec)
        option = spec.small_dense.option
        for target in spec.small_dense.sparsities:
            source = best.get(target)
            if source is None:
                continue
            options = _source_model_options(config, source)
            nonzero = _read_parameters(
                source, runs_dir, partial(parameter_count, config.model.name, options))
            if nonzero is None:
                continue
            value, count = width_for_parameters(config.model.name, options, option, nonzero)
            values = _merge(common, {"model": {"options": {option: value}}})
            hparams = {option: value, "parameters": count, "matched_run": source.id,
                       "matched_nonzero": nonzero, "matched_sparsity": target}
            for replica in range(spec.small_dense.replicas):
                points.append(Point(SMALL_DENSE, None, replica, replica, spec.steps,
                                    hparams, values, variant=f"{option}={value}",
                                    source=source.id, phase=2))
    return points


def retraining_points(spec: SweepSpec, target: float, source_id: str, source_seed: int
                      ) -> list[Point]:
    """Returns the retraining points of ``spec`` at ``target`` that derive from the magnitude
    run ``source_id`` (trained with seed ``source_seed``)."""
    assert spec.retraining is not None
    reference = catalogue.reference()
    values = _merge(spec.overrides, spec.techniques.get(reference, SearchSpec()).overrides)
    points = []
    for kind in spec.retraining.kinds:
        steps = int(round(catalogue.get(kind).steps_factor * spec.steps))
        for replica in range(spec.retraining.replicas):
            # A seed the pruning run did not use: a fresh init and data order (the lottery
            # ticket loads the pruning run's init over it).
            points.append(Point(kind, target, source_seed + 1 + replica, replica,
                                steps, {"source": source_id}, values, source=source_id,
                                phase=2))
    return points


def reusable_run_ids(spec: SweepSpec) -> set[str]:
    """Returns the ids of every run ``spec`` may plan, whatever the store holds: its first
    phase, and the retraining points it would plan from each of its magnitude runs were that
    run the best at its sparsity. Another store's finished runs with these ids are this
    sweep's own (run ids hash what defines a run), so they can be copied in instead of trained
    again. Small-dense points are left out: their width depends on the source's result."""
    phase1 = plan_phase1(spec)
    ids = {point.run_id(spec.task) for point in phase1}
    if spec.retraining is not None:
        for point in phase1:
            if (point.technique == catalogue.reference()
                    and point.target in spec.retraining.sparsities):
                source = point.run_id(spec.task)
                ids |= {p.run_id(spec.task) for p in
                        retraining_points(spec, point.target, source, point.seed)}
    return ids

