"""A character-level GRU language model whose matrices are plain ``nn.Linear`` modules.

Embedding → ``layers`` GRU layers → a linear softmax layer over the vocabulary. Each GRU layer
keeps its input-to-hidden matrix in ``ih = nn.Linear(in, 3 * hidden)`` and its hidden-to-hidden
matrix in ``hh = nn.Linear(hidden, 3 * hidden)`` (rows in torch.nn.GRU's order: reset, update,
new), so ``sparsify()``'s default selection (every Linear weight) prunes the recurrent matrices,
the input projections and the softmax layer; the embedding and biases stay dense. This is the
setting of the Sparse WaveRNN question (Kalchbrenner et al. 2018): at equal nonzeros, is a large
sparse GRU better than a small dense one?

The gate math is torch.nn.GRU's, the hidden bias of the new gate inside the reset product::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

and so is the initialization (every GRU weight and bias uniform in ±1/sqrt(hidden)), so copying
``ih``/``hh`` into ``weight_ih_l{k}``/``weight_hh_l{k}`` (and biases) of a ``torch.nn.GRU`` gives
the same outputs. The input projection runs once over the whole sequence; the recurrence steps
through time in Python, calling the ``hh`` module once per step (so a technique that replaces a
layer's forward, like variational dropout, sees every use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparsebench.models import _checks

__all__ = ["GRULanguageModel", "GRULayer", "draw_by_inverse_cdf"]


def draw_by_inverse_cdf(logits: torch.Tensor, temperature: float, uniform: torch.Tensor | float
                        ) -> int:
    """Returns the id whose cumulative probability under softmax(logits / temperature) (in
    float64) first exceeds ``uniform`` (in [0, 1)); the last id if rounding leaves none."""
    probs = torch.softmax(logits.detach().double().cpu() / temperature, dim=-1)
    cdf = probs.cumsum(0)
    index = int(torch.searchsorted(cdf, torch.as_tensor(uniform, dtype=torch.float64) * cdf[-1],
                                   right=True))
    return min(index, logits.numel() - 1)


class GRULayer(nn.Module):
    """One GRU layer over a sequence, as torch.nn.GRU computes it (see the module docstring)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)  # torch.nn.GRU's initialization
        for tensor in (self.ih.weight, self.ih.bias, self.hh.weight, self.hh.bias):
            nn.init.uniform_(tensor, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the outputs (batch, time, hidden) for inputs ``x`` (batch, time, input) from
        state ``h`` (batch, hidden), and the last state (batch, hidden)."""
        gates_x = self.ih(x)  # (batch, time, 3 * hidden), all steps at once
        outputs = []
        for t in range(x.shape[1]):
            x_r, x_z, x_n = gates_x[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)  # each (batch, hidden)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h = (1 - z) * n + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


class GRULanguageModel(nn.Module):
    """Character GRU language model: ids (batch, time) → next-character logits.

    Args:
        vocab_size: number of character ids (the unknown character included).
        embed_dim: width of the character embedding.
        hidden_size: width of every GRU layer.
        layers: number of stacked GRU layers.
        dropout: dropout probability on each GRU layer's outputs (between layers and before the
            softmax layer); 0 disables it.

    Raises:
        ValueError: for a bad option (one sentence naming it).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        _checks.positive_int("vocab_size", vocab_size)
        _checks.positive_int("embed_dim", embed_dim)
        _checks.positive_int("hidden_size", hidden_size)
        _checks.positive_int("layers", layers)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.cells = nn.ModuleList(GRULayer(embed_dim if k == 0 else hidden_size, hidden_size)
                                   for k in range(layers))
        self.dropout = nn.Dropout(_checks.probability("dropout", dropout))
        self.output = nn.Linear(hidden_size, vocab_size)

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """Returns the zero state, shape (layers, batch, hidden) as torch.nn.GRU's ``h_0``."""
        weight = self.output.weight
        return torch.zeros(len(self.cells), batch, self.hidden_size, dtype=weight.dtype,
                           device=device or weight.device)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (batch, time, vocab) for ``tokens`` (batch, time) of ids, and the
        state after the last step (layers, batch, hidden); ``state`` None starts from zeros."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, time), got {tuple(tokens.shape)}.")
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        x = self.embed(tokens)  # (batch, time, embed)
        last = []
        for k, cell in enumerate(self.cells):
            x, h = cell(x, state[k])
            x = self.dropout(x)  # (batch, time, hidden)
            last.append(h)
        return self.output(x), torch.stack(last)

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, length: int,
                 generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Returns ``length`` character ids sampled one at a time after ``prompt_ids`` (batch 1,
        evaluation mode, the model's mode restored afterwards).

        Each id is drawn from softmax(logits / temperature) by inverse CDF: ``length``
        uniforms are drawn up front from ``generator`` (float64, on the CPU, so a CPU generator
        serves a model on any device), and id ``i`` is the first whose cumulative probability
        exceeds uniform ``i``. The same weights, prompt and generator state give the same ids,
        and so does the compiled sampler (``sparsebench.inference.GRUSampler``), which draws by
        the same rule.

        Raises:
            ValueError: for an empty prompt, a negative length or a temperature <= 0.
        """
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(1, -1)
        if prompt.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one character id.")
        _checks.non_negative_int("length", length)
        if not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        device = self.output.weight.device
        was_training = self.training
        self.eval()
        uniforms = torch.rand(length, generator=generator, dtype=torch.float64)
        try:
            logits, state = self(prompt.to(device))
            sampled: list[int] = []
            for i in range(length):
                sampled.append(draw_by_inverse_cdf(logits[0, -1], temperature, uniforms[i]))
                if i + 1 < length:
                    logits, state = self(torch.tensor([[sampled[-1]]], device=device), state)
            return torch.tensor(sampled, dtype=torch.long)
        finally:
            self.train(was_training)
