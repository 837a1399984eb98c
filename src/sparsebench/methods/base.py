"""The protocol every technique follows, and the pieces they share.

A technique is a frozen ``Config`` (its own documented fields, validated on construction) and a
``Method`` that makes one parametrization per sparsified weight. The parametrization is what
``torch.nn.utils.parametrize`` calls on every access of the weight, so masks and the method's
own parameters (log σ², log α) live in the model's state_dict and every reader of the weight —
``nn.MultiheadAttention`` included — sees the sparse version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._values import coerce

__all__ = ["Layer", "Method", "MethodConfig", "WeightParametrization"]


@dataclass
class Layer:
    """One sparsified weight.

    Attributes:
        name: fully qualified parameter name, e.g. ``"encoder.layers.0.linear1.weight"``.
        module_name: fully qualified name of the module holding it.
        module: that module.
        attr: the attribute on ``module`` (``"weight"`` or ``"in_proj_weight"``).
        shape: the weight's shape.
        local_reparam: True when the module's own forward runs (nn.Linear / nn.Conv2d not read
            by a parent), so a method may replace that forward (variational dropout does).
        transposed: True when the weight is stored (in, out), as transformers' ``Conv1D``
            keeps it (``y = x·W + b``), rather than nn.Linear's (out, in).
        tied: the other places that hold this same Parameter (tied weights, e.g. a language
            model's output projection and its input embedding), each ``(module name,
            module, attribute)``: one weight, one mask, sparse in every use.
    """

    name: str
    module_name: str
    module: nn.Module
    attr: str
    shape: tuple[int, ...]
    local_reparam: bool
    transposed: bool = False
    tied: tuple[tuple[str, nn.Module, str], ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def aliases(self) -> tuple[str, ...]:
        """Returns the names a user pattern may match: the parameter and its module, and those
        of every tied use."""
        tied = [(f"{name}.{attr}" if name else attr, name) for name, _, attr in self.tied]
        return (self.name, self.module_name, *(alias for pair in tied for alias in pair))

    @property
    def uses(self) -> list[tuple[nn.Module, str]]:
        """Returns every ``(module, attribute)`` holding this weight: its own, then the tied."""
        return [(self.module, self.attr), *((module, attr) for _, module, attr in self.tied)]

    @property
    def parametrization(self) -> WeightParametrization:
        return self.module.parametrizations[self.attr][0]

    @property
    def original(self) -> nn.Parameter:
        """Returns the dense trained weight behind the parametrization."""
        return self.module.parametrizations[self.attr].original


@dataclass(frozen=True)
class MethodConfig:
    """Base of every technique's configuration: frozen, validated in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """Returns a config from plain values; unknown fields get one clear sentence."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"Unknown hyperparameter(s) {unknown} for {cls.__name__}; "
                f"allowed: {sorted(fields)}."
            )
        return cls(**{k: coerce(f"{cls.__name__}.{k}", v, fields[k].type)
                      for k, v in values.items()})

    def _require(self, condition: bool, field: str, allowed: str) -> None:
        if not condition:
            raise ValueError(
                f"{type(self).__name__}.{field} = {getattr(self, field)!r} is invalid: "
                f"it must be {allowed}."
            )


class WeightParametrization(nn.Module):
    """The per-weight piece of a technique: ``forward(original) -> weight the layer uses``."""

    def final_weight(self, original: torch.Tensor) -> torch.Tensor:
        """Returns the deterministic evaluation weight with exact zeros (no autograd)."""
        return original * self.keep_mask(original)

    def keep_mask(self, original: torch.Tensor) -> torch.Tensor:
        """Returns a boolean tensor: True where the evaluation weight is kept."""
        raise NotImplementedError


class Method:
    """Shared protocol: make parametrizations, advance with the step, give a penalty.

    Subclasses set ``name``, ``config_class``, ``uses_sparsity_target`` and implement
    ``make_parametrization``; the others have sensible defaults.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    #: True for techniques that hit a given sparsity exactly (magnitude, random).
    uses_sparsity_target: ClassVar[bool]

    #: The whole model, set by ``sparsify()`` before ``on_attach``: for a technique that acts
    #: on every parameter and buffer, not only on its layers' weights (IMP rewinds them all).
    model: nn.Module | None = None
    #: The optimizer training the model, once the loop has said (``use_optimizer``); else None.
    optimizer: torch.optim.Optimizer | None = None

    def __init__(self, config: MethodConfig, layers: list[Layer], targets: dict[str, float]):
        self.config = config
        self.layers = layers
        self.targets = targets

    def make_parametrization(self, layer: Layer) -> WeightParametrization:
        raise NotImplementedError

    def forward_override(self, layer: Layer) -> Callable | None:
        """Returns a replacement forward for ``layer.module``, or None to keep its own."""
        return None

    def on_attach(self) -> None:
        """Called once after every parametrization is registered (e.g. to make first masks)."""

    def on_step(self, step: int) -> None:
        """Called after each optimizer step with the new step count."""

    def penalty(self, step: int) -> torch.Tensor:
        """Returns the regularizer to add to a mean loss (0 for pruning methods)."""
        return torch.zeros(())

    def plan_rounds(self, total_steps: int) -> tuple[int, ...]:
        """Tells the technique the run's length in optimizer steps and returns the steps at
        which a new round of training starts (ascending, each in ``(0, total_steps)``).

        A technique that trains in rounds (iterative magnitude pruning: train, prune, rewind,
        train again) makes each round a training run of its own: at the start of a round the
        training loop restarts the learning-rate schedule (the round from start ``b`` to the
        next start ``e``, or the run's end, sees the schedule of a run of ``e − b`` steps) and
        the optimizer's state, and the technique does the rest (pruning, rewinding) in its
        ``on_step``. The default, one round, changes nothing.

        Raises:
            ValueError: one sentence when the technique's options do not fit ``total_steps``.
        """
        return ()

    # -- training on the active weights only (sparsebench.train.sparse_step) -----------------
    def sparse_step_allowed(self, step: int) -> bool:
        """Returns True when the training step that ends in optimizer step ``step`` may run on
        the kept weights alone, as a sparse training step does: every mask stays as it is
        through that step, the pruned weights' values and gradients change nothing that
        follows (they get no gradient in the dense path either, or can never come back), and
        ``on_step(step)`` needs no dense gradient. Then training that step with sparse kernels
        gives the dense path's result up to float rounding. The default, False, suits every
        technique that trains all weights at every step (VD, L0, DNS)."""
        return False

    def dense_gradient_at(self, step: int) -> bool:
        """Returns True when ``on_step(step)`` reads the dense gradient of the effective
        weights (RigL's growth), which its parametrizations record from the backward pass
        (``record(grad)``). A sparse training step then computes that gradient in full for
        the step and hands it over, instead of the kept positions' alone. The default: never."""
        return False

    def updates_at(self, step: int) -> bool:
        """Returns True when ``on_step(step)`` may read or change weights or masks (a mask
        update, IMP's rewind): a sparse training step writes its weights back before. The
        default, True, is always safe."""
        return True

    def use_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Tells the technique which optimizer trains the model, for techniques that give
        weights they grow a fresh optimizer state (SET, RigL). ``Sparsifier.use_optimizer``
        calls it; the default keeps a reference."""
        self.optimizer = optimizer

    @torch.no_grad()
    def reset_optimizer_state(self, layer: Layer, positions: torch.Tensor) -> bool:
        """Zeroes the optimizer's per-weight state (momentum, Adam's moments) of ``layer``'s
        weight at the boolean ``positions``: a connection grown there starts afresh, as it
        would in a sparse optimizer that never held it. Returns False when no optimizer is
        known (``use_optimizer`` not called), True otherwise."""
        if self.optimizer is None:
            return False
        original = layer.original
        for value in self.optimizer.state.get(original, {}).values():
            if torch.is_tensor(value) and value.shape == original.shape:
                value.masked_fill_(positions, 0)
        return True

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Returns the technique's state beyond its parametrizations' buffers (IMP's rewind
        point), for the Sparsifier's state_dict; the keys must be the same at every step, so a
        checkpoint loads into a freshly attached technique. The default: none."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restores what ``extra_state()`` returned (the keys already checked)."""
