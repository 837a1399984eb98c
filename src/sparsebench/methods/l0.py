"""L0 regularization with hard-concrete gates (Louizos, Welling & Kingma 2017,
"Learning Sparse Neural Networks through L0 Regularization", arXiv:1712.01312).

Each weight θ is multiplied by a gate z ∈ [0, 1] drawn from a hard-concrete distribution with a
learned location log α; the penalty is the expected number of nonzero gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..schedules import linear_warmup
from ._fused import flat_in_memory_order, fused
from .base import Layer, Method, MethodConfig, WeightParametrization

__all__ = [
    "BETA",
    "GAMMA",
    "L0Config",
    "L0Regularization",
    "ZETA",
    "expected_l0",
    "hard_concrete",
    "hard_concrete_sample",
    "deterministic_gate",
]

# Louizos et al. 2017, section 4: temperature β and the stretch interval (γ, ζ).
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
#: Keeps u away from 0 and 1 so log u and log(1 − u) stay finite.
EPS = 1e-6


def hard_concrete(
    log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA, gamma: float = GAMMA,
    zeta: float = ZETA,
) -> torch.Tensor:
    """Eq. 10 for given uniform noise u: s = σ((log u − log(1 − u) + log α)/β);
    s̄ = s(ζ − γ) + γ; returns z = min(1, max(0, s̄))."""
    u = u.clamp(EPS, 1.0 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return torch.clamp(s * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_sample(
    log_alpha: torch.Tensor, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA
) -> torch.Tensor:
    """Returns a gate sample z per element of ``log_alpha``, with u ~ U(0, 1)."""
    return hard_concrete(log_alpha, torch.rand_like(log_alpha), beta, gamma, zeta)


def expected_l0(
    log_alpha: torch.Tensor, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA
) -> torch.Tensor:
    """Eq. 12, elementwise: P(z ≠ 0) = σ(log α − β·log(−γ/ζ))."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def deterministic_gate(
    log_alpha: torch.Tensor, gamma: float = GAMMA, zeta: float = ZETA
) -> torch.Tensor:
    """Eq. 13, the test-time gate: ẑ = min(1, max(0, σ(log α)(ζ − γ) + γ))."""
    return torch.clamp(torch.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


# Fused versions over flattened tensors (see _fused.py); u is drawn outside so the random
# stream is torch's own, identical with and without compilation.
@fused
def _gated_weight(theta: torch.Tensor, log_alpha: torch.Tensor, u: torch.Tensor,
                  beta: float, gamma: float, zeta: float) -> torch.Tensor:
    return theta * hard_concrete(log_alpha, u, beta, gamma, zeta)


@fused
def _expected_l0_sum(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float):
    return expected_l0(log_alpha, beta, gamma, zeta).sum()


@dataclass(frozen=True)
class L0Config(MethodConfig):
    """Attributes:
    l0_weight: multiplies the expected number of nonzero weights (the study's
        ``l0_norm_weight``); larger values give more sparsity.
    warmup_begin, warmup_end: the weight rises linearly from 0 to ``l0_weight`` between them.
    init_log_alpha, init_log_alpha_std: log α starts at N(mean, std); 2.197 = log(0.9/0.1),
        a gate that starts open with probability about 0.9.
    beta, gamma, zeta: the hard-concrete temperature and stretch (2/3, −0.1, 1.1).
    """

    l0_weight: float = 1e-5
    warmup_begin: int = 0
    warmup_end: int = 0
    init_log_alpha: float = 2.197
    init_log_alpha_std: float = 0.01
    beta: float = BETA
    gamma: float = GAMMA
    zeta: float = ZETA

    def __post_init__(self) -> None:
        self._require(self.l0_weight >= 0, "l0_weight", "a number >= 0")
        self._require(self.warmup_begin >= 0, "warmup_begin", "an integer >= 0")
        self._require(self.warmup_end >= self.warmup_begin, "warmup_end", ">= warmup_begin")
        self._require(self.init_log_alpha_std >= 0, "init_log_alpha_std", "a number >= 0")
        self._require(self.beta > 0, "beta", "positive")
        self._require(self.gamma < 0, "gamma", "negative (the stretch must pass below 0)")
        self._require(self.zeta > 1, "zeta", "greater than 1 (the stretch must pass above 1)")


class HardConcreteGate(WeightParametrization):
    """Holds log α for one weight: θ·z with a fresh gate sample per forward in training,
    θ·ẑ with the deterministic test-time gate at evaluation."""

    def __init__(self, original: torch.Tensor, config: L0Config):
        super().__init__()
        init = torch.randn_like(original) * config.init_log_alpha_std + config.init_log_alpha
        self.log_alpha = nn.Parameter(init)
        self.beta, self.gamma, self.zeta = config.beta, config.gamma, config.zeta

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return theta * deterministic_gate(self.log_alpha, self.gamma, self.zeta)
        (theta_flat, log_alpha), shaped = flat_in_memory_order(theta, self.log_alpha)
        u = torch.rand_like(log_alpha)  # drawn flat: see variational_dropout.sample
        return shaped(_gated_weight(theta_flat, log_alpha, u, self.beta, self.gamma, self.zeta))

    def expected_l0(self) -> torch.Tensor:
        """Returns Σ P(z ≠ 0) over this weight."""
        (log_alpha,), _ = flat_in_memory_order(self.log_alpha)
        return _expected_l0_sum(log_alpha, self.beta, self.gamma, self.zeta)

    def final_weight(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * deterministic_gate(self.log_alpha.detach(), self.gamma, self.zeta)

    def keep_mask(self, theta: torch.Tensor) -> torch.Tensor:
        return deterministic_gate(self.log_alpha.detach(), self.gamma, self.zeta) > 0


class L0Regularization(Method):
    name = "l0"
    config_class = L0Config
    uses_sparsity_target: ClassVar[bool] = False

    def make_parametrization(self, layer: Layer) -> HardConcreteGate:
        return HardConcreteGate(getattr(layer.module, layer.attr).detach(), self.config)

    def penalty(self, step: int) -> torch.Tensor:
        """Returns l0_weight · warm-up(step) · Σ P(z ≠ 0) over every sparsified weight."""
        c = self.config
        scale = c.l0_weight * linear_warmup(step, c.warmup_begin, c.warmup_end)
        if scale == 0.0:
            return torch.zeros((), device=self.layers[0].original.device)
        return scale * sum(layer.parametrization.expected_l0() for layer in self.layers)
