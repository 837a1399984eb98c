"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, arXiv:1701.05369), building on
variational dropout and the local reparameterization trick (Kingma, Salimans & Welling 2015,
arXiv:1506.02557).

Each weight has a mean θ (the layer's own weight) and a log variance log σ². With
log α = log σ² − log θ², a weight is dropped at evaluation where log α exceeds a threshold.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import linear_warmup
from ._fused import flat_in_memory_order, fused
from .base import Layer, Method, MethodConfig, WeightParametrization

__all__ = [
    "K1",
    "K2",
    "K3",
    "VariationalDropout",
    "VariationalDropoutConfig",
    "log_alpha",
    "negative_kl",
]

# Molchanov et al. 2017, eq. 14: the constants of the sigmoid approximation of −KL.
K1, K2, K3 = 0.63576, 1.87320, 1.48695
#: Added inside logs and square roots so a zero weight or zero variance stays finite.
EPS = 1e-8


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> torch.Tensor:
    """Returns log α = log σ² − log θ², clipped to [−clip, clip] (the study clips at 8)."""
    return torch.clamp(log_sigma2 - torch.log(theta * theta + EPS), -clip, clip)


def negative_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. 2017, eq. 14, elementwise:
    −KL ≈ k1·σ(k2 + k3·log α) − ½·log(1 + 1/α) − k1."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


# The per-weight chains below run fused (see _fused.py); they take flattened tensors so one
# compiled kernel serves every layer shape.
@fused
def _noise_variance(theta: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> torch.Tensor:
    return torch.exp(log_alpha(theta, log_sigma2, clip)) * theta * theta


@fused
def _kl_sum(theta: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> torch.Tensor:
    return -negative_kl(log_alpha(theta, log_sigma2, clip)).sum()


@fused
def _gaussian_sample(mean: torch.Tensor, variance: torch.Tensor, noise: torch.Tensor):
    return mean + torch.sqrt(variance + EPS) * noise


@dataclass(frozen=True)
class VariationalDropoutConfig(MethodConfig):
    """Attributes:
    kl_weight: multiplies the KL summed over all sparsified weights. The paper's ELBO, with a
        mean cross-entropy loss, corresponds to 1 / (number of training examples); larger
        values give more sparsity.
    warmup_begin, warmup_end: the KL weight rises linearly from 0 at ``warmup_begin`` to
        ``kl_weight`` at ``warmup_end`` (the study's "DKL loss begin / saturate").
    threshold: at evaluation a weight is zero where log α > threshold (3 in the paper).
    init_log_sigma2: initial log σ² of every weight (−10, as in the study's code).
    clip_log_alpha: log α is clipped to [−clip, clip] in the KL and the noise (8 in the study).
    """

    kl_weight: float = 1e-5
    warmup_begin: int = 0
    warmup_end: int = 0
    threshold: float = 3.0
    init_log_sigma2: float = -10.0
    clip_log_alpha: float = 8.0

    def __post_init__(self) -> None:
        self._require(self.kl_weight >= 0, "kl_weight", "a number >= 0")
        self._require(self.warmup_begin >= 0, "warmup_begin", "an integer >= 0")
        self._require(self.warmup_end >= self.warmup_begin, "warmup_end", ">= warmup_begin")
        self._require(self.clip_log_alpha > 0, "clip_log_alpha", "a positive number")
        self._require(
            abs(self.threshold) < self.clip_log_alpha, "threshold",
            f"inside (−clip_log_alpha, clip_log_alpha) = ±{self.clip_log_alpha}",
        )


class VariationalDropoutWeight(WeightParametrization):
    """Holds log σ² for one weight. In training, layers whose own forward runs use the local
    reparameterization (see ``local_reparameterized_forward``) and this returns θ; a weight read
    directly by a parent (``nn.MultiheadAttention``) gets a fresh sample θ + σ·ε per forward.
    At evaluation it returns θ·mask."""

    def __init__(self, original: torch.Tensor, config: VariationalDropoutConfig, local: bool):
        super().__init__()
        self.log_sigma2 = nn.Parameter(torch.full_like(original, config.init_log_sigma2))
        self.threshold = config.threshold
        self.clip = config.clip_log_alpha
        self.local = local

    def log_alpha(self, theta: torch.Tensor) -> torch.Tensor:
        return log_alpha(theta, self.log_sigma2, self.clip)

    def noise_variance(self, theta: torch.Tensor) -> torch.Tensor:
        """Returns α·θ² (= σ² unless log α was clipped), the variance the noise uses."""
        (theta_flat, log_sigma2), shaped = flat_in_memory_order(theta, self.log_sigma2)
        return shaped(_noise_variance(theta_flat, log_sigma2, self.clip))

    def kl(self, theta: torch.Tensor) -> torch.Tensor:
        """Returns the KL summed over this weight (eq. 14, negated)."""
        (theta_flat, log_sigma2), _ = flat_in_memory_order(theta, self.log_sigma2)
        return _kl_sum(theta_flat, log_sigma2, self.clip)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return theta * self.keep_mask(theta).view(torch.uint8)  # see MaskParametrization
        if self.local:
            return theta
        return sample(theta, self.noise_variance(theta))

    def keep_mask(self, theta: torch.Tensor) -> torch.Tensor:
        return log_alpha(theta, self.log_sigma2.detach(), self.clip) <= self.threshold


def sample(mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Returns mean + sqrt(variance)·ε with ε ~ N(0, 1) of the same shape."""
    (mean_flat, variance_flat), shaped = flat_in_memory_order(mean, variance)
    # Drawn flat: torch's vectorized normal_ only serves contiguous tensors, and a
    # channels-last one takes a strided path 20x slower than the convolution it feeds.
    noise = torch.randn_like(mean_flat)
    return shaped(_gaussian_sample(mean_flat, variance_flat, noise))


def local_reparameterized_forward(module: nn.Module, input: torch.Tensor, *,
                                  transposed: bool = False) -> torch.Tensor:
    """Kingma et al. 2015, local reparameterization: sample the pre-activations, not the
    weights. With B = x·θ and V = x²·(α·θ²), the output is B + sqrt(V)·ε, ε ~ N(0, 1).

    Used in training for nn.Linear, nn.Conv2d and transformers' Conv1D (``transposed``: its
    weight is stored (in, out)); at evaluation the layer's own forward runs with the
    parametrized weight θ·mask.
    """
    if not module.training:
        return type(module).forward(module, input)
    theta = module.parametrizations.weight.original
    variance = module.parametrizations.weight[0].noise_variance(theta)
    if isinstance(module, nn.Conv2d):
        mean = module._conv_forward(input, theta, module.bias)
        var = module._conv_forward(input * input, variance, None)
    elif transposed:
        mean = F.linear(input, theta.t(), module.bias)
        var = F.linear(input * input, variance.t())
    else:
        mean = F.linear(input, theta, module.bias)
        var = F.linear(input * input, variance)
    return sample(mean, var)


class VariationalDropout(Method):
    name = "variational_dropout"
    config_class = VariationalDropoutConfig
    uses_sparsity_target: ClassVar[bool] = False

    def make_parametrization(self, layer: Layer) -> VariationalDropoutWeight:
        weight = getattr(layer.module, layer.attr)
        return VariationalDropoutWeight(weight.detach(), self.config, layer.local_reparam)

    def forward_override(self, layer: Layer):
        if not layer.local_reparam:
            return None
        return functools.partial(local_reparameterized_forward, layer.module,
                                 transposed=layer.transposed)

    def penalty(self, step: int) -> torch.Tensor:
        """Returns kl_weight · warm-up(step) · Σ KL over every sparsified weight."""
        scale = self.config.kl_weight * linear_warmup(
            step, self.config.warmup_begin, self.config.warmup_end
        )
        if scale == 0.0:
            return torch.zeros((), device=self.layers[0].original.device)
        return scale * sum(layer.parametrization.kl(layer.original) for layer in self.layers)
