"""Sweep files: the study's experiment grid as YAML, validated where it enters, and the points
(one training run each) it resolves to.

A sweep file names a task, the techniques with a hyperparameter grid or a random search each,
the target sparsities (for the techniques that take one), replicas (seeds ``0 .. replicas-1``),
one step budget for all techniques and overrides common to every run; optional blocks add the
dense baseline, the retraining study (scratch-e, scratch-b, lottery, augmented init from the
best magnitude-pruning run per sparsity), magnitude pruning v2 and small dense models at equal
parameters. An example (``sweeps/`` at the repository root has more)::

    name: lenet300-small
    task: fmnist-lenet300
    steps: 600
    replicas: 1
    sparsities: [0.5, 0.8, 0.9]
    dense: true
    overrides: {data.valid_size: 5000, optim.method_lr_scale: 10}
    techniques:
      magnitude: {grid: {begin: [0.1], end: [0.5, 0.6]}}
      random: {}
      variational_dropout: {grid: {kl_weight: [3.0e-6, 1.0e-5]}, fixed: {warmup_end: 0.5}}
      l0:
        random: {samples: 3, seed: 0,
                 space: {l0_weight: {log_uniform: [3.0e-5, 3.0e-4]}, init_log_alpha: {choice: [0]}}}
    retraining: {kinds: [scratch-e, scratch-b, lottery, augmented], sparsities: [0.9], replicas: 1}
    select_by: valid.loss   # what picks phase 2's source run (default: the headline metric)
    mp_v2: {sparsities: [0.9], last_sparsity: 0.8, steps_factor: 1.5}
    small_dense: {option: width, sparsities: [0.9]}

Points are plain data. A point's id is a readable prefix plus a hash of everything that
defines the run (task, technique, method, target, seed, steps, hyperparameters, overrides and
the run it derives from), so re-running a sweep finds its finished runs in the store, and two
sweep files sharing a point share its run. Retraining and small-dense points derive from the
best finished magnitude-pruning run at each sparsity, so they are planned in a second phase,
from the store (:func:`plan_phase2`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import methods, models
from ..train import build_config
from ..train.config import RunConfig, _yaml_number, read_yaml
from .store import Run, RunStore, model_family_of, read_result

__all__ = [
    "RETRAINING_KINDS",
    "MPv2Spec",
    "Point",
    "RetrainingSpec",
    "SearchSpec",
    "SmallDenseSpec",
    "SweepSpec",
    "best_magnitude_runs",
    "coarse_to_fine",
    "current_phase2_sources",
    "orphaned_phase2_runs",
    "phase2_source_of",
    "load_sweep",
    "mp_v2_layer_targets",
    "parse_sweep",
    "plan_phase1",
    "plan_phase2",
    "save_sweep_definition",
    "save_sweep_text",
    "sweep_definitions",
    "width_for_parameters",
]

RETRAINING_KINDS = ("scratch-e", "scratch-b", "lottery", "augmented")
_TOP_KEYS = ("name", "task", "steps", "replicas", "sparsities", "dense", "overrides", "resources",
             "techniques", "retraining", "mp_v2", "small_dense", "select_by")
_SELECT_SPLITS = ("valid", "test")
_DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


class SweepError(ValueError):
    """A sweep file that cannot be run, with one sentence naming the field and the fix."""


def _fail(where: str, message: str) -> None:
    raise SweepError(f"{where}: {message}")


# ---- the file format ------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchSpec:
    """A technique's hyperparameters: a grid (every combination) or a random search
    (``samples`` draws from ``space`` with ``seed``), plus ``fixed`` values for every point and
    per-technique ``overrides`` (dotted config keys)."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    samples: int = 0
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> list[dict[str, Any]]:
        """Returns the hyperparameter settings, in a stable order (grid: product in key order;
        random: the seeded draws, rounded to 4 significant digits so ids read well)."""
        if self.samples:
            rng = random.Random(self.seed)
            drawn = []
            for _ in range(self.samples):
                drawn.append({**self.fixed, **{k: _draw(rng, d) for k, d in self.space.items()}})
            return drawn
        settings: list[dict[str, Any]] = [dict(self.fixed)]
        for key, values in self.grid.items():
            settings = [{**s, key: v} for s in settings for v in values]
        return settings


def _draw(rng: random.Random, dist: Mapping[str, list[Any]]) -> Any:
    (kind, args), = dist.items()
    if kind == "choice":
        return rng.choice(args)
    low, high = args
    if kind == "int_uniform":
        return rng.randint(int(low), int(high))
    value = (math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "log_uniform"
             else rng.uniform(low, high))
    return float(f"{value:.4g}")


@dataclass(frozen=True)
class RetrainingSpec:
    """Retraining with the final mask of the best magnitude run at each of ``sparsities``."""

    kinds: tuple[str, ...] = RETRAINING_KINDS
    sparsities: tuple[float, ...] = ()
    replicas: int = 1


@dataclass(frozen=True)
class MPv2Spec:
    """Magnitude pruning v2: ``first`` layer at ``first_sparsity`` (dense), ``last`` at
    ``last_sparsity``, the others ``fill``ed so the overall sparsity is the target, and
    ``steps_factor`` times the steps. ``first``/``last`` default to the first and last
    sparsified weights of the model."""

    sparsities: tuple[float, ...] = ()
    first: str | None = None
    last: str | None = None
    first_sparsity: float = 0.0
    last_sparsity: float = 0.8
    steps_factor: float = 1.5
    search: SearchSpec | None = None  # magnitude settings for MP v2; None: magnitude's own


@dataclass(frozen=True)
class SmallDenseSpec:
    """A dense model with model option ``option`` (e.g. ``width``) narrowed until its parameter
    count is nearest the nonzero count of the best magnitude run at each of ``sparsities``."""

    option: str = "width"
    sparsities: tuple[float, ...] = ()
    replicas: int = 1


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    name: str
    task: str
    steps: int
    replicas: int = 1
    sparsities: tuple[float, ...] = ()
    dense: bool = True
    dense_replicas: int | None = None  # None: ``replicas``
    overrides: dict[str, Any] = field(default_factory=dict)
    techniques: dict[str, SearchSpec] = field(default_factory=dict)
    retraining: RetrainingSpec | None = None
    mp_v2: MPv2Spec | None = None
    small_dense: SmallDenseSpec | None = None
    #: What picks the best magnitude run phase 2 derives from: ``None`` for each run's
    #: headline metric (as the study did), or ``"<split>.<measure>"`` from its result's
    #: metrics, e.g. ``valid.loss`` (a loss is better lower, anything else higher).
    select_by: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    text: str = ""

    @property
    def seeds(self) -> list[int]:
        """Returns the replica seeds ``0 .. replicas-1``."""
        return list(range(self.replicas))

    @property
    def dense_seeds(self) -> list[int]:
        """Returns the dense baseline's seeds (``dense: {replicas: N}`` may ask for more)."""
        return list(range(self.dense_replicas or self.replicas)) if self.dense else []


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(where, f"must be a mapping, got {value!r}.")
    return dict(value)


def _int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(where, f"must be an integer >= {low}, got {value!r}.")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, f"must be a number, got {value!r}.")
    return float(value)


def _sparsities(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        _fail(where, f"must be a non-empty list of fractions such as [0.5, 0.9], got {value!r}.")
    out = []
    for item in value:
        s = _number(item, where)
        if not 0.0 < s < 1.0:
            hint = f"; write {s / 100:g} for {s:g}%" if 1.0 < s < 100.0 else ""
            _fail(where, f"{item!r} is not a sparsity fraction in (0, 1){hint}.")
        out.append(s)
    if len(set(out)) != len(out):
        _fail(where, f"lists a sparsity twice: {value!r}.")
    return tuple(out)


def _overrides(value: Any, where: str) -> dict[str, Any]:
    """Returns nested config values from a mapping of dotted keys (``optim.lr: 0.1``)."""
    nested: dict[str, Any] = {}
    for key, item in _mapping(value, where).items():
        parts = str(key).split(".")
        if len(parts) < 2 or not all(parts):
            _fail(where, f"key {key!r} must be a dotted config key such as optim.lr.")
        if parts[0] not in RunConfig.SECTIONS:
            _fail(where, f"key {key!r} names no config section; the sections are "
                         f"{list(RunConfig.SECTIONS)}.")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = item
    return nested


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


def _technique_keys(method: str) -> set[str]:
    """Returns the hyperparameter names a technique accepts: its Config's fields, plus the
    schedule of the pruning methods."""
    import dataclasses

    cls = methods.get(method)
    keys = {f.name for f in dataclasses.fields(cls.config_class)}
    if cls.uses_sparsity_target:
        keys |= {"begin", "end", "frequency"}
    return keys


def _search(name: str, value: Any, where: str | None = None) -> SearchSpec:
    where = where or f"techniques.{name}"
    raw = _mapping(value, where)
    unknown = sorted(set(raw) - {"grid", "random", "fixed", "overrides"})
    if unknown:
        _fail(where, f"unknown key(s) {unknown}; a technique has grid, random, fixed and "
                     "overrides.")
    if "grid" in raw and "random" in raw:
        _fail(where, "has both grid and random; choose one search per technique.")
    allowed = _technique_keys(name)
    grid = {}
    for key, values in _mapping(raw.get("grid"), f"{where}.grid").items():
        if key not in allowed:
            _fail(f"{where}.grid", f"{key!r} is not a hyperparameter of {name}; it has "
                                   f"{sorted(allowed)}.")
        if not isinstance(values, list) or not values:
            _fail(f"{where}.grid.{key}", f"must be a non-empty list of values, got {values!r}.")
        grid[key] = list(values)
    space, samples, seed = {}, 0, 0
    if "random" in raw:
        rnd = _mapping(raw["random"], f"{where}.random")
        bad = sorted(set(rnd) - {"samples", "seed", "space"})
        if bad:
            _fail(f"{where}.random", f"unknown key(s) {bad}; it has samples, seed and space.")
        samples = _int(rnd.get("samples"), f"{where}.random.samples")
        seed = _int(rnd.get("seed", 0), f"{where}.random.seed", low=0)
        for key, dist in _mapping(rnd.get("space"), f"{where}.random.space").items():
            at = f"{where}.random.space.{key}"
            if key not in allowed:
                _fail(at, f"{key!r} is not a hyperparameter of {name}; it has {sorted(allowed)}.")
            dist = _mapping(dist, at)
            if len(dist) != 1 or next(iter(dist)) not in _DISTRIBUTIONS:
                _fail(at, f"must be one of {{{', '.join(_DISTRIBUTIONS)}: [...]}}, got {dist!r}.")
            (kind, args), = dist.items()
            if not isinstance(args, list) or not args:
                _fail(at, f"{kind} needs a list, got {args!r}.")
            if kind != "choice":
                if len(args) != 2:
                    _fail(at, f"{kind} needs [low, high], got {args!r}.")
                low, high = (_number(a, at) for a in args)
                if not low < high:
                    _fail(at, f"{kind} needs low < high, got {args!r}.")
                if kind == "log_uniform" and low <= 0:
                    _fail(at, f"log_uniform needs positive bounds, got {args!r}.")
            space[key] = {kind: list(args)}
        if not space:
            _fail(f"{where}.random.space", "is empty; name at least one hyperparameter.")
    fixed = _mapping(raw.get("fixed"), f"{where}.fixed")
    for key in fixed:
        if key not in allowed:
            _fail(f"{where}.fixed", f"{key!r} is not a hyperparameter of {name}; it has "
                                    f"{sorted(allowed)}.")
    return SearchSpec(grid, space, samples, seed, fixed,
                      _overrides(raw.get("overrides"), f"{where}.overrides"))


def parse_sweep(values: Mapping[str, Any], *, name: str = "sweep", text: str = "") -> SweepSpec:
    """Returns the validated sweep of a parsed YAML mapping; every point is resolved to a run
    configuration once here, so a bad value fails before anything trains.

    Raises:
        SweepError: one sentence naming the field, the value and what is allowed.
    """
    if not isinstance(values, Mapping):
        _fail("sweep", "the file must hold a mapping of sweep fields, got "
                       f"{type(values).__name__}.")
    unknown = sorted(set(values) - set(_TOP_KEYS))
    if unknown:
        _fail("sweep", f"unknown field(s) {unknown}; a sweep has {list(_TOP_KEYS)}.")
    for required in ("task", "steps", "techniques"):
        if required not in values:
            _fail(required, "is required.")
    from ..train.tasks import PRESETS

    task = values["task"]
    if task not in PRESETS:
        _fail("task", f"{task!r} is not a task; choose one of {sorted(PRESETS)}.")
    steps = _int(values["steps"], "steps")
    replicas = _int(values.get("replicas", 1), "replicas")
    raw_techniques = _mapping(values["techniques"], "techniques")
    if not raw_techniques:
        _fail("techniques", "is empty; name at least one of "
                            f"{sorted(methods.REGISTRY)}.")
    techniques = {}
    for key, spec in raw_techniques.items():
        try:
            canonical = methods.get(str(key)).name
        except ValueError:
            _fail("techniques", f"{key!r} is not a technique; choose from "
                                f"{sorted(methods.REGISTRY)} (the dense baseline is "
                                "'dense: true').")
        techniques[canonical] = _search(canonical, spec)
    targeted = [t for t in techniques if methods.get(t).uses_sparsity_target]
    sparsities: tuple[float, ...] = ()
    if targeted or "sparsities" in values:
        sparsities = _sparsities(values.get("sparsities"), "sparsities")
    resources = _mapping(values.get("resources"), "resources")
    bad = sorted(set(resources) - {"cpus", "gpus"})
    if bad:
        _fail("resources", f"unknown key(s) {bad}; it has cpus and gpus (per run).")
    cpus = _number(resources.get("cpus", 1), "resources.cpus")
    gpus = _number(resources.get("gpus", 0), "resources.gpus")
    if cpus <= 0 or gpus < 0:
        _fail("resources", f"cpus must be > 0 and gpus >= 0, got {resources!r}.")
    dense, dense_replicas = values.get("dense", True), None
    if isinstance(dense, Mapping):
        bad = sorted(set(dense) - {"replicas"})
        if bad:
            _fail("dense", f"unknown key(s) {bad}; it has replicas.")
        dense_replicas = _int(dense.get("replicas", replicas), "dense.replicas")
        dense = True
    if not isinstance(dense, bool):
        _fail("dense", f"must be true, false or {{replicas: N}}, got {dense!r}.")

    retraining = None
    if values.get("retraining") is not None:
        raw = _mapping(values["retraining"], "retraining")
        bad = sorted(set(raw) - {"kinds", "sparsities", "replicas"})
        if bad:
            _fail("retraining", f"unknown key(s) {bad}; it has kinds, sparsities and replicas.")
        kinds = raw.get("kinds", list(RETRAINING_KINDS))
        if not isinstance(kinds, list) or not kinds or any(k not in RETRAINING_KINDS
                                                           for k in kinds):
            _fail("retraining.kinds", f"must list some of {list(RETRAINING_KINDS)}, got {kinds!r}.")
        if "magnitude" not in techniques:
            _fail("retraining", "retrains the best magnitude-pruning run, so techniques must "
                                "include magnitude.")
        retraining = RetrainingSpec(tuple(kinds),
                                    _sparsities(raw.get("sparsities"), "retraining.sparsities"),
                                    _int(raw.get("replicas", 1), "retraining.replicas"))
        _check_subset(retraining.sparsities, sparsities, "retraining.sparsities")
    mp_v2 = None
    if values.get("mp_v2") is not None:
        raw = _mapping(values["mp_v2"], "mp_v2")
        bad = sorted(set(raw) - {"sparsities", "first", "last", "first_sparsity",
                                 "last_sparsity", "steps_factor", "grid"})
        if bad:
            _fail("mp_v2", f"unknown key(s) {bad}; it has sparsities, first, last, "
                           "first_sparsity, last_sparsity, steps_factor and grid.")
        if "magnitude" not in techniques:
            _fail("mp_v2", "is a variant of magnitude pruning, so techniques must include "
                           "magnitude.")
        # MP v2's own settings (e.g. the best begin/end only), else magnitude's whole search.
        mp_v2_search = None
        if raw.get("grid") is not None:
            grid = _search("magnitude", {"grid": raw["grid"]}, where="mp_v2").grid
            mp_v2_search = dataclasses.replace(techniques["magnitude"], grid=grid, space={},
                                               samples=0)
        factor = _number(raw.get("steps_factor", 1.5), "mp_v2.steps_factor")
        if factor <= 0:
            _fail("mp_v2.steps_factor", f"must be positive, got {factor}.")
        layer_values = {}
        for key in ("first_sparsity", "last_sparsity"):
            layer_values[key] = _number(raw.get(key, 0.0 if key.startswith("first") else 0.8),
                                        f"mp_v2.{key}")
            if not 0.0 <= layer_values[key] < 1.0:
                _fail(f"mp_v2.{key}", f"must be in [0, 1), got {layer_values[key]}.")
        mp_v2 = MPv2Spec(_sparsities(raw.get("sparsities"), "mp_v2.sparsities"),
                         raw.get("first"), raw.get("last"), **layer_values, steps_factor=factor,
                         search=mp_v2_search)
    small_dense = None
    if values.get("small_dense") is not None:
        raw = _mapping(values["small_dense"], "small_dense")
        bad = sorted(set(raw) - {"option", "sparsities", "replicas"})
        if bad:
            _fail("small_dense", f"unknown key(s) {bad}; it has option, sparsities and replicas.")
        if "magnitude" not in techniques:
            _fail("small_dense", "matches the best magnitude-pruning run's nonzeros, so "
                                 "techniques must include magnitude.")
        small_dense = SmallDenseSpec(str(raw.get("option", "width")),
                                     _sparsities(raw.get("sparsities"), "small_dense.sparsities"),
                                     _int(raw.get("replicas", 1), "small_dense.replicas"))
        _check_subset(small_dense.sparsities, sparsities, "small_dense.sparsities")

    select_by = values.get("select_by")
    if select_by is not None:
        split, _, measure = str(select_by).partition(".")
        if split not in _SELECT_SPLITS or not measure:
            _fail("select_by", f"must be <split>.<measure> with split one of "
                               f"{list(_SELECT_SPLITS)} (e.g. valid.loss), got {select_by!r}.")
        from ..train.tasks import task_class

        measures = task_class(build_config(task, steps=steps)).eval_metrics
        if measure not in measures:
            _fail("select_by", f"{measure!r} is not measured on task {task}; it has "
                               f"{list(measures)}.")
        select_by = str(select_by)

    spec = SweepSpec(
        name=str(values.get("name") or name), task=task, steps=steps, replicas=replicas,
        sparsities=sparsities, dense=dense, dense_replicas=dense_replicas,
        overrides=_overrides(values.get("overrides"), "overrides"),
        techniques=techniques, retraining=retraining, mp_v2=mp_v2, small_dense=small_dense,
        select_by=select_by, cpus=cpus, gpus=gpus, text=text)
    _validate_points(spec)
    return spec


def _check_subset(chosen: Sequence[float], sparsities: Sequence[float], where: str) -> None:
    missing = [s for s in chosen if not any(abs(s - t) < 1e-9 for t in sparsities)]
    if missing:
        _fail(where, f"{missing} are not among the sweep's sparsities {list(sparsities)}; "
                     "magnitude pruning must run there first.")


def load_sweep(path: str | Path) -> SweepSpec:
    """Returns the validated sweep in a YAML file (its name defaults to the file's stem).

    Raises:
        SweepError: for a missing file, bad YAML or a bad field (one sentence).
    """
    path = Path(path)
    try:
        values, text = read_yaml(path, "sweep file")
    except (OSError, ValueError) as error:
        raise SweepError(str(error)) from None
    try:
        return parse_sweep(_yaml_number(values), name=path.stem, text=text)
    except SweepError as error:
        raise SweepError(f"{path}: {error}") from None


# ---- points ---------------------------------------------------------------------------------

@dataclass
class Point:
    """One run of a sweep: what the store records (``technique``, ``variant``, target,
    ``hyperparameters``, ``replica``) and what the runner needs (``method``, ``seed``,
    ``steps``, nested config ``values``). ``source`` names the run it derives from."""

    technique: str
    method: str
    target: float | None
    seed: int
    replica: int
    steps: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    source: str | None = None
    phase: int = 1

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
        if self.technique in RETRAINING_KINDS:
            if source_dir is None:
                raise ValueError(f"{self.technique} point needs its source run's directory.")
            extra: dict[str, Any] = {"mask_from": str(Path(source_dir) / "mask.safetensors")}
            if self.technique == "lottery":
                extra["init_from"] = str(Path(source_dir) / "init.safetensors")
            if self.technique == "augmented":
                extra["augmented_init"] = True
            values = _merge(values, {"sparsity": extra})
        return build_config(task, method=self.method, sparsity=self.target, steps=self.steps,
                            seed=self.seed, values=values)


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
    points = [Point("dense", "dense", None, seed, seed, spec.steps, {}, common)
              for seed in spec.dense_seeds]
    groups: list[list[Point]] = []
    for name, search in spec.techniques.items():
        targeted = methods.get(name).uses_sparsity_target
        group = []
        for target in (coarse_to_fine(spec.sparsities) if targeted else (None,)):
            for seed in spec.seeds:
                for hparams in search.settings():
                    values = _merge(common, search.overrides, _sparsity_values(hparams))
                    group.append(Point(name, name, target, seed, seed, spec.steps,
                                       dict(hparams), values))
        groups.append(group)
    if spec.mp_v2 is not None:
        search = spec.mp_v2.search or spec.techniques.get("magnitude", SearchSpec())
        steps = int(round(spec.mp_v2.steps_factor * spec.steps))
        group = []
        for target in coarse_to_fine(spec.mp_v2.sparsities):
            layers = mp_v2_layer_targets(spec, target)
            for seed in spec.seeds:
                for hparams in search.settings():
                    values = _merge(common, search.overrides, _sparsity_values(hparams),
                                    {"sparsity": {"layer_sparsity": layers,
                                                  "distribution": "fill"}})
                    group.append(Point("mp-v2", "magnitude", target, seed, seed, steps,
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
    from ..distributions import fill
    from ..sparsify import select_layers

    assert spec.mp_v2 is not None
    config, model = _model_of(spec)
    layers = select_layers(model, config.sparsity.include, config.sparsity.exclude)
    names = [layer.name for layer in layers]
    first, last = spec.mp_v2.first or names[0], spec.mp_v2.last or names[-1]
    for key, value in (("first", first), ("last", last)):
        if value not in names:
            _fail(f"mp_v2.{key}", f"{value!r} is not a sparsified weight of {config.model.name}; "
                                  f"they are {names[:12]}.")
    fixed = {first: spec.mp_v2.first_sparsity, last: spec.mp_v2.last_sparsity}
    try:
        fill({layer.name: layer.shape for layer in layers}, target, fixed)
    except ValueError as error:
        _fail("mp_v2.sparsities", f"{target:g} is unreachable on {config.model.name} "
                                  f"({error}) MP v2 needs a first layer small next to the rest.")
    return fixed


def _validate_points(spec: SweepSpec) -> None:
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
            where = ("overrides" if point.technique == "dense"
                     else f"techniques.{point.method}" if point.technique != "mp-v2" else "mp_v2")
            _fail(where, f"{error}".rstrip("."))
    if spec.small_dense is not None:
        config, _ = _model_of(spec)
        options = models.defaults(config.model.name)
        option = spec.small_dense.option
        if option not in options:
            _fail("small_dense.option", f"model {config.model.name} has no option {option!r}; "
                                        f"its options are {sorted(options)}.")
        current = config.model.options.get(option, options[option])
        if isinstance(current, bool) or not isinstance(current, int):
            _fail("small_dense.option", f"{option!r} of {config.model.name} is "
                                        f"{current!r}, not an integer size to narrow.")


# ---- phase 2: derived from finished magnitude runs ------------------------------------------

def best_magnitude_runs(store: RunStore, spec: SweepSpec, phase1: Sequence[Point]
                        ) -> dict[float, Run]:
    """Returns, per target sparsity, the finished magnitude-pruning run of this sweep's first
    phase with the best metric (the study retrains "the best magnitude run"), or the best
    ``spec.select_by`` measure where the sweep names one.

    Raises:
        ValueError: when ``select_by`` names a measure a finished run's result lacks (picking
            among the others would pass a worse run for the best).
    """
    ids = [p.run_id(spec.task) for p in phase1 if p.technique == "magnitude"]
    best: dict[float, tuple[float, Run]] = {}
    for run in store.runs(id=ids, status="finished"):
        if run.target_sparsity is None:
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
    if run.technique not in (*RETRAINING_KINDS, "small-dense"):
        return None
    source = run.hyperparameters.get("source") or run.hyperparameters.get("matched_run")
    return str(source) if source else None


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
    return -float(value) if measure == "loss" else float(value)


def width_for_parameters(model_name: str, options: Mapping[str, Any], option: str,
                         parameters: int) -> tuple[int, int]:
    """Returns ``(value, count)``: the value of the integer model option ``option`` (at most
    its current value) whose dense model's parameter count is nearest ``parameters``, and that
    count. Counts grow with the option, so a binary search finds the crossing."""
    def count(value: int) -> int:
        return sum(p.numel() for p in models.create(model_name, **{**options, option: value})
                   .parameters())

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


def _read_parameters(run: Run, runs_dir: str | Path | None = None) -> int | None:
    """Returns the nonzero weight count of a finished run, from its result.json where the
    store says it is, else under ``runs_dir`` (a checkout moved, or a study gone on on
    another machine with its sources beside it)."""
    result = read_result(run.run_dir or "")
    if not result and runs_dir is not None:
        result = read_result(Path(runs_dir) / run.id)
    nonzero = (result.get("parameters") or {}).get("nonzero")
    return int(nonzero) if nonzero is not None else None


def plan_phase2(spec: SweepSpec, store: RunStore, phase1: Sequence[Point],
                runs_dir: str | Path | None = None) -> list[Point]:
    """Returns the retraining and small-dense points, from the best finished magnitude run at
    each chosen sparsity (sparsities without one, or whose result.json is neither where the
    store says nor under ``runs_dir``, are skipped)."""
    best = best_magnitude_runs(store, spec, phase1)
    points: list[Point] = []
    common = spec.overrides
    if spec.retraining is not None:
        for target in spec.retraining.sparsities:
            source = best.get(target)
            if source is not None:
                points += retraining_points(spec, target, source.id, source.seed or 0)
    if spec.small_dense is not None:
        config, _ = _model_of(spec)
        options = {**models.defaults(config.model.name), **config.model.options}
        option = spec.small_dense.option
        for target in spec.small_dense.sparsities:
            source = best.get(target)
            nonzero = _read_parameters(source, runs_dir) if source is not None else None
            if nonzero is None:
                continue
            value, count = width_for_parameters(config.model.name, options, option, nonzero)
            values = _merge(common, {"model": {"options": {option: value}}})
            hparams = {option: value, "parameters": count, "matched_run": source.id,
                       "matched_nonzero": nonzero, "matched_sparsity": target}
            for replica in range(spec.small_dense.replicas):
                points.append(Point("small-dense", "dense", None, replica, replica, spec.steps,
                                    hparams, values, variant=f"{option}={value}",
                                    source=source.id, phase=2))
    return points


def retraining_points(spec: SweepSpec, target: float, source_id: str, source_seed: int
                      ) -> list[Point]:
    """Returns the retraining points of ``spec`` at ``target`` that derive from the magnitude
    run ``source_id`` (trained with seed ``source_seed``)."""
    assert spec.retraining is not None
    values = _merge(spec.overrides, spec.techniques.get("magnitude", SearchSpec()).overrides)
    points = []
    for kind in spec.retraining.kinds:
        steps = 2 * spec.steps if kind == "scratch-b" else spec.steps
        for replica in range(spec.retraining.replicas):
            # A seed the pruning run did not use: a fresh init and data order (the lottery
            # ticket loads the pruning run's init over it).
            points.append(Point(kind, "magnitude", target, source_seed + 1 + replica, replica,
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
            if point.technique == "magnitude" and point.target in spec.retraining.sparsities:
                source = point.run_id(spec.task)
                ids |= {p.run_id(spec.task) for p in
                        retraining_points(spec, point.target, source, point.seed)}
    return ids


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
