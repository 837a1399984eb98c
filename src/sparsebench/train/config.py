"""Typed run configuration: nested dataclasses, filled from a task preset, a YAML file and
``--set section.key=value`` overrides, validated where each value enters.

Every error is one sentence naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

import yaml

if TYPE_CHECKING:
    from ..methods import MethodConfig

from .._values import coerce, fail
from ..methods import catalogue
from ..methods.catalogue import DENSE

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunOptions",
    "SparsityConfig",
    "apply_overrides",
    "parse_set",
    "read_yaml",
    "yaml_number",
    "yaml_problem",
]

DATASETS = ("fashion-mnist", "mnist", "imagefolder", "ding", "parallel", "shakespeare")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step", "inverse_sqrt")


#: Layouts of ``run.memory_format``.
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")

#: Values of ``run.sparse_step`` (see ``sparsebench.train.sparse_step``).
SPARSE_STEP_MODES = ("off", "on", "auto")


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        fail(key, value, allowed)


@dataclass
class ModelConfig:
    """Which model: a name of ``sparsebench.models`` and options for its constructor."""

    name: str = "lenet300"
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from .. import models

        _check(self.name in models.names(), "model.name", self.name,
               f"one of {models.names()}")
        unknown = sorted(set(self.options) - set(models.defaults(self.name)))
        _check(not unknown, "model.options", unknown,
               f"options of {self.name}: {sorted(models.defaults(self.name))}")


@dataclass
class DataConfig:
    """Where the data come from and how batches are made.

    ``batch_size`` is the global batch (split over processes); translation batches hold up to
    ``max_tokens`` padded target tokens instead. ``limit_train`` keeps only the first N
    training examples (characters for the language model; for quick runs and tests).
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    batch_size: int = 128
    augment: bool = False
    valid_size: int = 5000
    limit_train: int | None = None
    max_tokens: int = 4096
    max_length: int = 100
    vocab_size: int = 8000
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    workers: int = 0

    def validate(self) -> None:
        _check(self.dataset in DATASETS, "data.dataset", self.dataset, f"one of {DATASETS}")
        _check(self.batch_size > 0, "data.batch_size", self.batch_size, "a positive integer")
        _check(self.valid_size >= 0, "data.valid_size", self.valid_size, "an integer >= 0")
        _check(self.limit_train is None or self.limit_train > 0, "data.limit_train",
               self.limit_train, "a positive integer or null")
        _check(self.max_tokens > 0, "data.max_tokens", self.max_tokens, "a positive integer")
        _check(self.max_length >= 3, "data.max_length", self.max_length, "an integer >= 3")
        _check(self.vocab_size >= 16, "data.vocab_size", self.vocab_size, "an integer >= 16")
        _check(self.workers >= 0, "data.workers", self.workers, "an integer >= 0")
        if self.dataset in ("imagefolder", "parallel"):
            _check(self.root is not None, "data.root", self.root,
                   f"the directory of the {self.dataset} data (set data.root=PATH)")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (the LR is ``lr × factor(step)``)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    decay_at: tuple[float, ...] = (0.5, 0.75)  # for "step": fractions of the run
    decay_factor: float = 0.1
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    #: Learning-rate multiplier for the technique's own parameters (VD's log σ², L0's log α):
    #: with plain SGD their gradients are small, and L0's gates barely move without it.
    method_lr_scale: float = 1.0

    def validate(self) -> None:
        _check(self.name in OPTIMIZERS, "optim.name", self.name, f"one of {OPTIMIZERS}")
        _check(self.lr > 0, "optim.lr", self.lr, "a positive number")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               self.betas, "two numbers in [0, 1)")
        _check(self.schedule in LR_SCHEDULES, "optim.schedule", self.schedule,
               f"one of {LR_SCHEDULES}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(all(0 < d < 1 for d in self.decay_at), "optim.decay_at", self.decay_at,
               "fractions of the run in (0, 1)")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", self.grad_clip,
               "a positive number or null")
        _check(0 <= self.label_smoothing < 1, "optim.label_smoothing", self.label_smoothing,
               "in [0, 1)")
        _check(self.method_lr_scale > 0, "optim.method_lr_scale", self.method_lr_scale,
               "a positive number")
        if self.schedule == "inverse_sqrt":
            _check(self.warmup_steps > 0, "optim.warmup_steps", self.warmup_steps,
                   "positive for the inverse_sqrt schedule")


@dataclass
class SparsityConfig:
    """The technique. ``begin``/``end``/``frequency`` (and a method's ``warmup_begin``/
    ``warmup_end``) are steps when integers, fractions of the run when floats in [0, 1], so a
    preset's schedule scales with ``run.steps``. Keys other than these
    fields (``kl_weight``, ``threshold``, ``l0_weight``, ``pruned_weights``, ``seed`` …) are the
    method's own hyperparameters and are checked against its Config.
    """

    method: str = DENSE
    sparsity: float | None = None
    begin: int | float = 0.1
    end: int | float = 0.6
    frequency: int | float = 0.01
    layer_sparsity: str | dict[str, float] | None = None
    #: How the layers share the target; None: the technique's own (RigL: "erk"), else uniform.
    distribution: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    #: Retraining with a fixed mask: the masks of an earlier run (its mask.safetensors).
    mask_from: str | None = None
    #: Start from these weights (an earlier run's init.safetensors: the lottery ticket).
    init_from: str | None = None
    #: Rescale the initialization for each unit's sparse fan-in (the study's augmented init).
    augmented_init: bool = False

    def validate(self, steps: int) -> None:
        if self.method != DENSE:
            technique = catalogue.get(self.method, role=catalogue.SPARSIFIER)
            self.method = technique.name
            # Parsed here, once, where the values enter; training uses this typed Config.
            self._method_config = (steps, technique.parse_config(self.hparams, steps))
            if technique.takes_target:
                _check(self.sparsity is not None and 0 <= self.sparsity < 1,
                       "sparsity.sparsity", self.sparsity, f"in [0, 1) for {self.method}")
            else:
                _check(self.sparsity is None, "sparsity.sparsity", self.sparsity,
                       f"null for {self.method} (its regularization weight sets the sparsity)")
        elif self.sparsity not in (None, 0, 0.0):
            fail("sparsity.sparsity", self.sparsity, "null for a dense run")
        _check(self.frequency > 0, "sparsity.frequency", self.frequency,
               "a positive step count (integer) or fraction of the run (float)")
        for key in ("begin", "end", "frequency"):
            value = getattr(self, key)
            _check(isinstance(value, (int, float)) and value >= 0, f"sparsity.{key}", value,
                   "a step (integer) or a fraction of the run (float in [0, 1])")
            if isinstance(value, float):
                _check(value <= 1.0, f"sparsity.{key}", value, "a fraction in [0, 1]")
        if self.mask_from is not None:
            fixed = [t.name for t in catalogue.entries() if t.fixed_mask]
            _check(self.method in fixed, "sparsity.method", self.method,
                   f"{' or '.join(fixed)} (its fixed-mask mode) when sparsity.mask_from is set")

    def method_config(self, steps: int) -> MethodConfig:
        """Returns the technique's typed Config for a run of ``steps`` (warm-up fractions as
        steps), parsed once by ``validate`` (again only when the run length changed since)."""
        if self.method == DENSE:
            raise ValueError("A dense run has no technique Config.")
        parsed_for, config = getattr(self, "_method_config", (None, None))
        if parsed_for != steps or config is None:
            self.validate(steps)
            config = self._method_config[1]
        return config


@dataclass
class EvalConfig:
    """Evaluation: how often on the validation split, and decoding for translation."""

    every: int = 0
    batch_size: int = 500
    beam_size: int = 4
    length_penalty: float = 0.6
    max_valid: int | None = 500
    max_test: int | None = None
    #: Training batches over which the finished model's BatchNorm statistics are estimated
    #: again before it is evaluated. None: 50 for the methods that train with noise on the
    #: weights (variational dropout, L0), whose running statistics were gathered on a noisy
    #: network and do not fit the deterministic one that is evaluated; 0 for the others.
    #: Models without BatchNorm are unaffected.
    bn_batches: int | None = None

    def validate(self) -> None:
        _check(self.every >= 0, "eval.every", self.every, "an integer >= 0 (0: only at the end)")
        _check(self.bn_batches is None or self.bn_batches >= 0, "eval.bn_batches",
               self.bn_batches, "an integer >= 0, or null for the method's default")
        _check(self.batch_size > 0, "eval.batch_size", self.batch_size, "a positive integer")
        _check(self.beam_size >= 1, "eval.beam_size", self.beam_size, "an integer >= 1")


@dataclass
class RunOptions:
    """Length, seed, checkpoints, logging and device of one run."""

    steps: int = 1000
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "cpu"
    threads: int | None = None
    #: How convolution weights and activations are laid out: "channels_last" (NHWC) trains
    #: the ResNets 1.5x faster on a CPU core than "contiguous" (NCHW) with the same values;
    #: "auto" picks it for models with convolutions.
    memory_format: str = "auto"
    #: Train Linear layers on their kept weights with sparse kernels while the technique's
    #: masks stay fixed: "on" every eligible layer, "auto" those the performance model
    #: predicts faster, "off" (default) the dense path with a mask. The results agree up to
    #: float rounding (see sparsebench.train.sparse_step); off by default so that a study's
    #: runs keep the arithmetic they started with.
    sparse_step: str | bool = "off"  # YAML reads a bare on/off as true/false: accepted
    tensorboard: bool = False

    def validate(self) -> None:
        _check(self.steps > 0, "run.steps", self.steps, "a positive integer")
        _check(self.seed >= 0, "run.seed", self.seed, "an integer >= 0")
        _check(self.checkpoint_every > 0, "run.checkpoint_every", self.checkpoint_every,
               "a positive integer")
        _check(self.log_every > 0, "run.log_every", self.log_every, "a positive integer")
        _check(self.device == "cpu" or self.device.startswith("cuda"), "run.device",
               self.device, "'cpu' or 'cuda[:N]'")
        _check(self.threads is None or self.threads > 0, "run.threads", self.threads,
               "a positive integer or null")
        _check(self.memory_format in MEMORY_FORMATS, "run.memory_format", self.memory_format,
               " or ".join(repr(f) for f in MEMORY_FORMATS))
        if isinstance(self.sparse_step, bool):
            self.sparse_step = "on" if self.sparse_step else "off"
        _check(self.sparse_step in SPARSE_STEP_MODES, "run.sparse_step", self.sparse_step,
               " or ".join(repr(m) for m in SPARSE_STEP_MODES))


@dataclass
class RunConfig:
    """One training run: a task preset with everything settable."""

    task: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunOptions = field(default_factory=RunOptions)

    SECTIONS = ("model", "data", "optim", "sparsity", "eval", "run")

    def validate(self) -> RunConfig:
        """Checks every section; returns self."""
        for section in self.SECTIONS:
            if section == "sparsity":
                self.sparsity.validate(self.run.steps)
            else:
                getattr(self, section).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Returns plain data (JSON- and YAML-safe)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Returns a validated config from nested plain data (e.g. a saved config.yaml)."""
        config = cls()
        apply_overrides(config, values)
        return config.validate()

    def step_of(self, value: int | float) -> int:
        """Returns a schedule point as a step: integers are steps, floats fractions of the run."""
        if isinstance(value, float):
            return int(round(value * self.run.steps))
        return int(value)


def apply_overrides(config: RunConfig, values: Mapping[str, Any], prefix: str = "") -> None:
    """Sets nested ``values`` on ``config`` in place, converting and checking each field.

    Unknown sections and keys are refused, except inside ``sparsity`` where they are the
    method's own hyperparameters, and inside ``model.options``.
    """
    for section, content in values.items():
        if section == "task":
            config.task = str(content)
            continue
        if section not in RunConfig.SECTIONS:
            raise ValueError(f"Unknown config section {section!r}; the sections are "
                             f"{['task', *RunConfig.SECTIONS]}.")
        if not isinstance(content, Mapping):
            raise ValueError(f"Config section {section!r} must be a mapping, got {content!r}.")
        target = getattr(config, section)
        hints = get_type_hints(type(target))
        for key, value in content.items():
            full = f"{section}.{key}"
            if (section, key) in (("model", "options"), ("sparsity", "hparams")):
                if not isinstance(value, Mapping):
                    fail(full, value, "a mapping of names to values")
                getattr(target, key).update(value)
            elif key in hints:
                setattr(target, key, coerce(full, value, hints[key]))
            elif section == "sparsity":
                target.hparams[key] = value
            else:
                allowed = [f.name for f in dataclasses.fields(target)]
                raise ValueError(f"Unknown config key {full!r}; {section} has {allowed}.")


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Returns nested values from ``--set section.key=value`` strings (values parsed as YAML).

    ``model.options.width=32`` and ``sparsity.kl_weight=1e-4`` nest one level deeper.
    """
    result: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like section.key=value.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"--set {item!r}: the key must be section.key (e.g. optim.lr).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ValueError(f"--set {item!r}: the value is not valid YAML "
                             f"({yaml_problem(error, raw)}).") from None
        value = yaml_number(value)
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def yaml_number(value: Any) -> Any:
    """Returns "1e-5" as 1e-5: YAML 1.1 reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") else int(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: yaml_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_number(v) for v in value]
    return value


def yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """Returns the parser's complaint in one line with where it is (``mapping values are not
    allowed here at line 3, column 8``), not PyYAML's several lines with a copy of the text."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow
        start = text.rfind("\n", 0, error.position) + 1
        line, column = text.count("\n", 0, error.position), error.position - start
        character = error.character
        if isinstance(character, int):
            character = chr(character)
        problem = f"character {character!r} is not allowed"
    elif mark is not None:
        line, column = mark.line, mark.column
    else:
        return " ".join(str(error).split())
    return f"{' '.join(str(problem).split())} at line {line + 1}, column {column + 1}"


def read_yaml(path: str | Path, what: str = "YAML file") -> tuple[Any, str]:
    """Returns the parsed content of the YAML file at ``path`` and its text.

    Raises:
        FileNotFoundError: when there is no such file (one sentence naming it).
        ValueError: when it is a folder, not UTF-8 text or not valid YAML (one sentence naming
            the file, and the line and column of a syntax error).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a {what}; name the file itself.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a {what}: byte {error.start} is not UTF-8 text "
                         f"(a binary or damaged file?).") from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({yaml_problem(error, text)}); fix the file "
                         f"and run again.") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Returns the mapping in a YAML config file, with one clear sentence when it is not one."""
    values, _ = read_yaml(path, "config file")
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} must hold a mapping of config sections (model, data, optim, "
                         f"sparsity, eval, run), not {type(values).__name__} {values!r:.40}.")
    return yaml_number(dict(values))
