"""Sparse Evolutionary Training, SET (Mocanu et al. 2018, "Scalable training of artificial
neural networks with adaptive sparse connectivity inspired by network science",
arXiv:1707.04780), and the drop-and-grow step it shares with RigL (``rigl.py``).

The network is sparse from its first step: each layer starts from a random mask holding
exactly its target's share of zeros (the paper's Erdős–Rényi topology; pass
``layer_sparsity="erk"`` for RigL's Erdős–Rényi-Kernel distribution). Every ΔT steps each layer
drops the fraction ζ of its active weights closest to zero and grows as many connections at
random among its inactive positions (the paper's SET procedure), so its count of nonzeros never
changes. Two details follow RigL's implementation of SET (google-research/rigl,
``SparseSETOptimizer``), the version RigL's comparisons use:

- the dropped weights are the ζ·active smallest in magnitude, rather than the paper's ζ of the
  smallest positive and ζ of the largest negative weights taken separately;
- a grown connection starts at zero (rigl's ``grow_init="zeros"``), so growing never changes
  the function the network computes at that step. A connection grown into a unit that has no
  active outgoing weight gets no gradient and stays zero; the sparsity measured on the
  finalized weights then exceeds the mask's by those few weights.

The update window and ΔT are the schedule's: masks evolve at ``begin_step``, ``begin_step +
frequency``, … up to ``end_step`` (``GradualSchedule.is_update_step``), as rigl's
``begin_step``/``end_step``/``frequency``. The sparsity itself never ramps: every layer is at
its target from the start.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..schedules import GradualSchedule, exact_zero_count
from .base import Layer
from .pruning import MaskParametrization
from .random import RandomConfig, RandomPruning

__all__ = ["SETConfig", "SparseEvolutionaryTraining", "drop_and_grow", "moved_count"]


def moved_count(fraction: float, active: int) -> int:
    """Returns how many of a layer's ``active`` weights an update drops (and grows back):
    ``floor(fraction · active)``, as rigl's ``n_prune`` (a 1e-9 tolerance keeps products such as
    0.29 · 100 = 28.999… at 29)."""
    return int(math.floor(fraction * active + 1e-9))


def drop_and_grow(mask: torch.Tensor, weight: torch.Tensor, grow_score: torch.Tensor,
                  count: int) -> torch.Tensor:
    """One layer's mask update (SET's evolution step; RigL's Algorithm 1, ``I_drop``/``I_grow``).

    Drops the ``count`` active weights of smallest ``|weight|``, then grows the ``count``
    positions of highest ``grow_score`` among those inactive after the drop (a weight just
    dropped may come straight back, as in RigL's ``ArgTopK_{i ∉ θ \\ I_drop}``). Ties go to the
    earlier position (stable sorts), so the result is deterministic.

    Args:
        mask: bool, the layer's shape: True where a weight is active.
        weight: the layer's weights (same shape).
        grow_score: same shape; higher is grown first.
        count: how many to drop and grow, at most the number of active weights.

    Returns:
        The new bool mask (same shape), with exactly as many active weights as ``mask``.
    """
    active = mask.flatten()
    if count == 0:
        return mask.clone()
    # Ranked among the active weights alone (their positions ascend, so ties still go to the
    # earlier one); growth among every inactive position, as the negated score's smallest.
    positions = active.nonzero().flatten()
    magnitudes = weight.detach().flatten()[positions].abs().float()
    kept = active.clone()
    kept[positions[_first_smallest(magnitudes, count)]] = False
    candidates = grow_score.detach().flatten().float().neg().masked_fill_(kept, math.inf)
    new = kept | _first_smallest(candidates, count)
    return new.view(mask.shape)


def _first_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Returns a bool mask of the ``count`` smallest of the 1-D ``scores``, ties to the earlier
    position: what the first ``count`` of a stable ascending sort pick, in linear time (a
    selection for the count-th value, then the earliest of the values equal to it) rather
    than a sort of every weight of the layer, which cost seconds per update on a 4096x4096
    layer."""
    threshold = _kth_smallest(scores, count)
    chosen = scores < threshold
    ties = scores == threshold
    missing = count - int(torch.count_nonzero(chosen))
    if int(torch.count_nonzero(ties)) == missing:  # the usual case: no tie to break
        return chosen | ties
    chosen[ties.nonzero().flatten()[:missing]] = True
    return chosen


def _kth_smallest(scores: torch.Tensor, k: int, stride: int = 16) -> torch.Tensor:
    """Returns the k-th smallest value of the 1-D ``scores`` (1-based), exactly. On a large
    tensor, a bound from every ``stride``-th value first narrows the search to the values at
    or below it; whenever at least ``k`` remain, the k-th smallest is among them, so only the
    rare miss pays a selection over all values."""
    n = scores.numel()
    if n < 64 * stride:
        return torch.kthvalue(scores, k).values
    sample = scores[::stride]
    # 10% more than the sample's share of k, plus a few: the bound rarely falls short.
    at = min(sample.numel(), int(k / stride * 1.1) + 8)
    bound = torch.kthvalue(sample, at).values
    below = scores[scores <= bound]
    if below.numel() >= k:
        return torch.kthvalue(below, k).values
    return torch.kthvalue(scores, k).values


def step_generator(seed: int, step: int) -> torch.Generator:
    """Returns a CPU generator seeded by ``(seed, step)`` alone: the draws of an update need no
    stored RNG state, so a resumed run (and every data-parallel rank) draws the same. The
    seed lies above 2³², apart from the ``seed + i`` of the initial masks' scores."""
    return torch.Generator().manual_seed((((seed + 1) << 32) + step) % 2**64)


@dataclass(frozen=True)
class SETConfig(RandomConfig):
    """Attributes:
    drop_fraction: ζ, the fraction of each layer's active weights dropped and regrown at each
        update, in (0, 1); the paper's 0.3 by default.
    seed: seeds the random initial mask (layer ``i`` from ``seed + i``, as random pruning) and
        the random growth (each update from ``(seed, step)``).
    pruned_weights: ``"keep"`` (default: a dropped weight keeps its value until it is regrown,
        when it restarts at zero) or ``"drop"`` (it is zeroed when dropped). Either way inactive
        weights get no gradient, so both train the same network. ``"update"`` (straight-through
        training of masked weights) is not SET.
    """

    drop_fraction: float = 0.3
    pruned_weights: str = "keep"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require(self.pruned_weights in ("keep", "drop"), "pruned_weights",
                      "'keep' or 'drop' (only active weights train; 'update' would train all)")
        self._require(self.block == (1, 1), "block",
                      "(1, 1): weights are dropped and grown one by one, not in blocks")
        self._require(getattr(self, "nm", None) is None, "nm",
                      "None: growing at random or by gradient does not keep N:M groups")
        self._require(isinstance(self.drop_fraction, (int, float))
                      and not isinstance(self.drop_fraction, bool)
                      and 0.0 < self.drop_fraction < 1.0, "drop_fraction",
                      "a fraction in (0, 1)")


class SparseEvolutionaryTraining(RandomPruning):
    """SET: a random mask at the target from step 0, evolved every ΔT steps by dropping the
    smallest active weights and growing as many at random. Subclasses change what is grown
    (``grow_score``) and how many (``drop_fraction_at``)."""

    name = "set"
    config_class = SETConfig

    def __init__(self, config: SETConfig, layers: list[Layer], targets: dict[str, float],
                 schedule: GradualSchedule | None = None):
        if schedule is None:
            raise ValueError(f"{self.name} needs schedule=GradualSchedule(begin_step, end_step, "
                             f"frequency): its mask updates run every frequency (ΔT) steps "
                             f"from begin_step to end_step.")
        if schedule.initial_sparsity != 0:
            raise ValueError(f"{self.name} is at its target from the first step, so the "
                             f"schedule's initial_sparsity must be 0, got "
                             f"{schedule.initial_sparsity}.")
        super().__init__(config, layers, targets, schedule)
        self._check_layers_can_move(config.drop_fraction)

    def _check_layers_can_move(self, fraction: float) -> None:
        """Refuses a sparse layer whose target leaves it no weight, or too few for the first
        update to move any (it would silently stay a fixed random mask)."""
        for layer in self.layers:
            target = self.targets[layer.name]
            if target <= 0:
                continue  # dense: nothing inactive, never updated
            active = layer.numel - exact_zero_count(target, layer.numel)
            if moved_count(fraction, active) == 0:
                raise ValueError(
                    f"Layer {layer.name} keeps {active} of {layer.numel} weights at sparsity "
                    f"{target:g}, so a drop fraction of {fraction:g} moves none of them: lower "
                    f"its sparsity (layer_sparsity, e.g. 'erk'), raise drop_fraction, or "
                    f"leave it dense.")

    def make_parametrization(self, layer: Layer) -> MaskParametrization:
        weight = getattr(layer.module, layer.attr)
        return MaskParametrization(layer.shape, "keep", weight.device)

    def sparsity_at(self, step: int, layer: Layer) -> float:
        return self.targets[layer.name]  # sparse at the target from the first step

    def drop_fraction_at(self, step: int) -> float:
        """Returns the fraction of active weights moved at update ``step``: SET's constant ζ."""
        return self.config.drop_fraction

    def grow_score(self, index: int, layer: Layer, step: int,
                   generator: torch.Generator) -> torch.Tensor:
        """Returns the scores growth ranks ``layer``'s inactive positions by: uniform noise,
        so SET grows at random."""
        return torch.rand(layer.shape, generator=generator).to(layer.original.device)

    def on_step(self, step: int) -> None:
        if not self.fixed and self.schedule.is_update_step(step):
            self.evolve(step)

    def sparse_step_allowed(self, step: int) -> bool:
        # Inactive weights get no gradient, and a grown one restarts at zero with a fresh
        # optimizer state: nothing of them survives, at any step.
        return True

    def _warn_no_optimizer(self) -> None:
        if not getattr(self, "_warned_no_optimizer", False):
            self._warned_no_optimizer = True
            warnings.warn(f"{self.name}: grown connections keep the optimizer state their "
                          f"position had before; call Sparsifier.use_optimizer(optimizer) "
                          f"so they start afresh (sparsebench.train does).", stacklevel=3)

    @torch.no_grad()
    def evolve(self, step: int) -> None:
        """Drops and grows ``drop_fraction_at(step)`` of every sparse layer's active weights."""
        fraction = self.drop_fraction_at(step)
        generator = step_generator(self.config.seed, step)
        for index, layer in enumerate(self.layers):
            if self.targets[layer.name] <= 0:
                continue
            mask = layer.parametrization.mask
            count = moved_count(fraction, int(torch.count_nonzero(mask)))
            if count == 0:
                continue
            score = self.grow_score(index, layer, step, generator)
            new = drop_and_grow(mask, layer.original, score, count)
            grown = new & ~mask
            layer.original.masked_fill_(grown, 0.0)  # grown connections start at zero,
            if not self.reset_optimizer_state(layer, grown):  # and with no momentum
                self._warn_no_optimizer()
            mask.copy_(new)
            if self.config.pruned_weights == "drop":
                layer.original.mul_(mask)
