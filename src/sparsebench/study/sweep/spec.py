"""The sweep file's format: its fields as frozen specs, validated where the YAML enters, so a
bad value fails in one sentence naming the field before anything trains (the format is
described in :mod:`sparsebench.study.sweep`)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...methods import catalogue
from ...train import build_config
from ...train.config import RunConfig

_TOP_KEYS = ("name", "task", "steps", "replicas", "sparsities", "dense", "overrides", "resources",
             "techniques", "retraining", "mp_v2", "small_dense", "select_by", "variant")
_SELECT_SPLITS = ("valid", "test")
_DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


class SweepError(ValueError):
    """A sweep file that cannot be run, with one sentence naming the field and the fix."""


def fail(where: str, message: str) -> None:
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

    kinds: tuple[str, ...] = field(default_factory=lambda: tuple(catalogue.retraining_kinds()))
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
    #: A label for runs that are not comparable with the study's own (e.g. ``4x steps``): the
    #: dense and technique points carry it, so the report draws them as series of their own
    #: ("imp (4x steps)") rather than beside the same technique at the study's budget.
    variant: str = ""
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
        fail(where, f"must be a mapping, got {value!r}.")
    return dict(value)


def _int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        fail(where, f"must be an integer >= {low}, got {value!r}.")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(where, f"must be a number, got {value!r}.")
    return float(value)


def _sparsities(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        fail(where, f"must be a non-empty list of fractions such as [0.5, 0.9], got {value!r}.")
    out = []
    for item in value:
        s = _number(item, where)
        if not 0.0 < s < 1.0:
            hint = f"; write {s / 100:g} for {s:g}%" if 1.0 < s < 100.0 else ""
            fail(where, f"{item!r} is not a sparsity fraction in (0, 1){hint}.")
        out.append(s)
    if len(set(out)) != len(out):
        fail(where, f"lists a sparsity twice: {value!r}.")
    return tuple(out)


def _overrides(value: Any, where: str) -> dict[str, Any]:
    """Returns nested config values from a mapping of dotted keys (``optim.lr: 0.1``)."""
    nested: dict[str, Any] = {}
    for key, item in _mapping(value, where).items():
        parts = str(key).split(".")
        if len(parts) < 2 or not all(parts):
            fail(where, f"key {key!r} must be a dotted config key such as optim.lr.")
        if parts[0] not in RunConfig.SECTIONS:
            fail(where, f"key {key!r} names no config section; the sections are "
                         f"{list(RunConfig.SECTIONS)}.")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = item
    return nested

def _technique_keys(method: str) -> set[str]:
    """Returns the hyperparameter names a technique accepts: its Config's fields, plus the
    schedule of the pruning methods."""
    technique = catalogue.get(method, role=catalogue.SPARSIFIER)
    keys = technique.config_fields()
    if technique.takes_target:
        keys |= {"begin", "end", "frequency"}
    return keys


def _search(name: str, value: Any, where: str | None = None) -> SearchSpec:
    where = where or f"techniques.{name}"
    raw = _mapping(value, where)
    unknown = sorted(set(raw) - {"grid", "random", "fixed", "overrides"})
    if unknown:
        fail(where, f"unknown key(s) {unknown}; a technique has grid, random, fixed and "
                     "overrides.")
    if "grid" in raw and "random" in raw:
        fail(where, "has both grid and random; choose one search per technique.")
    allowed = _technique_keys(name)
    grid = {}
    for key, values in _mapping(raw.get("grid"), f"{where}.grid").items():
        if key not in allowed:
            fail(f"{where}.grid", f"{key!r} is not a hyperparameter of {name}; it has "
                                   f"{sorted(allowed)}.")
        if not isinstance(values, list) or not values:
            fail(f"{where}.grid.{key}", f"must be a non-empty list of values, got {values!r}.")
        grid[key] = list(values)
    space, samples, seed = {}, 0, 0
    if "random" in raw:
        rnd = _mapping(raw["random"], f"{where}.random")
        bad = sorted(set(rnd) - {"samples", "seed", "space"})
        if bad:
            fail(f"{where}.random", f"unknown key(s) {bad}; it has samples, seed and space.")
        samples = _int(rnd.get("samples"), f"{where}.random.samples")
        seed = _int(rnd.get("seed", 0), f"{where}.random.seed", low=0)
        for key, dist in _mapping(rnd.get("space"), f"{where}.random.space").items():
            at = f"{where}.random.space.{key}"
            if key not in allowed:
                fail(at, f"{key!r} is not a hyperparameter of {name}; it has {sorted(allowed)}.")
            dist = _mapping(dist, at)
            if len(dist) != 1 or next(iter(dist)) not in _DISTRIBUTIONS:
                fail(at, f"must be one of {{{', '.join(_DISTRIBUTIONS)}: [...]}}, got {dist!r}.")
            (kind, args), = dist.items()
            if not isinstance(args, list) or not args:
                fail(at, f"{kind} needs a list, got {args!r}.")
            if kind != "choice":
                if len(args) != 2:
                    fail(at, f"{kind} needs [low, high], got {args!r}.")
                low, high = (_number(a, at) for a in args)
                if not low < high:
                    fail(at, f"{kind} needs low < high, got {args!r}.")
                if kind == "log_uniform" and low <= 0:
                    fail(at, f"log_uniform needs positive bounds, got {args!r}.")
            space[key] = {kind: list(args)}
        if not space:
            fail(f"{where}.random.space", "is empty; name at least one hyperparameter.")
    fixed = _mapping(raw.get("fixed"), f"{where}.fixed")
    for key in fixed:
        if key not in allowed:
            fail(f"{where}.fixed", f"{key!r} is not a hyperparameter of {name}; it has "
                                    f"{sorted(allowed)}.")
    return SearchSpec(grid, space, samples, seed, fixed,
                      _overrides(raw.get("overrides"), f"{where}.overrides"))


def parse_spec(values: Mapping[str, Any], *, name: str = "sweep", text: str = "") -> SweepSpec:
    """Returns the sweep of a parsed YAML mapping, each field checked; ``load.parse_sweep``
    then resolves every point to a run configuration.

    Raises:
        SweepError: one sentence naming the field, the value and what is allowed.
    """
    if not isinstance(values, Mapping):
        fail("sweep", "the file must hold a mapping of sweep fields, got "
                       f"{type(values).__name__}.")
    unknown = sorted(set(values) - set(_TOP_KEYS))
    if unknown:
        fail("sweep", f"unknown field(s) {unknown}; a sweep has {list(_TOP_KEYS)}.")
    for required in ("task", "steps", "techniques"):
        if required not in values:
            fail(required, "is required.")
    from ...train.tasks import PRESETS

    task = values["task"]
    if task not in PRESETS:
        fail("task", f"{task!r} is not a task; choose one of {sorted(PRESETS)}.")
    steps = _int(values["steps"], "steps")
    replicas = _int(values.get("replicas", 1), "replicas")
    techniques = _techniques(values["techniques"])
    targeted = [t for t in techniques if catalogue.get(t).takes_target]
    sparsities: tuple[float, ...] = ()
    if targeted or "sparsities" in values:
        sparsities = _sparsities(values.get("sparsities"), "sparsities")
    cpus, gpus = _resources(values.get("resources"))
    dense, dense_replicas = _dense(values.get("dense", True), replicas)
    retraining = _retraining(values.get("retraining"), techniques, sparsities)
    mp_v2 = _mp_v2(values.get("mp_v2"), techniques)
    small_dense = _small_dense(values.get("small_dense"), techniques, sparsities)
    select_by = _select_by(values.get("select_by"), task, steps)
    variant = _variant(values.get("variant"))

    spec = SweepSpec(
        name=str(values.get("name") or name), task=task, steps=steps, replicas=replicas,
        sparsities=sparsities, dense=dense, dense_replicas=dense_replicas,
        overrides=_overrides(values.get("overrides"), "overrides"),
        techniques=techniques, retraining=retraining, mp_v2=mp_v2, small_dense=small_dense,
        select_by=select_by, variant=variant, cpus=cpus, gpus=gpus, text=text)
    return spec


def _variant(value: Any) -> str:
    """Returns the sweep's variant label ("" when absent): plain words, since tables and
    figures show it in brackets after the technique."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > 40 \
            or any(c in value for c in "()[]\n"):
        fail("variant", f"must be a short label of plain words (at most 40 characters, no "
                        f"brackets), e.g. '4x steps'; got {value!r}.")
    return value.strip()


def _techniques(value: Any) -> dict[str, SearchSpec]:
    """Returns the ``techniques`` block's searches, by the registry's name of each technique."""
    raw_techniques = _mapping(value, "techniques")
    if not raw_techniques:
        fail("techniques", "is empty; name at least one of "
                            f"{catalogue.names(catalogue.SPARSIFIER)}.")
    techniques = {}
    for key, spec in raw_techniques.items():
        try:
            canonical = catalogue.get(str(key), role=catalogue.SPARSIFIER).name
        except ValueError:
            fail("techniques", f"{key!r} is not a technique; choose from "
                                f"{catalogue.names(catalogue.SPARSIFIER)} (the dense baseline "
                                "is 'dense: true').")
        techniques[canonical] = _search(canonical, spec)
    return techniques


def _resources(value: Any) -> tuple[float, float]:
    """Returns ``(cpus, gpus)`` per run from the ``resources`` block."""
    resources = _mapping(value, "resources")
    bad = sorted(set(resources) - {"cpus", "gpus"})
    if bad:
        fail("resources", f"unknown key(s) {bad}; it has cpus and gpus (per run).")
    cpus = _number(resources.get("cpus", 1), "resources.cpus")
    gpus = _number(resources.get("gpus", 0), "resources.gpus")
    if cpus <= 0 or gpus < 0:
        fail("resources", f"cpus must be > 0 and gpus >= 0, got {resources!r}.")
    return cpus, gpus


def _dense(value: Any, replicas: int) -> tuple[bool, int | None]:
    """Returns ``(dense, dense_replicas)`` from ``dense: true|false|{replicas: N}``."""
    dense, dense_replicas = value, None
    if isinstance(dense, Mapping):
        bad = sorted(set(dense) - {"replicas"})
        if bad:
            fail("dense", f"unknown key(s) {bad}; it has replicas.")
        dense_replicas = _int(dense.get("replicas", replicas), "dense.replicas")
        dense = True
    if not isinstance(dense, bool):
        fail("dense", f"must be true, false or {{replicas: N}}, got {dense!r}.")
    return dense, dense_replicas


def _retraining(value: Any, techniques: Mapping[str, SearchSpec],
                sparsities: Sequence[float]) -> RetrainingSpec | None:
    """Returns the ``retraining`` block, or None when the sweep has none."""
    if value is None:
        return None
    raw = _mapping(value, "retraining")
    bad = sorted(set(raw) - {"kinds", "sparsities", "replicas"})
    if bad:
        fail("retraining", f"unknown key(s) {bad}; it has kinds, sparsities and replicas.")
    known = catalogue.retraining_kinds()
    kinds = raw.get("kinds", known)
    if not isinstance(kinds, list) or not kinds or any(k not in known for k in kinds):
        fail("retraining.kinds", f"must list some of {known}, got {kinds!r}.")
    _needs_reference(techniques, "retraining", "retrains the best {} run")
    retraining = RetrainingSpec(tuple(kinds),
                                _sparsities(raw.get("sparsities"), "retraining.sparsities"),
                                _int(raw.get("replicas", 1), "retraining.replicas"))
    _check_subset(retraining.sparsities, sparsities, "retraining.sparsities")
    return retraining


def _mp_v2(value: Any, techniques: Mapping[str, SearchSpec]) -> MPv2Spec | None:
    """Returns the ``mp_v2`` block, or None when the sweep has none."""
    if value is None:
        return None
    raw = _mapping(value, "mp_v2")
    bad = sorted(set(raw) - {"sparsities", "first", "last", "first_sparsity",
                             "last_sparsity", "steps_factor", "grid"})
    if bad:
        fail("mp_v2", f"unknown key(s) {bad}; it has sparsities, first, last, "
                       "first_sparsity, last_sparsity, steps_factor and grid.")
    _needs_reference(techniques, "mp_v2", "is a variant of {}")
    # MP v2's own settings (e.g. the best begin/end only), else magnitude's whole search.
    mp_v2_search = None
    if raw.get("grid") is not None:
        grid = _search(catalogue.reference(), {"grid": raw["grid"]}, where="mp_v2").grid
        mp_v2_search = dataclasses.replace(techniques[catalogue.reference()], grid=grid,
                                           space={}, samples=0)
    factor = _number(raw.get("steps_factor", 1.5), "mp_v2.steps_factor")
    if factor <= 0:
        fail("mp_v2.steps_factor", f"must be positive, got {factor}.")
    layer_values = {}
    for key in ("first_sparsity", "last_sparsity"):
        layer_values[key] = _number(raw.get(key, 0.0 if key.startswith("first") else 0.8),
                                    f"mp_v2.{key}")
        if not 0.0 <= layer_values[key] < 1.0:
            fail(f"mp_v2.{key}", f"must be in [0, 1), got {layer_values[key]}.")
    return MPv2Spec(_sparsities(raw.get("sparsities"), "mp_v2.sparsities"),
                    raw.get("first"), raw.get("last"), **layer_values, steps_factor=factor,
                    search=mp_v2_search)


def _small_dense(value: Any, techniques: Mapping[str, SearchSpec],
                 sparsities: Sequence[float]) -> SmallDenseSpec | None:
    """Returns the ``small_dense`` block, or None when the sweep has none."""
    if value is None:
        return None
    raw = _mapping(value, "small_dense")
    bad = sorted(set(raw) - {"option", "sparsities", "replicas"})
    if bad:
        fail("small_dense", f"unknown key(s) {bad}; it has option, sparsities and replicas.")
    _needs_reference(techniques, "small_dense", "matches the best {} run's nonzeros")
    small_dense = SmallDenseSpec(str(raw.get("option", "width")),
                                 _sparsities(raw.get("sparsities"), "small_dense.sparsities"),
                                 _int(raw.get("replicas", 1), "small_dense.replicas"))
    _check_subset(small_dense.sparsities, sparsities, "small_dense.sparsities")
    return small_dense


def _needs_reference(techniques: Mapping[str, SearchSpec], block: str, what: str) -> None:
    """Fails unless the sweep trains the technique a second-phase block builds on."""
    reference = catalogue.reference()
    if reference not in techniques:
        fail(block, what.format(catalogue.display(reference)) + ", so techniques must "
             f"include {reference}.")


def _select_by(value: Any, task: str, steps: int) -> str | None:
    """Returns ``select_by`` (``<split>.<measure>``) once the task is known to measure it."""
    if value is None:
        return None
    split, _, measure = str(value).partition(".")
    if split not in _SELECT_SPLITS or not measure:
        fail("select_by", f"must be <split>.<measure> with split one of "
                           f"{list(_SELECT_SPLITS)} (e.g. valid.loss), got {value!r}.")
    from ...train.tasks import task_class

    measures = task_class(build_config(task, steps=steps)).eval_metrics
    if measure not in measures:
        fail("select_by", f"{measure!r} is not measured on task {task}; it has "
                           f"{list(measures)}.")
    return str(value)


def _check_subset(chosen: Sequence[float], sparsities: Sequence[float], where: str) -> None:
    missing = [s for s in chosen if not any(abs(s - t) < 1e-9 for t in sparsities)]
    if missing:
        fail(where, f"{missing} are not among the sweep's sparsities {list(sparsities)}; "
                     f"{catalogue.display(catalogue.reference())} must run there first.")
