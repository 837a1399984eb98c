"""Iterative magnitude pruning with rewinding: Han et al. 2015 ("Learning both Weights and
Connections for Efficient Neural Networks", arXiv:1506.02626), Frankle & Carbin 2019 ("The
Lottery Ticket Hypothesis", arXiv:1803.03635) and Frankle et al. 2020 ("Linear Mode
Connectivity and the Lottery Ticket Hypothesis", arXiv:1912.05671, Algorithm 2).

The procedure:

1. train the dense network, remembering every parameter and buffer (BatchNorm statistics
   included) as they are after ``rewind_step`` = k optimizer steps (k = 0: the initialization,
   the lottery ticket);
2. prune the fraction p of the remaining weights with the smallest |w|, per layer or over all
   sparsified layers at once (``ranking``);
3. rewind: every parameter and buffer of the model, not only the sparsified weights, goes back
   to its value at step k, the pruned weights to zero;
4. train again with the mask fixed (pruned weights zero, no gradient); steps 2–4 repeat, once
   per round, ``rounds`` times. The last round trains at the final sparsity.

**Round sparsities.** The run's ``sparsity`` target s is the final sparsity, reached exactly:
each round prunes the same fraction ``p = 1 − (1 − s)^(1/rounds)`` of the weights still there,
so round r holds ``round(s_r·n)`` zeros per layer (as the other pruning methods count them),
``s_r = 1 − (1 − s)^(r/rounds)``: with rounds = 3 and s = 0.875, p = 0.5 and s_r = 0.5, 0.75,
0.875. ``prune_fraction`` may state p as well, as a check: it must lead to the same zero counts.

**How the rounds fill a run.** The run's N optimizer steps hold rounds + 1 trainings of equal
length (the dense one, then one per round; boundaries ``⌊j·N/(rounds + 1)⌋``): a run of N
steps costs what one run does ("equal total steps"), and a run of (rounds + 1)·N steps gives
every training the full N ("its own cost", as IMP is usually run). ``rewind_step`` counts
steps into the dense training, at most its length; at its end (k = that length) the rewind
keeps the trained weights: fine-tuning with the learning-rate schedule restarted.

**Each round is a training run of its own**: ``plan_rounds`` returns where the rounds start,
and the training loop restarts the learning-rate schedule and the optimizer's state there
(``Method.plan_rounds``, ``Sparsifier.plan_rounds``); this technique prunes and rewinds in
``on_step`` at those steps. The rewind point lives in the technique's state (``extra_state``),
so a checkpoint holds it and a run cut after it resumes bit for bit; the technique keeps it,
not the training loop, because pruning and rewinding are one step of the technique, and a
library user who trains with ``sparsify()`` alone gets them too.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..schedules import GradualSchedule, exact_zero_count
from .base import Layer
from .magnitude import MagnitudePruning
from .pruning import PruningConfig

__all__ = ["IMPConfig", "IterativeMagnitudePruning", "RANKINGS", "imp_prune_fraction",
           "round_sparsity"]

#: How weights are ranked: within each layer (each holds its own target's share of zeros) or
#: over all sparsified layers together (one magnitude threshold; the overall count exact).
RANKINGS = ("layer", "global")


def imp_prune_fraction(sparsity: float, rounds: int) -> float:
    """Returns p, the fraction of the remaining weights each of ``rounds`` rounds prunes to
    reach ``sparsity``: ``1 − (1 − s)^(1/rounds)``."""
    return 1.0 - (1.0 - sparsity) ** (1.0 / rounds)


def round_sparsity(sparsity: float, round_: int, rounds: int) -> float:
    """Returns the sparsity after ``round_`` of ``rounds`` prunings toward ``sparsity``:
    ``s_r = 1 − (1 − s)^(r/rounds)`` (0 before the first, exactly ``sparsity`` at the last)."""
    if round_ <= 0:
        return 0.0
    if round_ >= rounds:
        return sparsity
    return 1.0 - (1.0 - sparsity) ** (round_ / rounds)


@dataclass(frozen=True)
class IMPConfig(PruningConfig):
    """Attributes:
    rounds: how many times the network is pruned, rewound and trained again (>= 1); the run
        trains rounds + 1 times (the first dense), each for ``run.steps / (rounds + 1)`` steps.
    rewind_step: k, the step of the dense training whose weights (and every other parameter
        and buffer) each round starts from; 0 (the initialization: the lottery ticket) by
        default, at most the dense training's length.
    ranking: ``"layer"`` (default: each layer prunes its own share, exact per-layer counts)
        or ``"global"`` (one ranking over all sparsified layers, the total count exact; layers
        whose target is 0 stay dense).
    prune_fraction: p, the fraction of the remaining weights each round prunes, in (0, 1).
        It follows from the sparsity target (``1 − (1 − s)^(1/rounds)``); given, it is checked
        to reach the target's zero counts, and the target is what is pruned to.
    pruned_weights: ``"drop"``: pruned weights are zero and get no gradient (the only mode,
        fixed by the method).
    """

    rounds: int = 3
    rewind_step: int = 0
    ranking: str = "layer"
    prune_fraction: float | None = None
    pruned_weights: str = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require(isinstance(self.rounds, int) and not isinstance(self.rounds, bool)
                      and self.rounds >= 1, "rounds", "an integer >= 1")
        self._require(isinstance(self.rewind_step, int) and not isinstance(self.rewind_step, bool)
                      and self.rewind_step >= 0, "rewind_step",
                      "an integer >= 0 (a step of the first, dense training)")
        self._require(self.ranking in RANKINGS, "ranking", f"one of {list(RANKINGS)}")
        p = self.prune_fraction
        self._require(p is None or (isinstance(p, (int, float)) and not isinstance(p, bool)
                                    and 0.0 < p < 1.0), "prune_fraction",
                      "a fraction in (0, 1), or None to derive it from the sparsity target")
        self._require(self.pruned_weights == "drop", "pruned_weights",
                      "'drop': IMP trains each round with the pruned weights fixed at zero")
        self._require(self.block == (1, 1), "block", "(1, 1): IMP prunes single weights")
        self._require(self.nm is None, "nm", "None: IMP prunes single weights")


class IterativeMagnitudePruning(MagnitudePruning):
    """Train dense; then, ``rounds`` times, prune the smallest-|w| fraction p of the remaining
    weights, rewind everything to step k and train again with the mask fixed."""

    name = "imp"
    config_class = IMPConfig
    uses_sparsity_target: ClassVar[bool] = True

    def __init__(self, config: IMPConfig, layers: list[Layer], targets: dict[str, float],
                 schedule: GradualSchedule | None = None):
        # The rounds set when it prunes: a gradual schedule (the runner passes its default
        # one to every target-taking technique) is not used.
        super().__init__(config, layers, targets, schedule)
        self._starts: tuple[int, ...] | None = None
        self._rewind: dict[str, torch.Tensor] = {}
        if config.prune_fraction is not None:
            self._check_prune_fraction()

    # -- options against the targets and the run's length --------------------------------
    def _ranked(self) -> list[tuple[int, Layer]]:
        """Returns (index, layer) of the layers that are pruned (target above 0)."""
        return [(i, layer) for i, layer in enumerate(self.layers) if self.targets[layer.name] > 0]

    def _overall_target(self, ranked: list[tuple[int, Layer]]) -> float:
        """Returns the pruned layers' target over all their weights (global ranking's)."""
        size = sum(layer.numel for _, layer in ranked)
        return sum(self.targets[layer.name] * layer.numel for _, layer in ranked) / size

    def _check_prune_fraction(self) -> None:
        """Refuses a ``prune_fraction`` whose rounds do not reach the target's zero counts."""
        p, rounds = self.config.prune_fraction, self.config.rounds
        reached = 1.0 - (1.0 - p) ** rounds
        ranked = self._ranked()
        if self.config.ranking == "global" and ranked:
            size = sum(layer.numel for _, layer in ranked)
            checks = [("all sparsified layers", self._overall_target(ranked), size)]
        else:
            checks = [(layer.name, self.targets[layer.name], layer.numel) for _, layer in ranked]
        for where, target, size in checks:
            if exact_zero_count(reached, size) != exact_zero_count(target, size):
                raise ValueError(
                    f"IMPConfig.prune_fraction = {p!r} over {rounds} rounds reaches sparsity "
                    f"{reached:.6g}, but the target of {where} is {target:g} (p = "
                    f"{imp_prune_fraction(target, rounds):.6g}); leave prune_fraction unset "
                    f"to derive it from the target, or set sparsity to {reached:.6g}.")

    def plan_rounds(self, total_steps: int) -> tuple[int, ...]:
        trainings = self.config.rounds + 1
        if total_steps < trainings:
            raise ValueError(f"IMP with rounds = {self.config.rounds} trains {trainings} times "
                             f"(dense, then once per round), so the run needs at least "
                             f"{trainings} steps; it has {total_steps}.")
        starts = tuple(j * total_steps // trainings for j in range(1, trainings))
        if self.config.rewind_step > starts[0]:
            raise ValueError(f"IMPConfig.rewind_step = {self.config.rewind_step} is beyond the "
                             f"first (dense) training, which has {starts[0]} of the run's "
                             f"{total_steps} steps ({trainings} trainings); it must be at most "
                             f"{starts[0]}.")
        self._starts = starts
        return starts

    # -- the rounds --------------------------------------------------------------------------
    def round_at(self, step: int) -> int:
        """Returns how many prunings have happened by ``step`` (0 in the dense training)."""
        return bisect.bisect_right(self._starts or (), step)

    def sparsity_at(self, step: int, layer: Layer) -> float:
        return round_sparsity(self.targets[layer.name], self.round_at(step), self.config.rounds)

    def on_attach(self) -> None:
        # The masks start all kept (the first training is dense). The rewind point starts as
        # the initialization: it is the rewind point when k = 0, and a placeholder of the same
        # keys (replaced at step k) otherwise, so every checkpoint holds the same entries.
        if self.model is None:
            raise RuntimeError("IMP rewinds the whole model: attach it with sparsify().")
        self._rewind = {name: value.detach().clone()
                        for name, value in self._rewound_tensors().items()}

    def on_step(self, step: int) -> None:
        if self._starts is None:
            raise RuntimeError("IMP does not know the run's length: call "
                               "Sparsifier.plan_rounds(total_steps) once before training "
                               "(sparsebench.train does).")
        if step == self.config.rewind_step:
            self._remember()
        if step in self._starts:
            self.prune(step)
            self.rewind()

    def updates_at(self, step: int) -> bool:
        return step == self.config.rewind_step or step in (self._starts or ())

    def sparse_step_allowed(self, step: int) -> bool:
        # The pruned rounds ("drop": pruned weights zero, no gradient); the first is dense.
        return self._starts is not None and self.round_at(step - 1) >= 1

    @torch.no_grad()
    def prune(self, step: int) -> None:
        """Prunes to the sparsity of the round starting at ``step``: the smallest |w| among the
        weights still kept, ``round(s_r·n)`` zeros per layer (or over all layers together)."""
        if self.config.ranking == "layer":
            self.update_masks(step)  # "drop": pruned weights rank lowest and stay pruned
            return
        ranked = self._ranked()
        if not ranked:
            return
        sizes = [layer.numel for _, layer in ranked]
        target = round_sparsity(self._overall_target(ranked), self.round_at(step),
                                self.config.rounds)
        zeros = exact_zero_count(target, sum(sizes))
        scores = torch.cat([
            self.score(i, layer).float().flatten()
                .masked_fill(~layer.parametrization.mask.flatten(), float("-inf"))
            for i, layer in ranked])
        order = torch.sort(scores, stable=True).indices  # ties: the earlier layer and position
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[order[:zeros]] = False
        for (_, layer), part in zip(ranked, keep.split(sizes), strict=True):
            layer.parametrization.mask.copy_(part.view(layer.shape))
            layer.original.mul_(layer.parametrization.mask)

    @torch.no_grad()
    def rewind(self) -> None:
        """Sets every parameter and buffer back to the rewind point, the pruned weights zero."""
        live = self._rewound_tensors()
        for name, value in self._rewind.items():
            live[name].copy_(value)
        for layer in self.layers:
            layer.original.mul_(layer.parametrization.mask)

    # -- the rewind point ----------------------------------------------------------------------
    def _rewound_tensors(self) -> dict[str, torch.Tensor]:
        """Returns the model's parameters (a tied one once) and buffers, masks left out (they
        are the pruning's, and only shrink)."""
        masks = {id(layer.parametrization.mask) for layer in self.layers}
        tensors: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        tensors.update((name, buffer) for name, buffer in self.model.named_buffers()
                       if id(buffer) not in masks)
        return tensors

    @torch.no_grad()
    def _remember(self) -> None:
        for name, value in self._rewound_tensors().items():
            self._rewind[name].copy_(value)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"rewind.{name}": value for name, value in self._rewind.items()}

    @torch.no_grad()
    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in self._rewind.items():
            value.copy_(state[f"rewind.{name}"])
