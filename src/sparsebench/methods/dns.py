"""Dynamic network surgery (Guo, Yao & Chen 2016, "Dynamic Network Surgery for Efficient
DNNs", arXiv:1608.04493).

Every weight keeps training, masked or not (Sec. 3: ``W ← W − β ∂L/∂(W ⊙ T)``, the
straight-through mask of ``pruning.MaskParametrization`` in its "update" mode), and a *surgery*
recomputes each layer's mask T with two thresholds a < b on ``|w|`` (the discriminative
function h_k of Sec. 3): an active weight with ``|w| ≤ a`` is pruned, a pruned weight with
``|w| > b`` is spliced back, and a weight between the two keeps its state, so the margin stops
weights near the threshold from flipping at every surgery.

The paper sets a and b from each layer's mean and standard deviation of ``|w|``; the rule is
the authors' Caffe code's (yiwenguo/Dynamic-Network-Surgery, ``compress_conv_layer.cpp``):
``t = max(μ + c·σ, 0)`` with μ and σ the mean and (population) standard deviation of the
layer's ``|w|``, ``a = 0.9·t`` and ``b = 1.1·t``; ``c`` (``c_rate``) sets how sparse a layer
becomes. The code computes μ and σ once, on the trained model the paper starts from. Here a
run trains from scratch, where the weights' spread at initialization says nothing of their
trained spread, so by default μ and σ are taken afresh at every surgery over all of the layer's
weights (pruned ones included: they train too); ``fixed_statistics=True`` keeps the code's rule
(statistics of the weights ``sparsify`` finds, for surgery on a trained model).

Surgery happens with probability ``σ(t) = (1 + γ·t)^(−power)`` at step t (the paper's
non-increasing σ(iter), in the code's form, with γ = 1e-4 and power = 1 as in its README's
example), each layer drawing for itself, and never after ``end_step`` (the code's
``iter_stop``). It takes no sparsity target: ``c_rate`` sets the sparsity and the achieved
value is reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Layer, Method, MethodConfig
from .pruning import MaskParametrization

__all__ = ["DNSConfig", "DynamicNetworkSurgery", "splice", "splice_thresholds",
           "surgery_probability"]


def splice_thresholds(weight: torch.Tensor, c_rate: float, prune_factor: float,
                      splice_factor: float) -> torch.Tensor:
    """Returns ``[a, b]`` for a layer's weights: ``t = max(μ + c·σ, 0)``, ``a = prune_factor·t``,
    ``b = splice_factor·t`` (μ, σ: mean and population standard deviation of ``|weight|``)."""
    magnitude = weight.detach().abs().float()
    t = (magnitude.mean() + c_rate * magnitude.std(correction=0)).clamp(min=0.0)
    return torch.stack([prune_factor * t, splice_factor * t])


def splice(mask: torch.Tensor, magnitude: torch.Tensor, low: torch.Tensor | float,
           high: torch.Tensor | float) -> torch.Tensor:
    """Returns h_k's new mask: an active weight stays when ``|w| > low``, a pruned one comes
    back when ``|w| > high``; a weight between the two keeps its state."""
    return torch.where(mask, magnitude > low, magnitude > high)


def surgery_probability(step: int, gamma: float, power: float) -> float:
    """Returns σ(t) = (1 + γ·t)^(−power): 1 at t = 0, non-increasing."""
    return (1.0 + gamma * step) ** (-power)


@dataclass(frozen=True)
class DNSConfig(MethodConfig):
    """Attributes:
    c_rate: c in ``t = max(μ + c·σ, 0)``: higher prunes more. At 1, a = 0.71 of a uniform
        initialization's bound (71% of its weights fall below a), and more of a trained
        layer's heavier-tailed weights.
    prune_factor, splice_factor: ``a = prune_factor·t`` and ``b = splice_factor·t``, with
        0 < a < b (the code's 0.9 and 1.1).
    gamma, power: the surgery probability ``(1 + γ·t)^(−power)``; ``power = 0`` operates at
        every step.
    end_step: no surgery after this step (the masks then stay fixed); None: surgery until the
        end of training, ever less often.
    fixed_statistics: False (default): μ and σ are taken afresh at every surgery; True: once,
        from the weights at ``sparsify`` (the authors' code, starting from a trained model).
    seed: seeds the draw that decides whether a layer operates at a step (from ``(seed,
        step)`` alone, so a resumed run draws the same).
    """

    c_rate: float = 1.0
    prune_factor: float = 0.9
    splice_factor: float = 1.1
    gamma: float = 1e-4
    power: float = 1.0
    end_step: int | None = None
    fixed_statistics: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self._require(_finite(self.c_rate), "c_rate", "a finite number")
        self._require(_finite(self.prune_factor) and self.prune_factor > 0, "prune_factor",
                      "a positive number")
        self._require(_finite(self.splice_factor) and self.splice_factor > self.prune_factor,
                      "splice_factor", f"above prune_factor ({self.prune_factor!r}): a weight is "
                      f"pruned below a and spliced back above b, with a < b")
        self._require(_finite(self.gamma) and self.gamma >= 0, "gamma", "a number >= 0")
        self._require(_finite(self.power) and self.power >= 0, "power", "a number >= 0")
        self._require(self.end_step is None or (_integer(self.end_step) and self.end_step >= 0),
                      "end_step", "None or an integer step >= 0")
        self._require(isinstance(self.fixed_statistics, bool), "fixed_statistics",
                      "true or false")
        self._require(_integer(self.seed) and self.seed >= 0, "seed", "an integer >= 0")


def _finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and abs(value) < float("inf"))


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SurgeryMask(MaskParametrization):
    """The straight-through mask plus the layer's current ``thresholds`` ``[a, b]`` (a buffer,
    so a checkpoint carries them: with ``fixed_statistics`` they cannot be recomputed)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str | None = None):
        super().__init__(shape, "update", device)
        self.register_buffer("thresholds", torch.zeros(2, device=device))


class DynamicNetworkSurgery(Method):
    """Pruning and splicing by two magnitude thresholds per layer, at surgeries that grow
    rarer; all weights keep training."""

    name = "dns"
    config_class = DNSConfig
    uses_sparsity_target: ClassVar[bool] = False

    def make_parametrization(self, layer: Layer) -> SurgeryMask:
        weight = getattr(layer.module, layer.attr)
        return SurgeryMask(layer.shape, weight.device)

    def on_attach(self) -> None:
        for layer in self.layers:  # σ(0) = 1: every layer operates before the first step
            self.surgery(layer, refresh=True)
        self._warn_if_emptied(self.layers)

    def on_step(self, step: int) -> None:
        config = self.config
        if config.end_step is not None and step > config.end_step:
            return
        probability = surgery_probability(step, config.gamma, config.power)
        generator = torch.Generator().manual_seed(((config.seed << 32) + step) % 2**64)
        draws = torch.rand(len(self.layers), generator=generator)
        operated = [layer for layer, draw in zip(self.layers, draws.tolist(), strict=True)
                    if draw < probability]
        for layer in operated:
            self.surgery(layer, refresh=not config.fixed_statistics)
        self._warn_if_emptied(operated)

    def _warn_if_emptied(self, layers: list[Layer]) -> None:
        """Warns once per layer that a surgery pruned whole. From scratch this is the rule's,
        not the run's, doing: a uniformly initialized layer's |w| on [0, B] has μ = B/2 and
        σ = B/√12, so a = 0.9·(μ + c·σ) reaches B at c ≈ 2.1 and every weight is pruned at the
        first surgery; none is above b then to come back (the translation sweep's c = 3 run
        pruned 32 of its 33 layers whole and ended at a uniform guess's loss)."""
        warned = self.__dict__.setdefault("_emptied", set())
        layers = [layer for layer in layers if layer.name not in warned]
        if not layers:
            return
        # One read of all the flags: on a GPU, each .any() read alone would wait for it.
        alive = torch.stack([layer.parametrization.mask.any() for layer in layers]).tolist()
        emptied = [layer for layer, kept in zip(layers, alive, strict=True) if not kept]
        if not emptied:
            return
        warned.update(layer.name for layer in emptied)
        names = ", ".join(layer.name for layer in emptied[:3])
        more = f" and {len(emptied) - 3} more" if len(emptied) > 3 else ""
        warnings.warn(f"dns: surgery pruned every weight of {names}{more}: with c_rate="
                      f"{self.config.c_rate:g} the threshold a lies above all of their weights' "
                      f"magnitudes, and a layer comes back only when one grows above b; a lower "
                      f"c_rate prunes less.", stacklevel=3)

    @torch.no_grad()
    def surgery(self, layer: Layer, refresh: bool) -> None:
        """Prunes and splices ``layer`` (h_k), taking its thresholds afresh if ``refresh``."""
        parametrization = layer.parametrization
        magnitude = layer.original.detach().abs()
        if refresh:
            parametrization.thresholds.copy_(splice_thresholds(
                layer.original, self.config.c_rate, self.config.prune_factor,
                self.config.splice_factor))
        low, high = parametrization.thresholds
        parametrization.mask.copy_(splice(parametrization.mask, magnitude, low, high))
