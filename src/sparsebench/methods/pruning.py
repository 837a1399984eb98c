"""What magnitude and random pruning share: a binary mask per weight, the gradual schedule, and
an exact per-layer zero count. The two differ only in the score that ranks weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..blocks import BLOCK_SCORES, block_keep, block_scores, check_block, expand_blocks
from ..nm import as_matrix, check_nm, check_nm_width, from_matrix, nm_mask, nm_sparsity
from ..schedules import GradualSchedule, exact_zero_count
from .base import Layer, Method, MethodConfig, WeightParametrization

__all__ = ["MaskParametrization", "PRUNED_WEIGHT_MODES", "PruningConfig", "PruningMethod"]

#: What happens to weights outside the mask during training.
#:  "update": the study's description — the forward pass uses w·mask but every weight keeps
#:            receiving the full gradient (straight-through), so a masked weight can grow back
#:            when the mask is recomputed.
#:  "keep":   TF model_pruning's behaviour — masked weights get zero gradient but keep their
#:            values, so they can come back only if kept weights shrink below them.
#:  "drop":   masked weights are set to zero, get no gradient and stay pruned for good.
PRUNED_WEIGHT_MODES = ("update", "keep", "drop")


class _StraightThroughMask(torch.autograd.Function):
    """Forward ``w * mask``; backward passes the gradient to every weight, masked or not."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class MaskParametrization(WeightParametrization):
    """Holds a boolean ``mask`` buffer (in the state_dict) and applies it in the forward pass."""

    def __init__(self, shape: tuple[int, ...], pruned_weights: str,
                 device: torch.device | str | None = None):
        super().__init__()
        # On the weight's device: a model sparsified after .cuda() must not get CPU masks.
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))
        self.straight_through = pruned_weights == "update"

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # Multiplying by a bool tensor takes torch's slow type-promotion path (about 20x a
        # float multiply on a 1024x1024 weight); its uint8 view promotes cheaply.
        mask = self.mask.view(torch.uint8)
        if self.straight_through and original.requires_grad:
            return _StraightThroughMask.apply(original, mask)
        return original * mask

    def keep_mask(self, original: torch.Tensor) -> torch.Tensor:
        return self.mask


@dataclass(frozen=True)
class PruningConfig(MethodConfig):
    """Options shared by the pruning methods.

    Attributes:
        pruned_weights: ``"update"`` (default, straight-through gradient, masked weights may
            regrow), ``"keep"`` (zero gradient, values kept, may return) or ``"drop"`` (zeroed,
            never return). See ``PRUNED_WEIGHT_MODES``.
        block: ``(bh, bw)``: prune whole blocks of the weight's matrix view (see
            ``sparsebench.blocks``); the target then counts blocks, ``round(s · blocks)`` of
            them zero. ``(1, 1)`` is unstructured pruning.
        block_score: how a block is ranked: ``"l2"`` (norm of its scores, default) or
            ``"mean_abs"`` (their mean).
        nm: ``(N, M)``: N:M structured sparsity (see ``sparsebench.nm``), N weights kept in
            every group of M consecutive inputs, ranked by the method's score. It fixes every
            layer's sparsity at 1 − N/M: the target must be that value (any other is refused,
            not ignored, so a run never reports a target it did not prune to). Under a
            gradual schedule each group prunes ``round(s_t·M)`` of its weights (at most M − N),
            so intermediate sparsities move in steps of 1/M. Not combined with ``block``.
    """

    pruned_weights: str = "update"
    block: tuple[int, int] = (1, 1)
    block_score: str = "l2"
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._require(
            self.pruned_weights in PRUNED_WEIGHT_MODES, "pruned_weights",
            f"one of {list(PRUNED_WEIGHT_MODES)}",
        )
        block = self.block
        valid = (isinstance(block, (tuple, list)) and len(block) == 2
                 and all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                         for b in block))
        self._require(valid, "block", "two positive integers (rows, columns)")
        object.__setattr__(self, "block", tuple(block))  # YAML and JSON give lists
        self._require(self.block_score in BLOCK_SCORES, "block_score",
                      f"one of {list(BLOCK_SCORES)}")
        if self.nm is not None:
            nm = check_nm(self.nm, f"{type(self).__name__}.nm")
            object.__setattr__(self, "nm", nm)  # YAML and JSON give lists
            self._require(self.block == (1, 1), "block",
                          "(1, 1) when nm is set (N:M groups and blocks are two structures)")


class PruningMethod(Method):
    """Masks recomputed at the schedule's update steps so each layer holds exactly
    ``round(s·n)`` zeros, ranking by ``score()``; the lowest scores are pruned, ties broken by
    position (a stable sort), so the masks are deterministic."""

    uses_sparsity_target: ClassVar[bool] = True

    def __init__(
        self,
        config: PruningConfig,
        layers: list[Layer],
        targets: dict[str, float],
        schedule: GradualSchedule | None = None,
    ):
        super().__init__(config, layers, targets)
        self.schedule = schedule
        self.fixed = False
        if config.block != (1, 1):
            for layer in layers:  # before any parametrization is attached
                check_block(layer.name, layer.shape, self._block_of(layer))
        if config.nm is not None:
            self._check_nm_targets()

    def _check_nm_targets(self) -> None:
        """Refuses layers N:M cannot hold: a width not a multiple of M, or a target other
        than the 1 − N/M that N:M fixes."""
        nm = self.config.nm
        fixed = nm_sparsity(nm)
        for layer in self.layers:
            check_nm_width(layer.name, layer.shape, nm, layer.transposed)
            target = self.targets[layer.name]
            if abs(target - fixed) > 1e-9:
                raise ValueError(f"nm={nm} fixes every layer's sparsity at {fixed:g}, but layer "
                                 f"{layer.name} has target {target:g}; pass sparsity={fixed:g} "
                                 f"and no other layer_sparsity.")

    def score(self, index: int, layer: Layer) -> torch.Tensor:
        """Returns a tensor of ``layer.shape``: higher scores are kept."""
        raise NotImplementedError

    def make_parametrization(self, layer: Layer) -> MaskParametrization:
        weight = getattr(layer.module, layer.attr)
        return MaskParametrization(layer.shape, self.config.pruned_weights, weight.device)

    def sparsity_at(self, step: int, layer: Layer) -> float:
        """Returns the layer's scheduled sparsity at ``step`` (its target when unscheduled)."""
        target = self.targets[layer.name]
        return target if self.schedule is None else self.schedule.sparsity_at(step, target)

    def on_attach(self) -> None:
        self.update_masks(0)

    def updates_at(self, step: int) -> bool:
        return not self.fixed and self.schedule is not None and self.schedule.is_update_step(step)

    def sparse_step_allowed(self, step: int) -> bool:
        # Fixed masks (retraining, no schedule) and "drop" (pruned weights are zero and rank
        # lowest at every update) never need the pruned weights. With "update" or "keep" the
        # pruned weights move in the dense path and may come back at a later update, so only
        # the steps after the schedule's last update can run sparse.
        if self.fixed or self.schedule is None or self.config.pruned_weights == "drop":
            return True
        return step > self.schedule.end_step

    def on_step(self, step: int) -> None:
        if not self.fixed and self.schedule is not None and self.schedule.is_update_step(step):
            self.update_masks(step)

    @torch.no_grad()
    def fix_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Installs given masks and stops updating them (retraining a found sparse
        architecture: scratch, lottery). The pruned weights are set to zero; unless
        ``pruned_weights="update"``, they also get no gradient and stay zero.

        Raises:
            ValueError: when the names or shapes do not match the sparsified weights.
        """
        names = {layer.name for layer in self.layers}
        if set(masks) != names:
            raise ValueError(f"The masks name {sorted(set(masks) ^ names)[:5]} which do not "
                             f"match the sparsified weights.")
        for layer in self.layers:
            mask = masks[layer.name]
            if tuple(mask.shape) != layer.shape:
                raise ValueError(f"Mask {layer.name} has shape {tuple(mask.shape)}, "
                                 f"the weight {layer.shape}.")
            layer.parametrization.mask.copy_(mask.to(torch.bool))
            layer.original.mul_(layer.parametrization.mask)
        self.fixed = True

    def _block_of(self, layer: Layer) -> tuple[int, int]:
        """Returns the block as laid on the stored weight: ``(bh, bw)`` spans bh outputs and
        bw inputs, so a weight stored (in, out) (transformers' Conv1D) takes it turned."""
        block = self.config.block
        return (block[1], block[0]) if layer.transposed else block

    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        """Recomputes every layer's mask for the sparsity scheduled at ``step``."""
        drop = self.config.pruned_weights == "drop"
        for index, layer in enumerate(self.layers):
            block = self._block_of(layer)
            parametrization = layer.parametrization
            scores = self.score(index, layer).float()
            kept_before = parametrization.mask
            if block != (1, 1):
                scores = block_scores(scores, block, "l2" if self.config.block_score == "l2"
                                      else "mean")
                kept_before = block_keep(parametrization.mask, block)
            if drop:
                # Already-pruned weights (or blocks) rank lowest, so they stay pruned.
                scores = scores.masked_fill(~kept_before, float("-inf"))
            if self.config.nm is not None:
                self._update_nm_mask(layer, scores, step)
                continue
            zeros = exact_zero_count(self.sparsity_at(step, layer), scores.numel())
            order = torch.sort(scores.flatten(), stable=True).indices
            mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
            mask[order[:zeros]] = False
            mask = mask.view(scores.shape)
            if block != (1, 1):
                mask = expand_blocks(mask, layer.shape, block)
            parametrization.mask.copy_(mask.view(layer.shape))
            if drop:
                layer.original.mul_(parametrization.mask)

    def _update_nm_mask(self, layer: Layer, scores: torch.Tensor, step: int) -> None:
        """Sets ``layer``'s mask to N:M over its (out, in) view, ``round(s_t·M)`` pruned in
        every group of M (M − N at the target)."""
        m = self.config.nm[1]
        pruned = exact_zero_count(self.sparsity_at(step, layer), m)
        keep = nm_mask(as_matrix(scores, layer.transposed), self.config.nm, pruned)
        layer.parametrization.mask.copy_(from_matrix(keep, layer.shape, layer.transposed))
        if self.config.pruned_weights == "drop":
            layer.original.mul_(layer.parametrization.mask)

    def block_sparsity(self) -> dict[str, float]:
        """Returns each layer's fraction of zero blocks (of weights when unstructured)."""
        result = {}
        for layer in self.layers:
            kept = block_keep(layer.parametrization.mask, self._block_of(layer))
            result[layer.name] = 1.0 - int(torch.count_nonzero(kept)) / kept.numel()
        return result
