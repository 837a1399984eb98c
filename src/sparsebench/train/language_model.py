"""Character-level language modelling, the task kind behind ``shakespeare-gru``: predict each
next character of Shakespeare's works, scored in bits per character on held-out works.

Training (truncated backpropagation through time, no state carried between batches): a batch
is ``data.batch_size`` windows of ``data.max_length + 1`` characters of the training text; the
model reads the first ``max_length`` from the zero state and is scored on the last
``max_length``. Each epoch tiles the training text with windows from a random offset in
``[0, max_length]`` (one window after another, so every character is read about once per
epoch) and shuffles them; offset and order come from a generator seeded by the run's seed and
the epoch alone, so the position in the order (``BatchOrder``: epoch, batch) is all a resumed
run needs to see the same batches. ``data.limit_train`` keeps the first N training characters.

Evaluation reads a whole split: every character but the first is predicted once. The
characters are cut into ``eval.batch_size`` contiguous streams (fewer for a short split) that
run side by side in windows of ``data.max_length``, the state carried from each window to the
next; each stream first reads, unscored, the ``max_length`` characters before its own part, so
every character is predicted from at least ``min(its position, max_length)`` characters of
context, never less than a training window gives (with ``eval.batch_size=1``: one pass through
the text in order). ``bpc`` is the mean cross-entropy in nats (summed in float64) over ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batch_order import BatchOrder
from .config import RunConfig

__all__ = ["LanguageModelTask"]


class LanguageModelTask:
    """Characters → next character with a recurrent language model ``model(tokens, state) ->
    (logits, state)``, scored by bits per character (lower is better)."""

    metric_name = "bpc"
    higher_is_better = False
    #: What :meth:`evaluate` reports for a split (besides the character count).
    eval_metrics = ("bpc", "loss")

    def __init__(self, config: RunConfig, rank: int = 0, world: int = 1):
        from ..data.shakespeare import build_shakespeare_corpus

        self.config, self.rank, self.world = config, rank, world
        data = config.data
        corpus = build_shakespeare_corpus(data.root)
        self.vocab = corpus.vocabulary()
        self.train_ids = self.vocab.encode(corpus.text("train"))
        if data.limit_train:
            self.train_ids = self.train_ids[: data.limit_train]
        self.window = data.max_length + 1
        if len(self.train_ids) < self.window:
            raise ValueError(f"data.limit_train = {data.limit_train} leaves "
                             f"{len(self.train_ids)} training characters, fewer than one window "
                             f"of data.max_length + 1 = {self.window}.")
        self.eval_ids = {split: self.vocab.encode(corpus.text(split))
                         for split in ("valid", "test")}
        # No training draw uses it (windows come from per-epoch generators, so that the order's
        # position alone resumes them); the loop saves and restores it with the checkpoint.
        self.generator = torch.Generator().manual_seed(config.run.seed * 1000 + 17 + rank)
        self.order = BatchOrder(self._epoch_batches, rank, world)

    def model_options(self) -> dict[str, Any]:
        """Returns model options the data imply (the vocabulary size, unknown id included)."""
        return {"vocab_size": len(self.vocab)}

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """Returns the epoch's batches of window starts (a function of seed and epoch only)."""
        g = torch.Generator().manual_seed(self.config.run.seed * 7919 + epoch)
        n, w = len(self.train_ids), self.window
        offset = int(torch.randint(0, min(w, n - w + 1), (1,), generator=g))
        starts = offset + w * torch.randperm((n - offset) // w, generator=g)
        order = starts.tolist()
        b = self.config.data.batch_size
        return [order[i : i + b] for i in range(0, len(order) - b + 1, b)] or [order]

    def next_batch(self, device: torch.device) -> torch.Tensor:
        """Returns this rank's share of the next batch of windows, (batch, max_length + 1)."""
        starts = torch.tensor(next(self.order) or [0])
        return self.train_ids[starts[:, None] + torch.arange(self.window)].to(device)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Returns the mean cross-entropy (nats) of each window's characters 2…max_length + 1
        given the ones before it, from the zero state."""
        logits, _ = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               label_smoothing=self.config.optim.label_smoothing)

    def example_input(self) -> tuple[torch.Tensor, ...]:
        """Returns one example for FLOP counting: a window of ``data.max_length`` characters
        (FLOPs per character: divide by ``data.max_length``)."""
        return (self.train_ids[: self.config.data.max_length].unsqueeze(0),)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device,
                 metrics: Collection[str] | None = None) -> dict[str, float]:
        """Returns ``bpc`` (bits per character), ``loss`` (mean nats per character) and
        ``characters`` (how many were predicted) on ``split``, read as the module docstring
        says; one pass gives both metrics, so ``metrics`` (a subset of :attr:`eval_metrics`)
        changes nothing. An unknown split gives {}."""
        if split not in self.eval_ids:
            return {}
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        was_training = model.training
        model.eval()
        try:
            total, count = _stream_cross_entropy(model, self.eval_ids[split], device,
                                                 self.config.eval.batch_size,
                                                 self.config.data.max_length)
        finally:
            model.train(was_training)
        loss = total / count if count else float("nan")
        return {"bpc": loss / math.log(2), "loss": loss, "characters": float(count)}


def _stream_cross_entropy(model: nn.Module, ids: torch.Tensor, device: torch.device,
                          streams: int, window: int) -> tuple[float, int]:
    """Returns the summed cross-entropy (nats, float64) of ``ids[1:]`` given everything before
    each within reach, and how many characters that is (see the module docstring)."""
    targets = len(ids) - 1
    if targets < 1:
        return 0.0, 0
    streams = max(1, min(streams, targets // window))
    bounds = [round(targets * k / streams) for k in range(streams + 1)]
    # Stream k scores targets bounds[k] … bounds[k+1]-1 (ids index + 1), after a warm-up of up
    # to ``window`` unscored inputs before its first one.
    starts = [max(0, bounds[k] - window) for k in range(streams)]
    lengths = [bounds[k + 1] - starts[k] for k in range(streams)]  # inputs each stream reads
    longest = max(lengths)
    inputs = torch.zeros(streams, longest, dtype=torch.long)
    labels = torch.full((streams, longest), -1, dtype=torch.long)  # -1: not scored
    for k in range(streams):
        inputs[k, : lengths[k]] = ids[starts[k] : bounds[k + 1]]
        scored = slice(bounds[k] - starts[k], lengths[k])
        labels[k, scored] = ids[bounds[k] + 1 : bounds[k + 1] + 1]
    total, state = 0.0, None
    for t in range(0, longest, window):
        logits, state = model(inputs[:, t : t + window].to(device), state)
        chunk = labels[:, t : t + window].to(device)
        total += float(F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]),
                                       chunk.reshape(-1), ignore_index=-1, reduction="sum"))
    return total, targets
