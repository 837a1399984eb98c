"""RigL, "Rigging the Lottery: Making All Tickets Winners" (Evci et al. 2020, arXiv:1911.11134).

SET's skeleton (``sparse_evolutionary.py``: a random mask at the target from step 0, exact
per-layer counts, grown connections start at zero) with two changes (Sec. 3):

- growth picks the inactive positions with the largest *dense* gradient magnitude
  ``|∂L/∂θ|`` of the current batch, rather than random ones;
- the fraction moved decays along a cosine (Sec. 3, "Update schedule"):
  ``f(t) = α/2 · (1 + cos(π t / T_end))``, with updates every ΔT steps until ``T_end``.

The paper's set-up maps onto the library's arguments: ERK layer sparsities (its default
distribution, and RigL's when no ``layer_sparsity`` is given: the catalogue entry says so; the
first layer dense as in its ImageNet runs with ``LayerSparsity({"conv1": 0.0}, "erk")``),
``schedule=GradualSchedule(0, T_end, ΔT)`` (it uses
ΔT = 100 and T_end at 75% of training), ``drop_fraction=α`` (0.3).

How the dense gradient is obtained: the mask multiplies the weight in the forward pass through
an autograd function whose backward hands the weight ``grad · mask`` (inactive weights get no
gradient and the optimizer never moves them, exactly as sparse training) and records the
unmasked ``grad`` — the gradient with respect to the effective weight, which is the dense
gradient RigL ranks (its ``_get_grow_grads``). The record is read at an update step and
dropped after every step, and averaged over processes under DistributedDataParallel (DDP only
averages parameter gradients), so every rank grows the same connections. The alternative of a
straight-through mask would put the dense gradient in ``.grad`` but let the optimizer train
inactive weights and count them in gradient clipping; this keeps training exactly sparse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Layer
from .pruning import MaskParametrization
from .sparse_evolutionary import SETConfig, SparseEvolutionaryTraining

__all__ = ["RigL", "RigLConfig", "rigl_drop_fraction"]


def rigl_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """Returns RigL's ``f(t) = α/2 · (1 + cos(π t / T_end))``: α at t = 0, α/2 halfway, 0 at
    and after ``T_end`` (``end_step``; 0 when it is 0)."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / end_step))


class _MaskRecordingGradient(torch.autograd.Function):
    """Forward ``weight * mask``; backward gives the weight ``grad * mask`` and hands the dense
    ``grad`` to ``recorder.record``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor,
                recorder: GradientRecordingMask) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.recorder = recorder
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        ctx.recorder.record(grad)
        return grad * mask, None, None


class GradientRecordingMask(MaskParametrization):
    """A mask whose inactive weights get no gradient, recording the dense gradient of the
    effective weight. The record is a plain attribute (not a buffer): it lives from a backward
    pass to the next ``on_step`` only, so no checkpoint needs it."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str | None = None):
        super().__init__(shape, "keep", device)
        self.dense_grad: torch.Tensor | None = None

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        mask = self.mask.view(torch.uint8)
        if original.requires_grad and torch.is_grad_enabled():
            return _MaskRecordingGradient.apply(original, mask, self)
        return original * mask

    def record(self, grad: torch.Tensor) -> None:
        # Summed over backward passes (gradient accumulation) and uses (tied weights).
        grad = grad.detach()
        self.dense_grad = grad if self.dense_grad is None else self.dense_grad + grad


@dataclass(frozen=True)
class RigLConfig(SETConfig):
    """Attributes:
    drop_fraction: α, the fraction moved at t = 0, decaying along the cosine to 0 at the
        schedule's ``end_step``; in (0, 1), the paper's 0.3 by default.
    seed: seeds the random initial mask (layer ``i`` from ``seed + i``); growth is by gradient.
    pruned_weights: as SET's (``"keep"`` or ``"drop"``).
    """


class RigL(SparseEvolutionaryTraining):
    """RigL: SET's drop of the smallest active weights, growth by the largest dense gradient,
    and a cosine-decaying drop fraction."""

    name = "rigl"
    config_class = RigLConfig

    def make_parametrization(self, layer: Layer) -> GradientRecordingMask:
        weight = getattr(layer.module, layer.attr)
        return GradientRecordingMask(layer.shape, weight.device)

    def drop_fraction_at(self, step: int) -> float:
        return rigl_drop_fraction(step, self.config.drop_fraction, self.schedule.end_step)

    def grow_score(self, index: int, layer: Layer, step: int,
                   generator: torch.Generator) -> torch.Tensor:
        grad = layer.parametrization.dense_grad
        if grad is None:
            raise RuntimeError(f"RigL's update at step {step} found no gradient for "
                               f"{layer.name}: call Sparsifier.step() after backward and the "
                               f"optimizer step, before the next zero_grad/forward.")
        return grad.abs()

    def sparse_step_allowed(self, step: int) -> bool:
        return True  # an update step too: the sparse step records the dense gradient then

    def dense_gradient_at(self, step: int) -> bool:
        return self.updates_at(step)  # an update ranks growth by the dense gradient

    def on_step(self, step: int) -> None:
        try:
            if not self.fixed and self.schedule.is_update_step(step):
                self._average_over_processes()
                self.evolve(step)
        finally:
            for layer in self.layers:
                layer.parametrization.dense_grad = None

    def _average_over_processes(self) -> None:
        """Averages the recorded gradients over DDP ranks, as DDP averages ``.grad``."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        for layer in self.layers:
            grad = layer.parametrization.dense_grad
            if grad is not None and self.targets[layer.name] > 0:
                grad = grad.contiguous().clone()  # autograd's tensor stays untouched
                torch.distributed.all_reduce(grad)
                layer.parametrization.dense_grad = grad / world
