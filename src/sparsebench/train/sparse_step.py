"""Training steps on the kept weights only: ``run.sparse_step`` (issue 27).

While a technique's masks stay fixed (retraining a found mask, the end of gradual pruning, SET
and RigL between updates, IMP's pruned rounds: ``Method.sparse_step_allowed``), a Linear layer
can train through :class:`~sparsebench.inference.sparse_training.SparseLinearFunction`: the
forward and the input gradient run the CSR inference kernel, the weight gradient is computed
at the kept positions only, and the optimizer holds one value per kept weight. So a step's
cost follows the nonzeros, optimizer update included.

:class:`SparseTrainingStep` switches layers in and out of that form without the rest of the
loop noticing:

- *entering* gathers the kept weights into a ``(nnz,)`` parameter, puts it in the
  optimizer's place of the dense weight with its state gathered the same way (momentum, Adam's
  moments, its step), and replaces the module's forward;
- *leaving* scatters values and state back into the dense weight and its state, so the
  model's ``state_dict``, the optimizer's and every checkpoint are exactly those of the dense
  path (a run resumes in either mode);
- it leaves before a mask update (``Method.updates_at``), a checkpoint, an evaluation or the
  end, and enters again after, so a mask update rebuilds the layout at that step only.

Pruned weights get no gradient while sparse. Where the dense path would have given them one
(``pruned_weights="update"`` after the schedule's end) they can never come back, so only a
global gradient-norm clip can tell: it then counts the kept weights' gradients alone.

``mode``: ``"on"`` trains every eligible layer sparse whenever the technique allows;
``"auto"`` only the layers the performance model predicts faster (the forward product
``min_speedup``× dense at the layer's density and rows per call); ``"off"``
never. Eligible: an ``nn.Linear`` whose own forward runs, not tied, float32/float64 on the
CPU, masked by a binary mask; a 1x1 ``nn.Conv2d`` (no padding, one group, any stride), run as
a Linear over its output pixels (channels-last inputs need no copy); and an ``nn.Embedding``
whose weight is also read by output
projections (``TiedProjection``, the Transformer's shared embedding): the projections run
through the CSR kernels, the lookup from a table rebuilt from the kept values, and any other
read of the weight while it trains sparse raises instead of reading stale values. ``auto``
judges an embedding by its projection's product, and leaves one with no projection dense.
Larger convolutions and weights tied as one Parameter in two modules stay dense.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inference.perf_model import PerformanceModel
from ..inference.sparse_training import DTYPES, CsrPattern, SparseLinearFunction
from ..methods.base import Layer, Method
from ..methods.pruning import MaskParametrization
from ..models.transformer import TiedProjection
from ..sparsify import Sparsifier
from .config import SPARSE_STEP_MODES as MODES

__all__ = ["MODES", "SparseTrainingStep", "eligibility", "projection_readers"]

log = logging.getLogger("sparsebench.train")

#: The speed-up ``auto`` asks of both sparse products of a layer, as the inference compiler.
AUTO_MIN_SPEEDUP = 1.3


def projection_readers(layer: Layer, model: nn.Module | None) -> list[nn.Module]:
    """Returns the modules of ``model`` that multiply by ``layer``'s weight as an output
    projection (``tied_weight_module``, as the Transformer's ``TiedProjection``)."""
    if model is None:
        return []
    return [m for m in model.modules() if getattr(m, "tied_weight_module", None) is layer.module]


def eligibility(layer: Layer, model: nn.Module | None = None) -> str | None:
    """Returns why ``layer`` cannot train with a sparse step, or None when it can. An
    ``nn.Embedding`` needs ``model``, to find the output projections that read its weight."""
    module = layer.module
    if layer.tied:
        return "its weight is tied to another use"
    if layer.attr != "weight" or not isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
        return "not an nn.Linear, nn.Conv2d or nn.Embedding weight"
    if isinstance(module, nn.Embedding):
        why = _embedding_problem(module, layer, model)
        if why is not None:
            return why
    else:
        if isinstance(module, nn.Conv2d):
            why = _convolution_problem(module)
            if why is not None:
                return why
        elif type(module).forward is not nn.Linear.forward or "forward" in module.__dict__:
            return "its module's forward is not nn.Linear's own"
        if not layer.local_reparam or layer.transposed:
            return "its weight is read by another module's forward"
    if not isinstance(layer.parametrization, MaskParametrization):
        return "its technique does not hold a binary mask"
    original = layer.original
    if original.device.type != "cpu" or original.dtype not in DTYPES:
        return f"{original.dtype} on {original.device} (float32/float64 on the CPU only)"
    if not original.requires_grad:
        return "its weight is frozen"
    if not original.is_contiguous():
        return "its weight is not contiguous"
    return None


def _convolution_problem(module: nn.Conv2d) -> str | None:
    """A 1x1 convolution is a Linear over pixels (any stride: the input is subsampled first);
    larger kernels need a sparse convolution backward, which is not here."""
    if type(module).forward is not nn.Conv2d.forward or "forward" in module.__dict__:
        return "its module's forward is not nn.Conv2d's own"
    if module.kernel_size != (1, 1):
        return (f"a {module.kernel_size[0]}x{module.kernel_size[1]} convolution (1x1 "
                "convolutions only: larger kernels train dense)")
    if module.groups != 1 or module.padding not in ((0, 0), "valid"):
        return "a grouped or padded 1x1 convolution"
    return None


def _embedding_problem(module: nn.Embedding, layer: Layer, model: nn.Module | None
                       ) -> str | None:
    if model is None:
        return "an embedding needs the model, to find what else reads its weight"
    if type(module).forward is not nn.Embedding.forward or "forward" in module.__dict__:
        return "its module's forward is not nn.Embedding's own"
    if module.max_norm is not None or module.sparse:
        return "an embedding with max_norm or sparse gradients"
    for reader in projection_readers(layer, model):
        if type(reader) is not TiedProjection or "forward" in reader.__dict__:
            return (f"its weight is read by a {type(reader).__name__}, whose forward the "
                    "sparse step does not know")
    return None


class _Recording:
    """Where a sparse layer's backward hands the dense weight gradient on the steps whose
    update reads it (``Method.dense_gradient_at``): the layer's parametrization, or None."""

    def __init__(self) -> None:
        self.target: Any = None
        self.shape: tuple[int, ...] = ()

    def record(self, grad: torch.Tensor) -> None:
        self.target.record(grad.view(self.shape))  # (out, in) -> the weight's own shape

    def active(self) -> _Recording | None:
        return self if self.target is not None else None


@dataclass
class _Active:
    """One layer while it trains sparse."""

    layer: Layer
    flat: torch.Tensor  # the kept positions in the flattened weight, CSR order
    values: nn.Parameter
    dense_state: dict[str, Any] = field(default_factory=dict)
    #: Modules whose forward was replaced (the layer's own, and an embedding's projections).
    replaced: list[nn.Module] = field(default_factory=list)
    #: Removes the guard that refuses reads of the stale dense weight (embeddings).
    guard: Any = None
    recording: _Recording = field(default_factory=_Recording)


def _sparse_forward(bias: torch.Tensor | None, values: torch.Tensor, pattern: CsrPattern,
                    recording: _Recording, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with the kept weights ``values`` in ``pattern``'s CSR order: a
    Linear's forward, or a ``TiedProjection``'s (no bias) by its embedding's weight."""
    out_f, in_f = pattern.shape
    if x.shape[-1:] != (in_f,) or x.dtype != values.dtype or x.device.type != "cpu":
        raise ValueError(f"a sparse training step of a ({out_f} x {in_f}) weight takes "
                         f"{values.dtype} CPU inputs (..., {in_f}); got {x.dtype} on "
                         f"{x.device} of shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    y = SparseLinearFunction.apply(x.reshape(-1, in_f), values, bias, pattern,
                                   recording.active())
    return y.reshape(*lead, out_f)


def _sparse_conv1x1_forward(module: nn.Conv2d, values: torch.Tensor, pattern: CsrPattern,
                            recording: _Recording, x: torch.Tensor) -> torch.Tensor:
    """``module``'s 1x1 convolution as a Linear over pixels: channels-last inputs need no
    copy ((N, H, W, C) is their memory order); the output keeps the input's memory format."""
    out_c, in_c = pattern.shape
    if x.dim() != 4 or x.shape[1] != in_c or x.dtype != values.dtype or x.device.type != "cpu":
        raise ValueError(f"a sparse training step of a 1x1 Conv2d({in_c}, {out_c}) takes "
                         f"{values.dtype} CPU inputs (N, {in_c}, H, W); got {x.dtype} on "
                         f"{x.device} of shape {tuple(x.shape)}")
    sh, sw = module.stride
    if (sh, sw) != (1, 1):
        x = x[:, :, ::sh, ::sw]
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    n, _, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, in_c)
    y = SparseLinearFunction.apply(pixels, values, module.bias, pattern, recording.active())
    y = y.view(n, h, w, out_c).permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def _sparse_embedding_forward(module: nn.Embedding, values: torch.Tensor, pattern: CsrPattern,
                              recording: _Recording, tokens: torch.Tensor) -> torch.Tensor:
    """``module``'s lookup from a weight rebuilt from its kept values: one scatter of the
    ``(vocab, dim)`` table per call, whose backward gathers the kept positions' gradient."""
    weight = values.new_zeros(pattern.shape[0] * pattern.shape[1])
    weight = weight.index_put((pattern.flat,), values).view(pattern.shape)
    if recording.active() is not None and weight.requires_grad:
        weight.register_hook(recording.record)  # the lookup's share of the dense gradient
    return F.embedding(tokens, weight, module.padding_idx, None, 2.0,
                       module.scale_grad_by_freq, False)


def _refuse_stale_read(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    raise RuntimeError(
        f"{name} was read while it trains sparse (its kept weights live outside it then), by "
        "code other than its module's forward and its output projections': run with "
        "sparse_step=off, or read it only through those modules.")


class SparseTrainingStep:
    """Trains a sparsified model's eligible Linear layers on their kept weights whenever the
    technique allows (see the module docstring). Registers itself with ``sparsifier`` so that
    ``Sparsifier.step()`` brings layers out before mask updates and back after.

    Before anything reads the dense weights or the optimizer's state (checkpoint, evaluation,
    ``finalize``), call :meth:`dense`; afterwards :meth:`resume` with the optimizer steps done.

    Args:
        sparsifier: the attached technique.
        optimizer: the optimizer training the model (all its parameters).
        mode: ``"on"``, ``"auto"`` or ``"off"`` (nothing ever changes).
        perf_model: the calibrations ``auto`` predicts from (default: this machine's cache, at
            this process's thread count).
        min_speedup: what ``auto`` asks of a layer's two sparse products.
        distributed: True under DistributedDataParallel, which holds the dense parameters
            itself: ``auto`` then stays dense, ``on`` is refused.

    Raises:
        ValueError: one sentence for a bad mode, and for ``"on"`` where it cannot act: a
            technique that trains every weight at every step, no eligible layer, or DDP.
    """

    def __init__(self, sparsifier: Sparsifier, optimizer: torch.optim.Optimizer,
                 mode: str = "auto", *, perf_model: PerformanceModel | None = None,
                 min_speedup: float = AUTO_MIN_SPEEDUP, distributed: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"sparse_step must be one of {list(MODES)}, got {mode!r}.")
        self.sparsifier, self.optimizer, self.mode = sparsifier, optimizer, mode
        self.technique = sparsifier.technique
        self.min_speedup = min_speedup
        self._perf_model = perf_model
        model = getattr(sparsifier, "model", None)
        self.skipped = {layer.name: why for layer in sparsifier.layers
                        if (why := eligibility(layer, model)) is not None}
        #: Per embedding, the output projections that read its weight.
        self.readers = {layer.name: projection_readers(layer, model)
                        for layer in sparsifier.layers if isinstance(layer.module, nn.Embedding)}
        self.eligible = [layer for layer in sparsifier.layers if layer.name not in self.skipped]
        never = type(self.technique).sparse_step_allowed is Method.sparse_step_allowed
        problem = None
        if never:
            problem = (f"{self.technique.name} trains every weight at every step, so it has "
                       f"no sparse step")
        elif not self.eligible:
            problem = "no sparsified layer can train sparse (" + "; ".join(
                f"{name}: {why}" for name, why in list(self.skipped.items())[:3]) + ")"
        elif distributed:
            problem = "DistributedDataParallel holds the dense weights itself"
        if problem is not None and mode == "on":
            raise ValueError(f"sparse_step=on cannot act: {problem}; use off or auto.")
        if problem is not None:
            self.mode = "off"
            if mode == "auto":
                log.info("sparse_step=auto stays dense: %s.", problem)
        #: Per layer and nonzero count, whether ``auto`` chose sparse ("name:nnz" -> bool).
        self.decisions: dict[str, bool] = {}
        #: Optimizer steps that ran with at least one layer sparse.
        self.sparse_steps = 0
        self._active: dict[str, _Active] = {}
        # True once every eligible layer is placed (sparse, or decided dense) for the current
        # masks, so that resume() between mask updates costs nothing; dense() clears it.
        self._settled = False
        self._rows: dict[str, int] = {}
        self._row_hooks = []
        if self.mode == "auto":  # auto needs each layer's rows per call before it decides
            for layer in self.eligible:  # an embedding's product is its projection's
                for module in self.readers.get(layer.name, [layer.module]):
                    self._row_hooks.append(module.register_forward_pre_hook(
                        functools.partial(self._record_rows, layer.name)))
        if self.mode != "off":
            sparsifier.add_step_hook(self)

    # -- the hooks Sparsifier.step() calls ---------------------------------------------------
    def before_update(self, step: int) -> None:
        """Counts the step just trained; writes weights back before the technique's update."""
        if self._active:
            self.sparse_steps += 1
            if self.technique.updates_at(step):
                self.dense()

    def after_update(self, step: int) -> None:
        """Prepares the next step, ``step + 1``."""
        self.resume(step)

    # -- public ------------------------------------------------------------------------------
    def resume(self, step: int) -> None:
        """Sets up the step that follows ``step`` optimizer steps: sparse where allowed."""
        if self.mode == "off":
            return
        if not self.technique.sparse_step_allowed(step + 1):
            self.dense()
            return
        if not self._settled:  # else the masks are unchanged since every layer was placed
            undecided = False
            for layer in self.eligible:
                if layer.name not in self._active:
                    wanted = self._wanted(layer)
                    if wanted:
                        self._enter(layer)
                    undecided |= wanted is None
            self._settled = not undecided
        record = self.technique.dense_gradient_at(step + 1)
        for active in self._active.values():
            active.recording.target = active.layer.parametrization if record else None

    def dense(self) -> None:
        """Brings every sparse layer back: dense weights and optimizer state up to date."""
        self._settled = False
        for name in list(self._active):
            self._leave(self._active.pop(name))

    def use_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Trains with a new optimizer from now on (call :meth:`dense` before building it)."""
        if self._active:
            raise RuntimeError("call dense() before replacing the optimizer")
        self.optimizer = optimizer

    def close(self) -> None:
        """Brings every layer back and unregisters from the sparsifier."""
        self.dense()
        for hook in self._row_hooks:
            hook.remove()
        self._row_hooks = []
        if self.mode != "off":
            self.sparsifier.remove_step_hook(self)
            self.mode = "off"

    @property
    def sparse_layers(self) -> list[str]:
        """Returns the layers training sparse now."""
        return list(self._active)

    def state_dict(self) -> dict[str, Any]:
        """Returns plain data for a checkpoint: ``auto``'s decisions and the step count."""
        return {"decisions": dict(self.decisions), "sparse_steps": self.sparse_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`, so a resumed run makes the same choices."""
        self.decisions = {str(k): bool(v) for k, v in state.get("decisions", {}).items()}
        self.sparse_steps = int(state.get("sparse_steps", 0))

    # -- choosing ----------------------------------------------------------------------------
    def _record_rows(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if name not in self._rows and args and torch.is_tensor(args[0]):
            x = args[0]
            if isinstance(module, nn.Conv2d) and x.dim() == 4:  # a Linear over output pixels
                sh, sw = module.stride
                rows = x.shape[0] * -(-x.shape[2] // sh) * -(-x.shape[3] // sw)
            else:
                rows = x.numel() // max(1, x.shape[-1])
            self._rows[name] = max(1, rows)

    def _wanted(self, layer: Layer) -> bool | None:
        """Whether ``layer`` should train sparse; None while ``auto`` cannot tell yet."""
        if self.mode == "on":
            return True
        if layer.name in self.readers and not self.readers[layer.name]:
            return False  # a lookup alone: no product for the kernels to speed up
        mask = layer.parametrization.mask
        nnz = int(torch.count_nonzero(mask))
        key = f"{layer.name}:{nnz}"
        if key not in self.decisions:
            rows = self._rows.get(layer.name)
            if rows is None:
                return None  # not run yet: decide once a dense step has shown its rows
            self.decisions[key] = self._predicted_faster(layer, nnz, rows)
        return self.decisions[key]

    def _predicted_faster(self, layer: Layer, nnz: int, rows: int) -> bool:
        if self._perf_model is None:
            self._perf_model = PerformanceModel(thread_counts=(torch.get_num_threads(),))
        out_f = layer.shape[0]
        in_f = layer.numel // max(1, out_f)  # a 1x1 convolution's (out, in, 1, 1) too
        density = nnz / max(1, out_f * in_f)
        # The forward product is the one the performance model calibrates; the backward
        # kernels (the input gradient scattered from W's rows, the weight gradient at the
        # kept positions) are not calibrated, and auto takes them to follow the forward.
        forward = self._perf_model.predict_speedup(out_f, in_f, rows, density)
        use = forward >= self.min_speedup
        log.info("sparse_step=auto: %s at density %.3f, %d rows: predicted %.2fx forward "
                 "-> %s", layer.name, density, rows, forward, "sparse" if use else "dense")
        return use

    # -- moving a layer in and out -----------------------------------------------------------
    def _optimizer_slot(self, param: torch.Tensor) -> tuple[dict[str, Any], int]:
        for group in self.optimizer.param_groups:
            for index, p in enumerate(group["params"]):
                if p is param:
                    return group, index
        raise ValueError("a sparsified weight is not among the optimizer's parameters; "
                         "build the optimizer from model.parameters() after sparsify()")

    @torch.no_grad()
    def _enter(self, layer: Layer) -> None:
        original = layer.original
        mask = layer.parametrization.mask.detach()
        pattern = CsrPattern(mask.reshape(mask.shape[0], -1))  # a 1x1 conv's (out, in, 1, 1)
        flat = pattern.flat  # row-major positions: CSR order
        values = nn.Parameter(original.detach().view(-1).index_select(0, flat))
        group, index = self._optimizer_slot(original)
        dense_state = self.optimizer.state.pop(original, {})
        self.optimizer.state[values] = {
            key: (value.reshape(-1).index_select(0, flat) if _per_weight(value, original)
                  else _copy(value))
            for key, value in dense_state.items()}
        group["params"][index] = values
        original.grad = None
        active = _Active(layer, flat, values, dense_state)
        module = layer.module
        recording = active.recording
        recording.shape = tuple(original.shape)
        if isinstance(module, nn.Embedding):
            module.forward = functools.partial(_sparse_embedding_forward, module, values, pattern,
                                               recording)
            for reader in self.readers[layer.name]:
                reader.forward = functools.partial(_sparse_forward, None, values, pattern,
                                                   recording)
                active.replaced.append(reader)
            active.guard = layer.parametrization.register_forward_pre_hook(
                functools.partial(_refuse_stale_read, layer.name))
        elif isinstance(module, nn.Conv2d):
            module.forward = functools.partial(_sparse_conv1x1_forward, module, values, pattern,
                                               recording)
        else:
            module.forward = functools.partial(_sparse_forward, module.bias, values, pattern,
                                               recording)
        active.replaced.append(module)
        self._active[layer.name] = active

    @torch.no_grad()
    def _leave(self, active: _Active) -> None:
        layer, flat, values = active.layer, active.flat, active.values
        original = layer.original
        original.view(-1).index_copy_(0, flat, values.detach())
        group, index = self._optimizer_slot(values)
        state = active.dense_state
        for key, value in self.optimizer.state.pop(values, {}).items():
            if torch.is_tensor(value) and value.shape == values.shape:
                dense = state.get(key)
                if not (torch.is_tensor(dense) and _per_weight(dense, original)
                        and dense.is_contiguous()):
                    dense = torch.zeros_like(original, dtype=value.dtype,
                                             memory_format=torch.contiguous_format)
                dense.view(-1).index_copy_(0, flat, value)
                state[key] = dense
            else:
                state[key] = value
        if state:
            self.optimizer.state[original] = state
        group["params"][index] = original
        for module in active.replaced:
            del module.forward
        if active.guard is not None:
            active.guard.remove()


def _per_weight(value: Any, original: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.shape == original.shape


def _copy(value: Any) -> Any:
    return value.clone() if torch.is_tensor(value) else value
