"""Turn a finalized sparse model into one that runs its sparse layers with sparse kernels.

``plan_sparse`` decides per layer, from the performance model, whether the sparse kernel is
faster than dense at every batch size the caller expects; ``compile_sparse`` applies a plan to a
deep copy of the model. Layers whose kernel would not win by ``min_speedup`` stay dense, so the
compiled model is never slower than dense at any sparsity for the hinted batches. New layer
kinds (Conv2d, block-sparse Linear) plug in as another entry of ``_CONVERTERS``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.inference.perf_model import PerformanceModel
from sparsebench.inference.sparse_linear import SparseLinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDecision:
    """The choice for one layer and the numbers behind it.

    ``predicted_speedup`` maps each hinted batch size to dense time / sparse time;
    ``break_even_density`` is the density below which sparse wins by ``min_speedup`` at the
    least favourable hinted batch.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    density: float
    predicted_speedup: dict[int, float]
    break_even_density: float
    use_sparse: bool
    reason: str

    def row(self) -> str:
        """Return a one-line, human-readable summary of the decision."""
        speed = " ".join(f"b{b}:{s:.2f}x" for b, s in sorted(self.predicted_speedup.items()))
        choice = "sparse" if self.use_sparse else "dense"
        return (
            f"{self.name:<32} {self.kind:<7} {'x'.join(map(str, self.shape)):<11} "
            f"density={self.density:.3f} break-even={self.break_even_density:.3f} "
            f"{speed} -> {choice} ({self.reason})"
        )


def _batches(batch_hint: int | Sequence[int]) -> tuple[int, ...]:
    batches = (batch_hint,) if isinstance(batch_hint, int) else tuple(batch_hint)
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batch_hint must be a positive int or a list of them, got {batch_hint!r}")
    return batches


def _decide_linear(
    name: str,
    layer: nn.Linear,
    batches: tuple[int, ...],
    min_speedup: float,
    model: PerformanceModel,
) -> LayerDecision:
    w = layer.weight.detach()
    out_f, in_f = w.shape
    density = float((w != 0).sum()) / max(w.numel(), 1)
    shape = (out_f, in_f)
    if w.dtype != torch.float32 or w.device.type != "cpu":
        return LayerDecision(name, "Linear", shape, density, {}, 0.0, False, "not float32 on CPU")
    cals = [model.calibrate(out_f, in_f, b) for b in batches]
    speedups = {b: c.speedup(density) for b, c in zip(batches, cals, strict=True)}
    break_even = min(c.break_even_density(min_speedup) for c in cals)
    worst = min(speedups.values())
    use = worst >= min_speedup
    reason = f"worst predicted {worst:.2f}x {'>=' if use else '<'} min_speedup {min_speedup:g}"
    return LayerDecision(name, "Linear", shape, density, speedups, break_even, use, reason)


Decider = Callable[[str, nn.Module, tuple[int, ...], float, PerformanceModel], LayerDecision]
Converter = Callable[[nn.Module], nn.Module]
# Layer type → (decide, convert). Conv2d and block formats register here when they land.
_CONVERTERS: dict[type[nn.Module], tuple[Decider, Converter]] = {
    nn.Linear: (_decide_linear, SparseLinear.from_linear),  # type: ignore[dict-item]
}


def plan_sparse(
    model: nn.Module,
    *,
    batch_hint: int | Sequence[int] = 1,
    min_speedup: float = 1.1,
    perf_model: PerformanceModel | None = None,
) -> list[LayerDecision]:
    """Decide, per supported layer, whether its sparse kernel beats dense on this machine.

    Args:
        model: a finalized model (pruned weights are exact zeros).
        batch_hint: the batch size(s) the model will run at; for inputs ``(batch, seq, in)``
            pass ``batch * seq``, the rows a Linear sees. Sparse is chosen only if it wins at
            every hinted batch.
        min_speedup: predicted dense/sparse time a layer must reach to go sparse; the margin
            above 1 absorbs calibration noise so no layer ends up slower than dense.
        perf_model: the calibration cache to use (default: this machine's cache file).

    Returns:
        One ``LayerDecision`` per supported layer, in ``named_modules`` order.
    """
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    batches = _batches(batch_hint)
    pm = perf_model if perf_model is not None else PerformanceModel()
    decisions = []
    for name, module in model.named_modules():
        entry = _CONVERTERS.get(type(module))
        if entry is not None:
            decisions.append(entry[0](name, module, batches, min_speedup, pm))
    return decisions


def compile_sparse(
    model: nn.Module,
    *,
    batch_hint: int | Sequence[int] = 1,
    min_speedup: float = 1.1,
    perf_model: PerformanceModel | None = None,
    plan: Sequence[LayerDecision] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose layers run sparse kernels where that is faster.

    Each supported layer (``nn.Linear`` today) chosen by ``plan_sparse`` becomes a
    ``SparseLinear`` with the same outputs (within float rounding); the rest stays as it was.
    The input model is not modified. The copy is put in eval mode: sparse layers are
    inference-only.

    Args:
        model, batch_hint, min_speedup, perf_model: as for ``plan_sparse``.
        plan: a plan from ``plan_sparse`` to apply instead of planning again.

    Returns:
        The compiled copy of the model.
    """
    decisions = (
        list(plan)
        if plan is not None
        else plan_sparse(
            model, batch_hint=batch_hint, min_speedup=min_speedup, perf_model=perf_model
        )
    )
    compiled = copy.deepcopy(model).eval()
    for d in decisions:
        log.info("compile_sparse: %s", d.row())
        if not d.use_sparse:
            continue
        parent_name, _, child = d.name.rpartition(".")
        parent = compiled.get_submodule(parent_name)
        layer = parent.get_submodule(child) if child else compiled
        convert = _CONVERTERS[type(layer)][1]
        if not child:  # the model itself is a single supported layer
            return convert(layer)
        setattr(parent, child, convert(layer))
    return compiled
