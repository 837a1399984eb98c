"""The technique catalogue: the one place that knows each technique.

Every other module asks a question here ("does this technique take a sparsity target?",
"which kinds retrain from its masks?", "what colour is it drawn in?") and never compares a
technique's name. Adding a technique is one file in ``methods/`` (its Config and Method) and one
``register(Technique(...))`` line in ``_ENTRIES`` below.

Besides the library's techniques (the ones ``sparsify`` runs), the catalogue lists the study's
other arms, so that runs, reports and figures name them the same way: the dense baseline, the
retraining kinds of the study's second question (which train with a fixed mask from a
technique's run), magnitude pruning v2, and a dense model narrowed to a sparse model's size.

This module imports nothing heavy: reading a store or writing a report asks it questions
without importing torch. A technique's Method class is imported when first asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Method, MethodConfig

__all__ = [
    "AUGMENTED",
    "BASELINE",
    "DENSE",
    "FRESH",
    "MP_V2",
    "ONE_SHOT",
    "RETRAINING",
    "SMALL_DENSE",
    "SOURCE_INIT",
    "SPARSIFIER",
    "VARIANT",
    "Technique",
    "canonical",
    "entries",
    "get",
    "names",
    "reference",
    "register",
    "retraining_kinds",
    "sparsifiers",
    "unregister",
]

#: Roles: a technique ``sparsify`` runs (the study's first question); a retraining kind (its
#: second question: a fixed mask taken from another technique's run); a variant of a
#: technique trained differently (MP v2); a dense baseline.
SPARSIFIER, RETRAINING, VARIANT, BASELINE = "sparsifier", "retraining", "variant", "baseline"
#: A one-shot technique prunes a trained model once, from calibration data, without training
#: (``methods.one_shot.prune_one_shot``); its ``method`` is a ``OneShotPruner`` class, not a
#: ``Method``, and ``sparsify`` does not run it.
ONE_SHOT = "one-shot"
_ROLES = (SPARSIFIER, RETRAINING, VARIANT, BASELINE, ONE_SHOT)

#: The dense baseline's name (a run with no technique).
DENSE = "dense"
#: Magnitude pruning v2: the study's non-uniform layer distribution and longer schedule.
MP_V2 = "mp-v2"
#: A dense model narrowed to a sparse model's nonzero count (never part of the dense baseline).
SMALL_DENSE = "small-dense"
#: How a retraining kind initializes the weights under the source run's fixed mask: afresh,
#: with the source run's own initial weights (the lottery ticket), or afresh and rescaled for
#: each unit's sparse fan-in (the study's augmented init).
FRESH, SOURCE_INIT, AUGMENTED = "fresh", "source", "augmented"


@dataclass(frozen=True)
class Technique:
    """Everything the package may ask about one technique.

    Attributes:
        name: the canonical name stored in configs and run stores.
        role: ``SPARSIFIER``, ``RETRAINING``, ``VARIANT`` or ``BASELINE``.
        display: its name in figures and tables ("magnitude pruning").
        colour: its colour in figures (a hex string), or None for the default cycle.
        method: the Method class, or ``"module:Class"`` imported on first use; None for an arm
            that ``sparsify`` does not run by itself (dense, small-dense).
        aliases: other names accepted for it (``"vd"``).
        takes_target: True when it prunes to a given sparsity exactly; False when a
            regularization weight sets the sparsity.
        trains_with_noise: True when its training forward pass perturbs weights with noise, so
            BatchNorm statistics are estimated again before evaluation.
        trained_by: for a retraining kind or variant, the technique whose Method trains it.
        retrains_from: True for the technique whose runs the retraining kinds start from
            (its masks and initializations): the study's reference every other arm is set
            beside (magnitude pruning).
        fixed_mask: True when its Method can train with a given fixed mask (``mask_from``).
        prose: its name inside a sentence, when not ``display`` ("the lottery ticket").
        paper_files: the stems of the study's published CSVs of its runs.
        paper_cost_ratio: the training cost relative to magnitude pruning the study reports.
        init: for a retraining kind, how it initializes (``FRESH``, ``SOURCE_INIT`` or
            ``AUGMENTED``).
        steps_factor: for a retraining kind, its steps as a multiple of the source run's.
        compare_with: for a variant, the techniques its report section sets it beside.
        distribution: the layer distribution it uses when none is asked for (RigL: "erk");
            None for uniform.
        from_source: True when its runs derive from a finished run of ``reference()`` (the
            retraining kinds, and the small dense model matched to a sparse one's size), so a
            sweep plans them in its second phase.
    """

    name: str
    role: str
    display: str
    colour: str | None = None
    method: type[Method] | str | None = None
    aliases: tuple[str, ...] = ()
    takes_target: bool = False
    trains_with_noise: bool = False
    trained_by: str | None = None
    retrains_from: bool = False
    fixed_mask: bool = False
    prose: str | None = None
    paper_files: tuple[str, ...] = ()
    paper_cost_ratio: float | None = None
    init: str | None = None
    steps_factor: float = 1.0
    compare_with: tuple[str, ...] = ()
    from_source: bool = False
    distribution: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"Technique {self.name!r}: role must be one of {_ROLES}, "
                             f"got {self.role!r}.")
        if self.role == SPARSIFIER and self.method is None:
            raise ValueError(f"Technique {self.name!r} is a sparsifier but names no Method.")
        if self.role in (RETRAINING, VARIANT) and self.trained_by is None:
            raise ValueError(f"Technique {self.name!r} ({self.role}) must say which technique "
                             f"trains it (trained_by=).")
        if self.role == RETRAINING and self.init not in (FRESH, SOURCE_INIT, AUGMENTED):
            raise ValueError(f"Retraining kind {self.name!r} must say how it initializes "
                             f"(init= one of {(FRESH, SOURCE_INIT, AUGMENTED)}).")

    @property
    def method_class(self) -> type[Method]:
        """Returns the Method class (importing it on first use)."""
        if self.method is None:
            raise ValueError(f"{self.name} is not run by sparsify(); it has no Method.")
        if isinstance(self.method, str):
            module, _, attr = self.method.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.method

    @property
    def in_sentence(self) -> str:
        return self.prose or self.display

    def config_fields(self) -> set[str]:
        """Returns the names of its Config's fields (its own hyperparameters)."""
        return {f.name for f in dataclasses.fields(self.method_class.config_class)}

    def parse_config(self, hparams: Mapping[str, Any], steps: int | None = None
                     ) -> MethodConfig:
        """Returns its typed Config from plain values. With ``steps``, warm-up points given as
        fractions of the run (floats in [0, 1]) become steps first.

        Raises:
            ValueError: one sentence for an unknown or invalid hyperparameter.
        """
        values = dict(hparams)
        if steps is not None:
            for key in ("warmup_begin", "warmup_end"):
                if isinstance(values.get(key), float) and 0 <= values[key] <= 1:
                    values[key] = int(round(values[key] * steps))
        return self.method_class.config_class.from_dict(values)


_CATALOGUE: dict[str, Technique] = {}
_ALIASES: dict[str, str] = {}


def register(technique: Technique) -> Technique:
    """Adds ``technique`` to the catalogue (its position is its place in figures and tables).

    Raises:
        ValueError: when its name or an alias is taken.
    """
    for key in (technique.name, *technique.aliases):
        if key in _CATALOGUE or key in _ALIASES:
            raise ValueError(f"Technique name {key!r} is already registered.")
    _CATALOGUE[technique.name] = technique
    _ALIASES.update({alias: technique.name for alias in technique.aliases})
    return technique


def unregister(name: str) -> None:
    """Removes a technique (for tests that register one of their own)."""
    technique = _CATALOGUE.pop(name)
    for alias in technique.aliases:
        _ALIASES.pop(alias, None)


def canonical(name: str) -> str:
    """Returns the catalogue's name for ``name`` or one of its aliases (case-insensitive);
    an unknown name comes back unchanged (stores may hold arms this version does not know)."""
    key = name.lower()
    return _ALIASES.get(key, key if key in _CATALOGUE else name)


def find(name: str | None) -> Technique | None:
    """Returns the technique named ``name`` (or an alias), or None."""
    return None if name is None else _CATALOGUE.get(canonical(name))


def get(name: str, *, role: str | None = None) -> Technique:
    """Returns the technique named ``name`` (or an alias), of ``role`` if given.

    Raises:
        ValueError: one sentence listing the valid names.
    """
    if not isinstance(name, str):
        raise ValueError(f"method must be a string naming a technique, got {name!r}.")
    technique = find(name)
    if technique is None or (role is not None and technique.role != role):
        valid = names(role) if role else names()
        raise ValueError(f"Unknown sparsification method {name!r}; choose one of "
                         f"{valid + aliases(role)}.")
    return technique


def entries(role: str | None = None) -> list[Technique]:
    """Returns the techniques in the study's order, those of ``role`` only if given."""
    return [t for t in _CATALOGUE.values() if role is None or t.role == role]


def names(role: str | None = None) -> list[str]:
    """Returns the canonical names, sorted, of ``role`` only if given."""
    return sorted(t.name for t in entries(role))


def aliases(role: str | None = None) -> list[str]:
    """Returns the aliases, sorted, of the techniques of ``role`` only if given."""
    return sorted(a for t in entries(role) for a in t.aliases)


def sparsifiers() -> list[str]:
    """Returns the techniques ``sparsify`` runs, in the study's order."""
    return [t.name for t in entries(SPARSIFIER)]


def retraining_kinds() -> list[str]:
    """Returns the retraining kinds of the study's second question, in its order."""
    return [t.name for t in entries(RETRAINING)]


def trained() -> list[str]:
    """Returns the techniques and variants that sparsify while training, in the study's order
    (the sparsifiers and their variants; not retraining, not the dense arms)."""
    return [t.name for t in entries() if t.role in (SPARSIFIER, VARIANT)]


def on_frontiers() -> list[str]:
    """Returns the techniques drawn on the study's technique frontiers, in its order: those
    that sparsify while training, then those that prune a trained model once."""
    return [*trained(), *(t.name for t in entries(ONE_SHOT))]


def plain_retraining() -> str | None:
    """Returns the retraining kind with a fresh init and the source run's steps (scratch-e):
    the one the report quotes beside the best retrained run."""
    return next((t.name for t in entries(RETRAINING)
                 if t.init == FRESH and t.steps_factor == 1), None)


def from_source() -> list[str]:
    """Returns the arms whose runs derive from a finished run of ``reference()``."""
    return [t.name for t in entries() if t.from_source]


def of_paper_file(stem: str) -> str:
    """Returns the technique whose published runs are in the study's CSV ``stem``.

    Raises:
        ValueError: for a file no technique names.
    """
    found = [t.name for t in entries() if stem in t.paper_files]
    if len(found) != 1:
        raise ValueError(f"No technique's published runs are in {stem}.csv.")
    return found[0]


def reference() -> str:
    """Returns the technique every other arm is set beside (the one retraining starts from)."""
    return next(t.name for t in entries() if t.retrains_from)


def trains_as(name: str) -> str | None:
    """Returns the technique that trains ``name``: itself for a sparsifier, the sparsifier it
    borrows for a retraining kind or variant, the dense baseline for a small dense model,
    None for the dense baseline and unknown names."""
    technique = find(name)
    if technique is None:
        return None
    return technique.name if technique.role == SPARSIFIER else technique.trained_by


def display(series: str) -> str:
    """Returns the readable name of a technique or series ("l0" -> "L0 regularization";
    "magnitude 4x1" -> "magnitude pruning 4x1"); an unknown name comes back unchanged."""
    name, _, rest = series.partition(" ")
    technique = _CATALOGUE.get(name)
    return ((technique.display if technique else name) + (" " + rest if rest else "")).strip()


_METHODS = "sparsebench.methods."
_ENTRIES = (
    Technique("magnitude", SPARSIFIER, "magnitude pruning", "#1f77b4",
              method=_METHODS + "magnitude:MagnitudePruning", takes_target=True,
              retrains_from=True, fixed_mask=True, paper_files=("magnitude_pruning",)),
    Technique(MP_V2, VARIANT, "magnitude pruning v2", "#9467bd", trained_by="magnitude",
              compare_with=("magnitude", "variational_dropout")),
    Technique("variational_dropout", SPARSIFIER, "variational dropout", "#ff7f0e",
              method=_METHODS + "variational_dropout:VariationalDropout", aliases=("vd",),
              trains_with_noise=True, paper_files=("variational_dropout",),
              paper_cost_ratio=1.65),
    Technique("l0", SPARSIFIER, "L0 regularization", "#2ca02c",
              method=_METHODS + "l0:L0Regularization", aliases=("l0_regularization",),
              trains_with_noise=True, paper_files=("l0_regularization",), paper_cost_ratio=1.24),
    Technique("random", SPARSIFIER, "random pruning", "#d62728",
              method=_METHODS + "random:RandomPruning", takes_target=True,
              paper_files=("random_pruning",)),
    Technique("scratch-e", RETRAINING, "scratch-e", "#8c564b", trained_by="magnitude",
              init=FRESH, from_source=True, paper_files=("scratche",)),
    Technique("scratch-b", RETRAINING, "scratch-b", "#e377c2", trained_by="magnitude",
              init=FRESH, steps_factor=2.0, from_source=True, paper_files=("scratchb",)),
    Technique("lottery", RETRAINING, "lottery", "#17becf", trained_by="magnitude",
              init=SOURCE_INIT, prose="the lottery ticket", from_source=True,
              paper_files=("lottery_ticket",)),
    Technique("augmented", RETRAINING, "augmented", "#bcbd22", trained_by="magnitude",
              init=AUGMENTED, from_source=True,
              paper_files=("scratche_augmented_init", "scratchb_augmented_init")),
    Technique(DENSE, BASELINE, "dense", "#333333", aliases=("none",), paper_files=("baselines",)),
    Technique(SMALL_DENSE, BASELINE, "small-dense", trained_by=DENSE, from_source=True),
    Technique("one-shot-magnitude", ONE_SHOT, "one-shot magnitude pruning", "#636363",
              method=_METHODS + "one_shot:OneShotMagnitude", aliases=("omp",),
              takes_target=True),
    Technique("wanda", ONE_SHOT, "Wanda", "#637939", method=_METHODS + "wanda:Wanda",
              takes_target=True),
    Technique("sparsegpt", ONE_SHOT, "SparseGPT", "#393b79",
              method=_METHODS + "sparsegpt:SparseGPT", takes_target=True),
    Technique("dns", SPARSIFIER, "dynamic network surgery", "#bd9e39",
              method=_METHODS + "dns:DynamicNetworkSurgery",
              aliases=("dynamic_network_surgery",)),
    Technique("set", SPARSIFIER, "SET", "#a55194",
              method=_METHODS + "sparse_evolutionary:SparseEvolutionaryTraining",
              aliases=("sparse_evolutionary_training",), takes_target=True),
    Technique("rigl", SPARSIFIER, "RigL", "#843c39", method=_METHODS + "rigl:RigL",
              takes_target=True, distribution="erk"),
    Technique("imp", SPARSIFIER, "iterative magnitude pruning", "#31a354",
              method=_METHODS + "imp:IterativeMagnitudePruning",
              aliases=("iterative_magnitude_pruning",), takes_target=True),
)
for _entry in _ENTRIES:
    register(_entry)
