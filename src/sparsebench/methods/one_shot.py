"""One-shot post-training pruning: prune a trained model once, from a few calibration batches,
without training (magnitude, Wanda, SparseGPT), and optionally fine-tune it with the mask fixed.

Layers are pruned one at a time in the order the model runs them, as both papers do: before a
layer is pruned the calibration batches run through the model once more, so the layer's input
statistics are those of the already-pruned layers before it (Frantar & Alistarh 2023, §3.1;
Sun et al. 2023, §3); ``calibration`` captures those inputs. An embedding tied to an output
projection (selected with ``include``, as the translation study prunes its shared embedding /
softmax matrix) is calibrated on the projection's input, so it is pruned when the projection
runs, last in a decoder: the layers before it were calibrated on its dense lookups, which its
pruning (and SparseGPT's update of its kept weights) then changes.

The techniques are catalogue entries of role ``ONE_SHOT``; each is a ``OneShotPruner`` (this
module's ``OneShotMagnitude``, ``wanda.Wanda``, ``sparsegpt.SparseGPT``) that declares which input
statistic it needs and turns (weight, statistic, target) into a pruned weight and its mask.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..distributions import LayerSparsity, resolve_layer_sparsity
from ..nm import as_matrix, check_nm, check_nm_width, from_matrix, nm_mask, nm_sparsity
from ..schedules import exact_zero_count
from ..sparsify import select_layers, sparsify
from . import catalogue
from .base import Layer, MethodConfig
from .calibration import (
    CalibrationRunner,
    Forward,
    Hessian,
    SquaredNorms,
    batch_statistics,
    calibration_batches,
    calibration_module,
)
from .magnitude import MagnitudeConfig

__all__ = ["OneShotConfig", "OneShotLayer", "OneShotMagnitude", "OneShotPruner",
           "OneShotReport", "fine_tune", "prune_lowest", "prune_one_shot", "spread_zeros"]


# -- exact zero counts --------------------------------------------------------------------------
def spread_zeros(sparsity: float, group_size: int, groups: int) -> torch.Tensor:
    """Returns how many weights each of ``groups`` equal groups prunes so that together they
    prune exactly ``round(s·n)`` (``exact_zero_count``): group g prunes
    ``round(s·(g+1)·size) − round(s·g·size)``, within one of ``s·size``. Wanda's rows share a
    layer's zeros so, and SparseGPT's mask blocks alike, so a layer's achieved sparsity is its
    target even when ``s·size`` is not whole."""
    ends = [exact_zero_count(sparsity, group_size * g) for g in range(groups + 1)]
    return torch.tensor([b - a for a, b in itertools.pairwise(ends)], dtype=torch.long)


def prune_lowest(scores: torch.Tensor, zeros: torch.Tensor | int) -> torch.Tensor:
    """Returns the keep-mask of the (rows, cols) ``scores`` that prunes the ``zeros[r]`` lowest
    scores of each row r (ties to the earlier position, a stable sort, as ``PruningMethod``)."""
    rows, cols = scores.shape
    zeros = torch.as_tensor(zeros, device=scores.device).reshape(-1, 1).expand(rows, 1)
    order = torch.sort(scores, dim=1, stable=True).indices
    ranked_keep = torch.arange(cols, device=scores.device).expand(rows, cols) >= zeros
    return torch.empty_like(ranked_keep).scatter_(1, order, ranked_keep)


# -- the pruner protocol --------------------------------------------------------------------------
@dataclass(frozen=True)
class OneShotConfig(MethodConfig):
    """A one-shot technique's own options; magnitude and Wanda have none."""


class OneShotPruner:
    """One one-shot technique: which input statistic it needs (None: no calibration data) and
    how it prunes one layer's (out, in) weight matrix to a target."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = OneShotConfig
    statistic: ClassVar[type[SquaredNorms] | type[Hessian] | None] = None

    def __init__(self, config: MethodConfig):
        self.config = config

    def prune(self, weight: torch.Tensor, statistic: torch.Tensor | None, sparsity: float,
              nm: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (pruned weight, keep-mask), both (out, in), for ``sparsity`` (1 − N/M under
        ``nm``); the weight is a float copy the pruner may change."""
        raise NotImplementedError


class OneShotMagnitude(OneShotPruner):
    """Keeps each layer's largest |w| (the layer-wise magnitude baseline of both papers); under
    N:M, the N largest of every group. Needs no calibration data."""

    name = "one-shot-magnitude"

    def prune(self, weight, statistic, sparsity, nm):
        scores = weight.abs()
        if nm is not None:
            keep = nm_mask(scores, nm)
        else:
            keep = prune_lowest(scores.reshape(1, -1),
                                exact_zero_count(sparsity, weight.numel())).view_as(weight)
        return weight * keep, keep


# -- the report ---------------------------------------------------------------------------------
@dataclass
class OneShotLayer:
    """One pruned weight: its target and achieved sparsity, the calibration rows its statistic
    came from (0 when the technique needs none) and the seconds spent on it."""

    name: str
    shape: tuple[int, ...]
    target: float
    sparsity: float
    rows: int
    seconds: float


@dataclass
class OneShotReport:
    """What ``prune_one_shot`` did: the technique, each layer in the order pruned, and the
    keep-masks (weight name -> bool tensor, for ``fine_tune`` or ``Sparsifier.fix_masks``)."""

    method: str
    nm: tuple[int, int] | None
    layers: list[OneShotLayer]
    masks: dict[str, torch.Tensor] = field(repr=False)
    seconds: float

    @property
    def sparsity(self) -> float:
        """Returns the achieved sparsity over the pruned weights (zeros / size)."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(sum(m.numel() for m in self.masks.values()), 1)

    def to_dict(self) -> dict[str, Any]:
        """Returns plain data (no masks) for a result file."""
        return {"method": self.method, "nm": self.nm, "sparsity": self.sparsity,
                "seconds": self.seconds, "layers": [vars(layer) for layer in self.layers]}


# -- checks --------------------------------------------------------------------------------------
def _targets(layers: list[Layer], sparsity: float | None, nm: tuple[int, int] | None,
             layer_sparsity: Any) -> dict[str, float]:
    """Returns each layer's target; under N:M, 1 − N/M for all (another target is refused)."""
    if nm is None:
        if sparsity is None:
            raise ValueError("One-shot pruning needs a target: pass sparsity=… in [0, 1) or "
                             "nm=(N, M).")
        spec = LayerSparsity.coerce(layer_sparsity)
        return resolve_layer_sparsity({la.name: (la.shape, la.aliases) for la in layers},
                                      sparsity, spec)
    fixed = nm_sparsity(nm)
    if layer_sparsity is not None or (sparsity is not None and abs(sparsity - fixed) > 1e-9):
        raise ValueError(f"nm={nm} fixes every layer's sparsity at {fixed:g}; pass no other "
                         f"sparsity (got sparsity={sparsity}, layer_sparsity={layer_sparsity}).")
    for layer in layers:
        check_nm_width(layer.name, layer.shape, nm, layer.transposed)
    return {layer.name: fixed for layer in layers}


# -- the entry ----------------------------------------------------------------------------------
@torch.no_grad()
def prune_one_shot(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    method: str,
    sparsity: float | None = None,
    *,
    nm: Sequence[int] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_sparsity: LayerSparsity | str | Mapping[str, float] | None = None,
    forward: Forward | None = None,
    **hparams: Any,
) -> OneShotReport:
    """Prunes a trained ``model`` in place, layer by layer, and returns what it did.

    Args:
        model: a plain (not sparsified) module; it runs in eval mode here and gets its mode back.
            Its BatchNorm layers normalize each calibration batch by the batch's own statistics
            and keep their running ones, which no longer fit the pruned weights: estimate them
            again before evaluating (the study does, over training batches).
        calibration: an iterable of batches (held in memory, run once per layer); each is passed
            as ``model(batch)``, ``model(*batch)`` for a tuple or ``model(**batch)`` for a dict,
            or to ``forward(model, batch)``. ``None`` is allowed for one-shot magnitude.
        method: ``"sparsegpt"``, ``"wanda"`` or ``"one-shot-magnitude"`` (``"omp"``): the
            catalogue's ``ONE_SHOT`` names.
        sparsity: each layer's target in [0, 1) (``layer_sparsity`` may share it otherwise, as in
            ``sparsify``); under ``nm`` omit it or pass 1 − N/M.
        nm: ``(N, M)``: keep N weights in every group of M consecutive inputs (``sparsebench.nm``).
        include, exclude: glob patterns as in ``select_layers`` (``include=["*"]`` takes an
            embedding too when a tied output projection reads its weight).
        forward: ``forward(model, batch)`` for models whose inputs a batch does not spell.
        **hparams: the technique's own options (SparseGPT: ``damping``, ``block_size``,
            ``mask_block_size``).

    Raises:
        ValueError: one sentence for an unknown method or option, a bad target or N:M, an empty
            calibration set, a batch the model cannot run, a model already sparsified, no
            sparsifiable layer, or a selected layer one-shot pruning cannot calibrate on.
    """
    technique = catalogue.get(method, role=catalogue.ONE_SHOT)
    pruner: OneShotPruner = technique.method_class(technique.parse_config(hparams))
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("The model is sparsified (parametrized); finalize() its Sparsifier "
                         "before one-shot pruning.")
    nm = None if nm is None else check_nm(nm)
    layers = select_layers(model, include, exclude)
    modules = {layer.name: calibration_module(layer, model) for layer in layers}
    targets = _targets(layers, sparsity, nm, layer_sparsity)
    batches = calibration_batches(calibration, needed=pruner.statistic is not None)
    runner = CalibrationRunner(model, batches, forward)

    started, was_training = time.perf_counter(), model.training
    model.eval()  # no dropout, as at inference; BatchNorm uses each batch's own statistics
    try:
        with batch_statistics(model):
            calls: dict[int, int] = {}
            if pruner.statistic is not None:
                layers, calls = runner.order(layers, modules)
            done, masks = [], {}
            for layer in layers:
                module = modules[layer.name]
                done.append(_prune_layer(layer, module, pruner, runner, targets[layer.name], nm,
                                         calls.get(id(module), 0), masks))
    finally:
        model.train(was_training)
    return OneShotReport(technique.name, nm, done, masks, time.perf_counter() - started)


def _prune_layer(layer: Layer, module: nn.Module, pruner: OneShotPruner,
                 runner: CalibrationRunner, target: float, nm: tuple[int, int] | None,
                 calls: int, masks: dict[str, torch.Tensor]) -> OneShotLayer:
    """Captures ``layer``'s statistic from its calibration ``module``'s inputs (after the
    earlier layers were pruned), prunes it in place and returns its report line; its mask goes
    into ``masks``."""
    started = time.perf_counter()
    weight = getattr(layer.module, layer.attr)
    dtype = torch.promote_types(weight.dtype, torch.float32)
    matrix = as_matrix(weight.detach(), layer.transposed).to(dtype).clone()
    value, rows = None, 0
    if pruner.statistic is not None:
        if calls == 0:
            raise ValueError(f"Layer {layer.name} is not called when the calibration batches "
                             f"run, so it has no input to calibrate on; exclude it.")
        statistic = pruner.statistic(matrix.shape[1], dtype, weight.device)
        runner.capture(module, statistic, calls)
        value, rows = statistic.value, statistic.rows
    try:
        pruned, keep = pruner.prune(matrix, value, target, nm)
    except ValueError as error:
        raise ValueError(f"Layer {layer.name}: {error}.") from None
    weight.copy_(from_matrix(pruned, layer.shape, layer.transposed).to(weight.dtype))
    mask = from_matrix(keep, layer.shape, layer.transposed)
    masks[layer.name] = mask
    return OneShotLayer(layer.name, layer.shape, target, 1.0 - int(mask.sum()) / mask.numel(),
                        rows, time.perf_counter() - started)


# -- optional fine-tuning -----------------------------------------------------------------------
def fine_tune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    data: Iterable[Any],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    steps: int,
    *,
    lr: float = 1e-4,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> list[float]:
    """Trains a one-shot-pruned ``model`` for ``steps`` steps with its masks fixed, then bakes
    them in, and returns each step's loss.

    The masks are fixed through magnitude pruning's own machinery (``fix_masks`` with
    ``pruned_weights="keep"``: pruned weights get no gradient and stay zero), so fine-tuning and
    the study's retraining share one mechanism. ``data`` is cycled; ``loss(model, batch)``
    returns a scalar; ``optimizer`` builds one from the parameters (default Adam at ``lr``).

    Raises:
        ValueError: for steps < 1, empty data, or masks that name no weight of the model.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    sparsifier = sparsify(model, MagnitudeConfig(pruned_weights="keep"), sparsity=0.0,
                          include=sorted(masks))
    sparsifier.fix_masks(dict(masks))
    opt = (optimizer or (lambda params: torch.optim.Adam(params, lr=lr)))(model.parameters())
    was_training, losses = model.training, []
    model.train()
    try:
        batches = itertools.cycle(data)
        for _ in range(steps):
            batch = next(batches, None)
            if batch is None:
                raise ValueError("fine_tune got no data; pass at least one batch.")
            value = loss(model, batch)
            opt.zero_grad()
            value.backward()
            opt.step()
            sparsifier.step()
            losses.append(float(value.detach()))
    finally:
        model.train(was_training)
        sparsifier.finalize()
    return losses
