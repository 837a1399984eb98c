"""Turn a finalized sparse model into one that runs its sparse layers with sparse kernels.

``plan_sparse`` decides per layer, from the performance model, whether the sparse kernel is
faster than dense at every batch size the caller expects; ``compile_sparse`` applies a plan to a
deep copy of the model. Layers whose kernel would not win by ``min_speedup`` stay dense, so the
compiled model is never slower than dense at any sparsity for the hinted batches. Layer kinds
plug in as entries of ``_CONVERTERS`` (Linear and Conv2d), plus transformers' Conv1D (a Linear
stored transposed) and projections by a tied embedding.

Formats: every layer is a CSR candidate. When a layer's zeros form whole blocks (the stored
blocks of a supported size are at least ``BLOCK_FILL`` full, e.g. from ``sparsify(...,
block=(16, 16))``), BSR with that block size is a candidate too, and the one the performance
model predicts fastest wins. Convolutions need their input size: pass ``example_input``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.inference.chains import chain_linears
from sparsebench.inference.fusion import (
    fuse_activations,
    fuse_relu,
    fuse_residual_norm,
    fuse_residual_relu,
)
from sparsebench.inference.glue import replace_glue, route_attention
from sparsebench.inference.perf_model import (
    Calibration,
    PerformanceModel,
    last_level_cache_bytes,
    stream_bandwidth,
)
from sparsebench.inference.sparse_conv import SparseConv2d, conv_unsupported_reason
from sparsebench.inference.sparse_linear import BLOCK_SIZES, SparseLinear, block_density
from sparsebench.layer_kinds import is_transposed_linear

#: Least fraction of nonzeros in the stored blocks for a block size to be a candidate.
BLOCK_FILL = 0.9
#: Predicted dense/sparse time a layer must reach to go sparse. The calibration times random
#: weights of the layer's shape, once, usually on a quieter machine than the one that runs the
#: model: measured against the compiled layer side by side (4096x1024, 1 and 2 threads, load
#: 3 on 2 cores), the prediction overstated the speed-up by up to 25% (1.45x predicted, 1.11x
#: measured at 50% sparsity). A layer near its break-even density therefore stays dense unless
#: the prediction clears it by 30%, so that an error of that size still leaves it no slower
#: than dense (issue 23).
MIN_SPEEDUP = 1.3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDecision:
    """The choice for one layer and the numbers behind it.

    ``predicted_speedup`` maps each hinted batch size to dense time / sparse time at the least
    favourable of the thread counts judged (``PerformanceModel.thread_counts``);
    ``break_even_density`` is the density below which sparse wins by ``min_speedup`` at the
    least favourable hinted batch and thread count.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    density: float
    predicted_speedup: dict[int, float]
    break_even_density: float
    use_sparse: bool
    reason: str
    block: tuple[int, int] = (1, 1)

    def row(self) -> str:
        """Return a one-line, human-readable summary of the decision."""
        speed = " ".join(f"b{b}:{s:.2f}x" for b, s in sorted(self.predicted_speedup.items()))
        fmt = "csr" if self.block == (1, 1) else f"bsr{self.block[0]}x{self.block[1]}"
        choice = fmt if self.use_sparse else "dense"
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


@dataclass
class _Context:
    batches: tuple[int, ...] | None  # None: the rows each layer saw in the example input
    min_speedup: float
    model: PerformanceModel
    input_shapes: dict[str, tuple[int, ...]]  # module name -> its input's shape in the example
    #: Bytes per second each layer's weights stream from memory at, where the model's weights
    #: do not fit the largest cache; None where they do.
    streamed: float | None = None
    cache: int = 0  # bytes of the largest cache

    def speedup(self, cal: Calibration, density: float, dense_bytes: int,
                sparse_bytes: int) -> float:
        """Predicted dense / sparse time for a layer: the calibration's, where the weights
        stay in cache. A calibration times each layer alone, its weight warm in the cache
        between calls; in a model whose weights outgrow the cache, every layer reads its
        weight from memory at each forward, so neither side can take less than its bytes
        over the bandwidth. A weight larger than the cache streamed in its calibration too
        and is taken as measured. GPT-2-small decoding one token (235 MB of weights) kept its 12
        attention output projections (768x768 at 90%) dense on a calibrated 1.06x, where
        each dense one then took 316 us in the model against a 2.4 MB read."""
        if self.streamed is None or dense_bytes > self.cache:
            return cal.speedup(density)  # no model streaming, or calibrated streaming already
        dense = max(cal.dense_s, dense_bytes / self.streamed)
        return dense / max(cal.sparse_time(density), sparse_bytes / self.streamed)

    def batches_for(self, name: str, kind: str) -> tuple[int, ...]:
        """The batches a layer is judged at: the hinted ones, else what it saw in the example
        input (a Linear's rows, all dimensions but the last; a convolution's images), else 1."""
        if self.batches is not None:
            return self.batches
        shape = self.input_shapes.get(name)
        if not shape:
            return (1,)
        if kind == "Conv2d":
            return (max(shape[0], 1),)
        return (max(math.prod(shape[:-1]), 1),)


def _block_candidates(matrix: torch.Tensor) -> list[tuple[tuple[int, int], float]]:
    """Return ``[(block, density of nonzero blocks)]``: CSR first, then full-enough blocks."""
    density = float((matrix != 0).sum()) / max(matrix.numel(), 1)
    found = [((1, 1), density)]
    for block in BLOCK_SIZES[1:]:
        if block[0] > matrix.shape[0] or block[1] > matrix.shape[1]:
            continue
        blocks, fill = block_density(matrix, block)
        if fill >= BLOCK_FILL:
            found.append((block, blocks))
    return found


def _choose(
    name: str,
    kind: str,
    shape: tuple[int, ...],
    matrix: torch.Tensor,
    ctx: _Context,
    calibrate: Callable[[int, tuple[int, int]], list[Calibration]],
) -> LayerDecision:
    """Pick the fastest of dense, CSR and fitting BSR formats by the performance model.

    ``calibrate(batch, block)`` returns the layer's calibrations at each thread count the
    model is judged at; a format counts at its least favourable batch and thread count.
    """
    density = float((matrix != 0).sum()) / max(matrix.numel(), 1)
    best: LayerDecision | None = None
    batches = ctx.batches_for(name, kind)
    for block, d in _block_candidates(matrix):
        cals = {b: calibrate(b, block) for b in batches}
        stored = _stored_bytes(matrix, block, d)
        speedups = {b: min(ctx.speedup(c, d, 4 * matrix.numel(), stored) for c in cals[b])
                    for b in batches}
        worst = min(speedups.values())
        if best is None or worst > min(best.predicted_speedup.values()):
            break_even = min(c.break_even_density(ctx.min_speedup)
                             for per_batch in cals.values() for c in per_batch)
            use = worst >= ctx.min_speedup
            fmt = "csr" if block == (1, 1) else f"bsr {block[0]}x{block[1]}"
            reason = f"{fmt}: worst predicted {worst:.2f}x {'>=' if use else '<'} min_speedup"
            reason += f" {ctx.min_speedup:g}"
            if ctx.streamed is not None and 4 * matrix.numel() <= ctx.cache:
                reason += ", weights streamed from memory"
            best = LayerDecision(
                name, kind, shape, density, speedups, break_even, use, reason, block
            )
    assert best is not None  # CSR is always a candidate
    return best


def _decide_matrix(name: str, kind: str, w: torch.Tensor, ctx: _Context) -> LayerDecision:
    """Decides for a weight used as ``x @ w.T`` (``w`` is (out, in))."""
    w = w.detach()
    out_f, in_f = w.shape
    if w.dtype != torch.float32 or w.device.type != "cpu":
        density = float((w != 0).sum()) / max(w.numel(), 1)
        return LayerDecision(
            name, kind, (out_f, in_f), density, {}, 0.0, False, "not float32 on CPU"
        )
    return _choose(
        name,
        kind,
        (out_f, in_f),
        w,
        ctx,
        lambda b, block: ctx.model.calibrations(out_f, in_f, b, block),
    )


def _decide_linear(name: str, layer: nn.Linear, ctx: _Context) -> LayerDecision:
    return _decide_matrix(name, "Linear", layer.weight, ctx)


def _decide_transposed(name: str, layer: nn.Module, ctx: _Context) -> LayerDecision:
    # transformers' Conv1D stores its weight (in, out): decided as the Linear it is.
    return _decide_matrix(name, "Conv1D", layer.weight.t(), ctx)


def _decide_conv(name: str, conv: nn.Conv2d, ctx: _Context) -> LayerDecision:
    w = conv.weight.detach()
    shape = tuple(w.shape)
    density = float((w != 0).sum()) / max(w.numel(), 1)
    if (why := conv_unsupported_reason(conv)) is not None:
        return LayerDecision(name, "Conv2d", shape, density, {}, 0.0, False, why)
    if len(ctx.input_shapes.get(name, ())) != 4:
        why = "input size unknown: pass example_input to size the convolution"
        return LayerDecision(name, "Conv2d", shape, density, {}, 0.0, False, why)
    hw = ctx.input_shapes[name][-2:]
    return _choose(
        name,
        "Conv2d",
        shape,
        w.reshape(w.shape[0], -1),
        ctx,
        lambda b, block: ctx.model.conv_calibrations(conv, (hw[0], hw[1]), b, block),
    )


Decider = Callable[[str, nn.Module, _Context], LayerDecision]
Converter = Callable[[nn.Module, tuple[int, int]], nn.Module]
# Layer type → (decide, convert with a block size).
_CONVERTERS: dict[type[nn.Module], tuple[Decider, Converter]] = {
    nn.Linear: (_decide_linear, SparseLinear.from_linear),  # type: ignore[dict-item]
    nn.Conv2d: (_decide_conv, SparseConv2d.from_conv),  # type: ignore[dict-item]
}


def _tied_to_sparse(layer: nn.Module, block: tuple[int, int]) -> SparseLinear:
    return SparseLinear.from_dense(layer.weight.detach(), None, block=block)


def _transposed_to_sparse(layer: nn.Module, block: tuple[int, int]) -> SparseLinear:
    return SparseLinear.from_dense(layer.weight.detach().t().contiguous(), layer.bias, block)


def _converter(module: nn.Module) -> tuple[Decider, Converter] | None:
    """Returns (decide, convert) for a supported layer, else None."""
    entry = _CONVERTERS.get(type(module))
    if entry is None and is_transposed_linear(module):
        return _decide_transposed, _transposed_to_sparse  # type: ignore[return-value]
    if entry is None and isinstance(getattr(module, "tied_weight_module", None), nn.Module):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            # A projection by another module's weight (a Transformer's output layer over its
            # shared embedding) is decided as a Linear without bias.
            return _decide_linear, _tied_to_sparse  # type: ignore[return-value]
    return entry


def _input_shapes(model: nn.Module, example_input: object) -> dict[str, tuple[int, ...]]:
    """Return the input shape of each supported layer at its first call in one forward of
    the example."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if _converter(module) is not None:

            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(name, tuple(args[0].shape))

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def plan_sparse(
    model: nn.Module,
    *,
    batch_hint: int | Sequence[int] | None = None,
    min_speedup: float = MIN_SPEEDUP,
    perf_model: PerformanceModel | None = None,
    example_input: object = None,
) -> list[LayerDecision]:
    """Decide, per supported layer, whether its sparse kernel beats dense on this machine.

    Args:
        model: a finalized model (pruned weights are exact zeros).
        batch_hint: the batch size(s) the model will run at; for inputs ``(batch, seq, in)``
            pass ``batch * seq``, the rows a Linear sees. Sparse is chosen only if it wins at
            every hinted batch. None (default): each layer is judged at what it sees in
            ``example_input`` (a Linear's rows, a convolution's images), or at 1 without one.
        min_speedup: predicted dense/sparse time a layer must reach to go sparse; the margin
            above 1 absorbs calibration noise so no layer ends up slower than dense.
        perf_model: the calibration cache to use (default: this machine's cache file).
        example_input: one input (or tuple of inputs) to run through the model once, to learn
            each convolution's input size; without it convolutions stay dense.

    Returns:
        One ``LayerDecision`` per supported layer, in ``named_modules`` order.
    """
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    pm = perf_model if perf_model is not None else PerformanceModel()
    shapes = {} if example_input is None else _input_shapes(model, example_input)
    ctx = _Context(None if batch_hint is None else _batches(batch_hint), min_speedup, pm, shapes)
    weights = sum(4 * m.weight.numel() for _, m in model.named_modules()
                  if _converter(m) is not None and isinstance(getattr(m, "weight", None),
                                                               torch.Tensor))
    cache = last_level_cache_bytes()
    if cache is not None and weights > cache:
        ctx.streamed, ctx.cache = stream_bandwidth(), cache
    decisions = []
    for name, module in model.named_modules():
        entry = _converter(module)
        if entry is not None:
            decisions.append(entry[0](name, module, ctx))
    return decisions


def compile_sparse(
    model: nn.Module,
    *,
    batch_hint: int | Sequence[int] | None = None,
    min_speedup: float = MIN_SPEEDUP,
    perf_model: PerformanceModel | None = None,
    plan: Sequence[LayerDecision] | None = None,
    example_input: object = None,
) -> nn.Module:
    """Return a copy of ``model`` whose layers run sparse kernels where that is faster.

    Each supported layer chosen by ``plan_sparse`` becomes a ``SparseLinear`` or
    ``SparseConv2d`` (CSR or BSR, as chosen) with the same outputs (within float rounding);
    the rest stays as it was.
    The input model is not modified. The copy is put in eval mode: sparse layers are
    inference-only. A ``ReLU`` that only a sparse convolution feeds is applied by that
    convolution's kernel (``fusion.fuse_relu``); fold BatchNorms first with
    ``fold_batchnorm`` to let the convolution feed its ReLU directly. A ReLU or GELU that only
    a sparse Linear feeds is applied by its kernel (``fusion.fuse_activations``), and a
    block's ``relu(conv(x) + shortcut)`` becomes one call of the sparse convolution
    (``fusion.fuse_residual_relu``), a post-norm Transformer's ``norm(linear(x) + r)`` one
    call of the sparse Linear (``fusion.fuse_residual_norm``). Max pooling and layer norm
    layers run faster
    equivalents (``glue.replace_glue``).

    Args:
        model, batch_hint, min_speedup, perf_model, example_input: as for ``plan_sparse``.
        plan: a plan from ``plan_sparse`` to apply instead of planning again.

    Returns:
        The compiled copy of the model.
    """
    decisions = (
        list(plan)
        if plan is not None
        else plan_sparse(
            model,
            batch_hint=batch_hint,
            min_speedup=min_speedup,
            perf_model=perf_model,
            example_input=example_input,
        )
    )
    compiled = copy.deepcopy(model).eval()
    for d in decisions:
        log.debug("compile_sparse: %s", d.row())
        if not d.use_sparse:
            continue
        parent_name, _, child = d.name.rpartition(".")
        parent = compiled.get_submodule(parent_name)
        layer = parent.get_submodule(child) if child else compiled
        convert = _converter(layer)[1]  # type: ignore[index]
        if not child:  # the model itself is a single supported layer
            return convert(layer, d.block)
        setattr(parent, child, convert(layer, d.block))
    if (fused := fuse_relu(compiled)) > 0:
        log.info("compile_sparse: %d ReLUs applied by the sparse convolutions before them", fused)
    if (fused := fuse_activations(compiled)) > 0:
        log.info("compile_sparse: %d activations applied by the sparse Linears before them", fused)
    if (fused := fuse_residual_relu(compiled)) > 0:
        log.info("compile_sparse: %d residual sums and ReLUs applied by sparse convolutions",
                 fused)
    if (swapped := replace_glue(compiled)) > 0:
        log.info("compile_sparse: %d pooling and layer norm layers replaced by faster "
                 "equivalents", swapped)
    if (fused := fuse_residual_norm(compiled)) > 0:
        log.info("compile_sparse: %d residual sums and layer norms applied by sparse Linears",
                 fused)
    if (routed := route_attention(compiled, example_input)) > 0:
        log.info("compile_sparse: %d attention modules run the attention kernel", routed)
    if (chained := chain_linears(compiled, example_input)) > 0:
        log.info("compile_sparse: %d pairs of sparse Linears computed in one call each", chained)
    return compiled


def _stored_bytes(matrix: torch.Tensor, block: tuple[int, int], block_frac: float) -> int:
    """Return the bytes of a matrix stored as CSR (``block=(1, 1)``) or BSR."""
    bh, bw = block
    block_rows, block_cols = -(-matrix.shape[0] // bh), -(-matrix.shape[1] // bw)
    n_blocks = round(block_frac * block_rows * block_cols)
    index = 2 if block_cols <= 32767 else 4
    return (block_rows + 1) * 4 + n_blocks * (index + 4 * bh * bw)


def compact_sparse(model: nn.Module) -> tuple[nn.Module, list[LayerDecision]]:
    """Return a copy of ``model`` whose layers are stored in whichever format is smallest.

    For export, where size rather than speed is the goal: each supported layer becomes CSR or
    BSR (when its zeros form whole blocks) if that takes fewer bytes than the dense weight,
    about density < 2/3 for CSR with int16 indices. No timing is involved.

    Returns:
        ``(compiled copy in eval mode, one decision per supported layer)``; a decision's
        ``predicted_speedup`` is empty and its reason gives the byte counts.
    """
    decisions = []
    for name, module in model.named_modules():
        if _converter(module) is None:
            continue
        w = module.weight.detach()
        if is_transposed_linear(module):
            w = w.t()  # stored (in, out); its formats are those of the (out, in) matrix
        kind = "Linear" if type(module) not in _CONVERTERS else type(module).__name__
        density = float((w != 0).sum()) / max(w.numel(), 1)
        why = conv_unsupported_reason(module) if isinstance(module, nn.Conv2d) else None
        if why is None and (w.dtype != torch.float32 or w.device.type != "cpu"):
            why = "not float32 on CPU"
        if why is not None:
            decisions.append(
                LayerDecision(name, kind, tuple(w.shape), density, {}, 0.0, False, why)
            )
            continue
        matrix = w.reshape(w.shape[0], -1)
        dense = matrix.numel() * 4
        size, block = min((_stored_bytes(matrix, b, f), b) for b, f in _block_candidates(matrix))
        use = size < dense
        fmt = "csr" if block == (1, 1) else f"bsr {block[0]}x{block[1]}"
        reason = f"{fmt} {size} B {'<' if use else '>='} dense {dense} B"
        decisions.append(
            LayerDecision(name, kind, tuple(w.shape), density, {}, 0.0, use, reason, block)
        )
    return compile_sparse(model, plan=decisions), decisions
