"""Random pruning: the study's lower bound. Same schedule and bookkeeping as magnitude pruning,
but weights are ranked by a fixed random score, so which weights go does not depend on training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Layer
from .pruning import PruningConfig, PruningMethod

__all__ = ["RandomConfig", "RandomPruning"]


@dataclass(frozen=True)
class RandomConfig(PruningConfig):
    """Attributes:
    seed: seeds the fixed scores; layer ``i`` uses ``seed + i``, so scores are the same at
        every mask update and after a resume without being stored.
    """

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0")


class RandomPruning(PruningMethod):
    name = "random"
    config_class = RandomConfig

    def score(self, index: int, layer: Layer) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.config.seed + index)
        return torch.rand(layer.shape, generator=generator).to(layer.original.device)
