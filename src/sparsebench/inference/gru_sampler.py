"""Sampling a GRU language model one character at a time in one compiled loop (issue 27).

Sparse WaveRNN's claim is that sampling time follows the nonzero weights. Through
``GRULanguageModel.generate`` it cannot: each character costs a dozen tensor calls from Python
(about 280 us here) whatever the weights. :class:`GRUSampler` hands the whole generation to the
extension's ``gru_generate``: per character the embedding row, each layer's input and recurrent
products and gates, the output layer and the draw, with no Python in between.

Each matrix runs as the model holds it: a CSR ``SparseLinear`` (from
:func:`~sparsebench.inference.compile_sparse`) through the CSR kernel, a plain ``nn.Linear``
through a dense product in the same loop, so a dense model sampled this way is the fair
baseline. Block (BSR) layers run through the block kernels (as CSR of their stored weights
when the input width is not a multiple of the block's).

A compiled model's formats are then checked in the loop itself (``tune``): ``compile_sparse``
judges a layer by its time as a module call from Python, where a small matrix's call costs
more than its product, so it keeps small matrices dense that run faster sparse here. For
each matrix with at least half its weights zero, the sampler times a short generation with
the matrix dense and sparse and keeps the faster (by 5% or more). A trained GRU of 512 at
98% with 16x1 blocks sampled in 13.4 us per character as compiled (its input and output
matrices dense) and 5.6 us with every matrix sparse; at 90%, 24.3 and 18.3 us (one thread;
a script, not kept).

Ids are drawn by the rule of
:func:`sparsebench.models.gru.draw_by_inverse_cdf` from uniforms taken up front from the
caller's generator, so the sampler and ``generate`` give the same ids from the same generator
(up to a uniform landing within float rounding of a boundary).

    >>> plain = sb.sparsify(model, "magnitude", sparsity=0.95).finalize()   # after training
    >>> sampler = GRUSampler(compile_sparse(plain.eval(), batch_hint=1))
    >>> ids = sampler.generate([1, 2, 3], 200, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from ..models.gru import GRULanguageModel
from . import _extension
from .sparse_linear import SparseLinear, dense_to_csr

__all__ = ["GRUSampler"]

log = logging.getLogger(__name__)


def _matrix(module: nn.Module, name: str) -> tuple[list[torch.Tensor], torch.Tensor | None, str]:
    """Returns what ``gru_generate`` takes for one layer: its weight as ``[dense]`` or
    ``[crow, col, values]``, its bias, and the format's name."""
    if isinstance(module, SparseLinear):
        if module.values.device.type != "cpu":
            raise ValueError(f"GRUSampler runs on the CPU; {name} is on {module.values.device}")
        bh, bw = module.block
        if module.block == (1, 1):
            parts = [module.crow_indices, module.col_indices, module.values]
            fmt = "csr"
        elif module.in_features % bw == 0:  # the block kernels read whole blocks of inputs
            parts = [module.crow_indices, module.col_indices, module.values]
            fmt = f"bsr {bh}x{bw}"
        else:
            parts = list(dense_to_csr(module.dense_weight()))
            fmt = f"csr (from {bh}x{bw} blocks: {module.in_features} inputs)"
        bias = module.bias
    elif type(module) is nn.Linear:
        if module.weight.device.type != "cpu" or module.weight.dtype != torch.float32:
            raise ValueError(f"GRUSampler runs float32 weights on the CPU; {name} holds "
                             f"{module.weight.dtype} on {module.weight.device}")
        parts, bias, fmt = [module.weight.detach()], module.bias, "dense"
    else:
        raise ValueError(f"GRUSampler reads nn.Linear or SparseLinear layers; {name} is a "
                         f"{type(module).__name__} (finalize() a sparsified model first)")
    parts = [t.detach().contiguous() for t in parts]
    if bias is not None:
        bias = bias.detach().to(torch.float32).contiguous()
    return parts, bias, fmt


#: Characters per timed trial when ``tune`` compares formats, and trials per format.
TUNE_CHARACTERS, TUNE_TRIALS = 64, 5
#: How much faster (relative) the other format must run to replace the model's own.
TUNE_MARGIN = 0.05


def _other_format(module: nn.Module, parts: list[torch.Tensor], fmt: str
                  ) -> tuple[list[torch.Tensor], str] | None:
    """The matrix in the other format, for a matrix with at least half its weights zero
    (a denser one is never faster as CSR here), or None."""
    if fmt == "dense":
        weight = parts[0]
        if (weight == 0).sum().item() * 2 < weight.numel():
            return None
        return [t.contiguous() for t in dense_to_csr(weight)], "csr (faster in the loop)"
    if isinstance(module, SparseLinear) and module.density <= 0.5:
        return [module.dense_weight().detach().contiguous()], "dense (faster in the loop)"
    return None


class GRUSampler:
    """Generates from a :class:`~sparsebench.models.GRULanguageModel` (plain, or compiled by
    ``compile_sparse``) at batch 1 in one compiled loop; see the module docstring.

    The sampler reads the model's weights when it is built: build it again after changing them.
    ``tune`` (default: only for a model that holds a ``SparseLinear``, i.e. a compiled one;
    a plain model runs as it is, the dense baseline) re-decides each matrix's format by timing
    it in the loop (module docstring); ``formats`` says what runs.

    Raises:
        ValueError: for a model that is not a ``GRULanguageModel``, or whose layers are
            neither ``nn.Linear`` nor ``SparseLinear`` float32 CPU layers.
    """

    def __init__(self, model: nn.Module, tune: bool | None = None) -> None:
        if not isinstance(model, GRULanguageModel):
            raise ValueError(f"GRUSampler samples a GRULanguageModel, got "
                             f"{type(model).__name__}")
        if model.embed.weight.device.type != "cpu":
            raise ValueError("GRUSampler runs on the CPU; move the model there first")
        self.model = model
        self.embed = model.embed.weight.detach().to(torch.float32).contiguous()
        self.mats: list[list[torch.Tensor]] = []
        self.biases: list[torch.Tensor | None] = []
        #: Each matrix's name and how it runs (``dense``, ``csr``).
        self.formats: dict[str, str] = {}
        names = [f"cells.{k}.{part}" for k in range(len(model.cells)) for part in ("ih", "hh")]
        modules = [getattr(cell, part) for cell in model.cells for part in ("ih", "hh")]
        modules = [*modules, model.output]
        for name, module in zip([*names, "output"], modules, strict=True):
            parts, bias, fmt = _matrix(module, name)
            self.mats.append(parts)
            self.biases.append(bias)
            self.formats[name] = fmt
        if tune is None:
            tune = any(isinstance(m, SparseLinear) for m in modules)
        if tune and self.compiled:
            self._tune(modules)

    def _loop_seconds(self) -> float:
        """Median seconds of a short generation with the current formats."""
        ext = _extension.load_extension()
        uniforms = torch.full((TUNE_CHARACTERS,), 0.5, dtype=torch.float64)
        prompt = torch.zeros(1, dtype=torch.long)
        times = []
        for _ in range(TUNE_TRIALS):
            state = torch.zeros(len(self.model.cells), self.model.hidden_size)
            start = time.perf_counter()
            ext.gru_generate(self.mats, self.biases, self.embed, state, prompt, uniforms, 1.0)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def _tune(self, modules: Sequence[nn.Module]) -> None:
        """Each matrix in turn, in the other format where that is faster in the loop."""
        best = self._loop_seconds()
        for i, (name, module) in enumerate(zip(list(self.formats), modules, strict=True)):
            other = _other_format(module, self.mats[i], self.formats[name])
            if other is None:
                continue
            held = self.mats[i]
            self.mats[i] = other[0]
            seconds = self._loop_seconds()
            if seconds < (1 - TUNE_MARGIN) * best:
                log.info("GRUSampler: %s runs %s (%.1f against %.1f us per character)", name,
                         other[1], 1e6 * seconds / TUNE_CHARACTERS,
                         1e6 * best / TUNE_CHARACTERS)
                best, self.formats[name] = seconds, other[1]
            else:
                self.mats[i] = held

    @property
    def compiled(self) -> bool:
        """Whether the compiled loop runs (False: ``generate`` falls back to the model's own)."""
        return _extension.load_extension() is not None

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, length: int,
                 generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Returns ``length`` ids sampled after ``prompt_ids``, as
        ``GRULanguageModel.generate`` does (same arguments, same rule, same refusals).

        Without the compiled kernels it calls the model's own ``generate``.
        """
        ext = _extension.load_extension()
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        if ext is None or prompt.numel() == 0 or not isinstance(length, int) or length < 0 \
                or not temperature > 0:
            # The model's generate refuses bad arguments with its own sentences.
            return self.model.generate(prompt, length, generator, temperature)
        vocab = self.embed.shape[0]
        if int(prompt.min()) < 0 or int(prompt.max()) >= vocab:
            raise ValueError(f"prompt ids must lie in [0, {vocab}), got {prompt.tolist()}")
        uniforms = torch.rand(length, generator=generator, dtype=torch.float64)
        state = torch.zeros(len(self.model.cells), self.model.hidden_size)
        return ext.gru_generate(self.mats, self.biases, self.embed, state, prompt.contiguous(),
                                uniforms, float(temperature))
