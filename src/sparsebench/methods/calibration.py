"""Calibration for one-shot pruning: run the calibration batches through a model and turn one
layer's inputs into the statistic a technique needs.

A forward pre-hook on the layer turns its input into the rows of the (N, in) matrix X its
(out, in) weight multiplies: a Linear's input rows (tokens of a sequence are rows), an im2col
unfold of a convolution's input into (in·kh·kw) columns, in the order of
``weight.reshape(out, -1)``; transformers' Conv1D as the Linear it is. Each forward stops once
the layer has been called as many times as on the first batch: the rest of the model cannot
change what the layer saw.

BatchNorm normalizes each calibration batch by its own statistics (``batch_statistics``), not by
the running ones: those are the dense model's and no longer fit once the layers before it are
pruned (a pruned model with BatchNorm needs them estimated again anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layer_kinds import is_transposed_linear
from .base import Layer

__all__ = ["CalibrationRunner", "Hessian", "SquaredNorms", "batch_statistics",
           "calibration_batches", "calibration_module", "input_rows"]

Forward = Callable[[nn.Module, Any], Any]


class SquaredNorms:
    """Σ_n X[n, j]² per input column j: Wanda's ‖X_j‖₂² (its scale does not matter, since Wanda
    compares weights within one output row)."""

    def __init__(self, columns: int, dtype: torch.dtype, device: torch.device):
        self.total = torch.zeros(columns, dtype=dtype, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        self.total += (x * x).sum(dim=0)
        self.rows += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.total


class Hessian:
    """H = (2/N)·XᵀX over the N input rows: the Hessian of the layer's squared reconstruction
    error ‖WXᵀ − ŴXᵀ‖² / N with respect to each weight row (SparseGPT §3, "H = 2XXᵀ" in its
    (in, N) notation)."""

    def __init__(self, columns: int, dtype: torch.dtype, device: torch.device):
        self.total = torch.zeros(columns, columns, dtype=dtype, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        self.total.addmm_(x.t(), x)
        self.rows += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.total * (2.0 / max(self.rows, 1))


def calibration_module(layer: Layer, model: nn.Module) -> nn.Module:
    """Returns the module whose input X ``layer``'s (out, in) weight multiplies, the input
    one-shot pruning calibrates on: the layer's own module for a Linear, Conv1d, Conv2d or
    Conv1D weight. An embedding whose weight the model also reads as a linear map (a tied
    output projection: an nn.Linear holding the same Parameter, as a Hugging Face ``lm_head``,
    or a module whose ``tied_weight_module`` is the embedding, as the Transformer's
    ``TiedProjection``) is calibrated on that projection's input: its lookup use has no input
    to reconstruct, and the (vocabulary, width) weight is the projection's (out, in).

    Raises:
        ValueError: one sentence for a weight whose input the hooks cannot turn into X:
            an embedding read by no projection or by several, attention's packed input
            projection, other tied weights (two uses, two inputs) and convolutions with
            groups, non-zero padding modes or string padding.
    """
    module = layer.module
    if isinstance(module, nn.Embedding) and layer.attr == "weight":
        projections = [m for _, m, attr in layer.tied if attr == "weight"
                       and isinstance(m, nn.Linear)]
        projections += [m for m in model.modules()
                        if getattr(m, "tied_weight_module", None) is module]
        others = [name for name, m, _ in layer.tied if not isinstance(m, nn.Linear)]
        if len(projections) == 1 and not others:
            return projections[0]
        raise ValueError(f"{layer.name} is an embedding (a lookup) read as a linear map by "
                         f"{len(projections)} projections, so one-shot pruning has no one input "
                         f"to calibrate it on; exclude it.")
    if layer.tied:
        raise ValueError(f"{layer.name} is tied to {layer.tied[0][0]}.{layer.tied[0][2]}: its uses "
                         f"see different inputs, so one-shot pruning refuses it; exclude it.")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding,
                                                                               str):
            raise ValueError(f"{layer.name}: one-shot pruning supports convolutions with "
                             f"groups=1, zero padding given as numbers; exclude this layer.")
        return module
    if layer.attr != "weight" or not (isinstance(module, nn.Linear)
                                      or is_transposed_linear(module)):
        raise ValueError(f"{layer.name} ({type(module).__name__}) has no input one-shot pruning "
                         f"can calibrate on (only Linear, Conv1d, Conv2d and Conv1D weights, and "
                         f"embeddings tied to one output projection); exclude it.")
    return module


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Returns the (N, in) rows X that ``module``'s (out, in) weight view multiplies."""
    if isinstance(module, nn.Conv2d):
        x = x if x.dim() == 4 else x.unsqueeze(0)
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B·L, in·kh·kw)
    if isinstance(module, nn.Conv1d):
        x = (x if x.dim() == 3 else x.unsqueeze(0)).unsqueeze(2)  # (B, C, 1, L)
        cols = F.unfold(x, (1, module.kernel_size[0]), (1, module.dilation[0]),
                        (0, module.padding[0]), (1, module.stride[0]))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """While inside, every BatchNorm of ``model`` normalizes a batch by that batch's mean and
    variance and leaves its running statistics (and ``num_batches_tracked``) untouched.

    Calibration needs it: a layer's inputs come from the already-pruned layers before it, whose
    outputs the dense model's running statistics no longer fit (on the study's ResNet-50 shape
    at 50%, channels shift by a factor of 0.4 to 3), while the pruned model is evaluated only
    after its statistics are estimated again; Wanda's norms and SparseGPT's Hessian taken
    through stale statistics describe inputs the final model never sees. A batch must then
    hold more than one value per channel (PyTorch refuses a single one).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    try:
        for m in norms:
            m.training, m.track_running_stats = True, False  # batch statistics, no update
        yield
    finally:
        for m, (training, track) in zip(norms, saved, strict=True):
            m.training, m.track_running_stats = training, track


def calibration_batches(calibration: Iterable[Any] | None, needed: bool) -> list[Any]:
    """Returns the calibration batches as a list (they are run once per layer)."""
    if calibration is None and not needed:
        return []
    if isinstance(calibration, torch.Tensor) or not isinstance(calibration, Iterable):
        raise ValueError(f"calibration must be an iterable of batches, got "
                         f"{type(calibration).__name__}; wrap a single batch in a list: [x].")
    batches = list(calibration)
    if needed and not batches:
        raise ValueError("The calibration set is empty; pass at least one batch of inputs.")
    return batches


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class _Stop(Exception):
    """Raised by a hook once its layer has seen this batch: the rest of the forward is waste."""


class CalibrationRunner:
    """Runs calibration batches through the model with one hook at a time."""

    def __init__(self, model: nn.Module, batches: list[Any], forward: Forward | None = None):
        self.model, self.batches = model, batches
        self.forward = forward or _default_forward

    def run(self, index: int) -> None:
        try:
            self.forward(self.model, self.batches[index])
        except _Stop:
            pass
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"Calibration batch {index} could not be run through the model "
                f"({type(error).__name__}: {reason}); pass batches the model accepts (a tensor, "
                f"a tuple of its arguments or a dict of keyword arguments) or "
                f"forward=callable(model, batch).") from error

    def order(self, layers: list[Layer], modules: Mapping[str, nn.Module]
              ) -> tuple[list[Layer], dict[int, int]]:
        """Returns the layers in the order the first batch calls their calibration modules
        (``modules``, by layer name; layers it never calls last) and how many times it calls
        each module."""
        first: dict[int, int] = {}
        calls: dict[int, int] = {}

        def hook(module, args):
            first.setdefault(id(module), len(first))
            calls[id(module)] = calls.get(id(module), 0) + 1

        handles = [m.register_forward_pre_hook(hook)
                   for m in {id(m): m for m in modules.values()}.values()]
        try:
            self.run(0)
        finally:
            for handle in handles:
                handle.remove()
        ordered = sorted(layers, key=lambda la: first.get(id(modules[la.name]), len(first)))
        return ordered, calls

    def capture(self, module: nn.Module, statistic: SquaredNorms | Hessian, calls: int) -> None:
        """Adds every calibration row ``module`` sees to ``statistic``; stops each forward after
        the module's last call (as many as the first batch made)."""
        seen = 0

        def hook(module, args):
            nonlocal seen
            x = args[0].detach().to(statistic.total.device, statistic.total.dtype)
            statistic.add(input_rows(module, x))
            seen += 1
            if seen == calls:
                raise _Stop

        handle = module.register_forward_pre_hook(hook)
        try:
            for index in range(len(self.batches)):
                seen = 0
                self.run(index)
        finally:
            handle.remove()
