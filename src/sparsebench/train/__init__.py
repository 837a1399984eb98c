"""The runner: one training run from a config, resumable, on one process or many."""

from .config import RunConfig, apply_overrides, load_yaml, parse_set
from .loop import Diverged, learning_rate_factor, train
from .tasks import PRESETS, make_task, preset, presets

__all__ = [
    "PRESETS",
    "Diverged",
    "RunConfig",
    "apply_overrides",
    "build_config",
    "learning_rate_factor",
    "load_yaml",
    "make_task",
    "parse_set",
    "preset",
    "presets",
    "train",
]


def build_config(task: str, *, method: str | None = None, sparsity: float | None = None,
                 steps: int | None = None, seed: int | None = None,
                 config_file: str | None = None, overrides: list[str] | None = None,
                 values: dict | None = None) -> RunConfig:
    """Returns the validated config of a run: the task preset, then a YAML file, then the
    named shortcuts, then ``values`` (nested) and ``--set`` style ``overrides``, later wins."""
    config = preset(task)
    layers: list[dict] = []  # what the caller gave, in order, to see what it chose
    if config_file:
        layers.append(load_yaml(config_file))
        apply_overrides(config, layers[-1])
    shortcuts: dict = {}
    if method is not None:
        shortcuts.setdefault("sparsity", {})["method"] = method
    if sparsity is not None:
        shortcuts.setdefault("sparsity", {})["sparsity"] = sparsity
    if steps is not None:
        shortcuts.setdefault("run", {})["steps"] = steps
    if seed is not None:
        shortcuts.setdefault("run", {})["seed"] = seed
    apply_overrides(config, shortcuts)
    if values:
        layers.append(values)
        apply_overrides(config, values)
    if overrides:
        layers.append(parse_set(overrides))
        apply_overrides(config, layers[-1])
    chosen = {name for layer in layers for name in (layer.get("run") or {})}
    _scale_intervals_to_steps(config, preset(task).run, chosen)
    return config.validate()


def _scale_intervals_to_steps(config: RunConfig, base, chosen: set[str]) -> None:
    """Keeps the preset's checkpoint and log intervals in proportion when the step count
    changes and the caller did not set them (``chosen``: the ``run`` fields it set): a
    600-step run of a 4,000-step preset checkpoints every 60 steps, not every 400 (which
    would lose two thirds of it to a stop)."""
    steps = config.run.steps
    if steps == base.steps:
        return
    for name in ("checkpoint_every", "log_every"):
        if name not in chosen:
            setattr(config.run, name, max(1, getattr(base, name) * steps // base.steps))
