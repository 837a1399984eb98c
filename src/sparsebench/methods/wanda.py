"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter 2023,
"A Simple and Effective Pruning Approach for Large Language Models", arXiv:2306.11695).

Each weight is scored by its magnitude times the L2 norm of the input feature it multiplies,
over every calibration row the layer sees (the paper's Eq. 1):

    S_ij = |W_ij| · ‖X_j‖₂

and the lowest scores are pruned *per output row* (the paper's "per output" comparison group,
§3), or, under N:M, the lowest M − N of every group of M inputs in a row. The kept weights are
not changed: Wanda needs no weight update and no Hessian.
"""

from __future__ import annotations

import torch

from ..nm import nm_mask
from .calibration import SquaredNorms
from .one_shot import OneShotPruner, prune_lowest, spread_zeros

__all__ = ["Wanda", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """Returns S = |W| · ‖X_j‖₂ for the (out, in) ``weight`` and Σ_n X[n, j]² per input j."""
    return weight.abs() * squared_norms.clamp_min(0).sqrt().unsqueeze(0)


class Wanda(OneShotPruner):
    """Wanda one-shot pruning; its only statistic is each input's squared norm."""

    name = "wanda"
    statistic = SquaredNorms

    def prune(self, weight, statistic, sparsity, nm):
        scores = wanda_scores(weight, statistic)
        if nm is not None:
            keep = nm_mask(scores, nm)
        else:
            rows, cols = weight.shape
            keep = prune_lowest(scores, spread_zeros(sparsity, cols, rows).to(weight.device))
        return weight * keep, keep
