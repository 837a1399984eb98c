"""Magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878).

Each layer keeps its largest-|w| weights; the sparsity follows the cubic gradual schedule
(``schedules.GradualSchedule``), and masks are recomputed every ``frequency`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Layer
from .pruning import PruningConfig, PruningMethod

__all__ = ["MagnitudeConfig", "MagnitudePruning"]


@dataclass(frozen=True)
class MagnitudeConfig(PruningConfig):
    """Magnitude pruning has only the shared pruning options (see ``PruningConfig``)."""


class MagnitudePruning(PruningMethod):
    name = "magnitude"
    config_class = MagnitudeConfig

    def score(self, index: int, layer: Layer) -> torch.Tensor:
        return layer.original.detach().abs()
