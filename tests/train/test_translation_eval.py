"""The translation task's reference loss, worked by hand on a bigram model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsebench.train.tasks import TranslationTask

PAD, BOS, EOS, V = 0, 1, 2, 6
# Row i: the next-token distribution after token i (pad and BOS rows never used as targets).
P = torch.tensor([
    [0.10, 0.10, 0.20, 0.20, 0.20, 0.20],
    [0.05, 0.05, 0.10, 0.50, 0.20, 0.10],  # after BOS
    [0.10, 0.10, 0.20, 0.20, 0.20, 0.20],
    [0.05, 0.05, 0.30, 0.10, 0.40, 0.10],  # after 3
    [0.05, 0.05, 0.60, 0.10, 0.10, 0.10],  # after 4
    [0.05, 0.05, 0.20, 0.30, 0.30, 0.10],  # after 5
])


class Bigram(nn.Module):
    """Scores each next target token by the previous one alone; the source is ignored."""

    config = SimpleNamespace(pad_id=PAD, bos_id=BOS, eos_id=EOS)

    def forward(self, src, tgt_in):
        return P.log()[tgt_in]  # (B, T, V): unnormalised is fine, these are log-probabilities


class Digits:
    """A vocabulary whose tokens are the integers written in the text."""

    def encode(self, text):
        return [int(t) for t in text.split()]


def _task(pairs, max_length=100, batch_size=4):
    task = object.__new__(TranslationTask)  # no corpus: only what evaluate() reads
    task.config = SimpleNamespace(
        data=SimpleNamespace(max_length=max_length),
        eval=SimpleNamespace(max_valid=None, max_test=None, batch_size=batch_size,
                             beam_size=4, length_penalty=0.6))
    task.vocab = Digits()
    task.eval_pairs = {"test": pairs}
    return task


def test_the_loss_is_the_mean_reference_token_cross_entropy():
    # Three references of different lengths, in batches of one (batch_size 4 // 4): padding,
    # teacher forcing and the average over tokens (not sentences) all matter.
    pairs = [("9", "3 4"), ("9 9", "5"), ("9", "4 3 5")]
    # Predicted token given the previous one, EOS included:
    nll = [  # BOS->3, 3->4, 4->EOS | BOS->5, 5->EOS | BOS->4, 4->3, 3->5, 5->EOS
        0.50, 0.40, 0.60, 0.10, 0.20, 0.20, 0.10, 0.10, 0.20]
    expected = sum(-math.log(p) for p in nll) / len(nll)
    for batch_size in (4, 400):  # one pair per batch, and all in one padded batch
        got = _task(pairs, batch_size=batch_size).evaluate(Bigram(), "test", torch.device("cpu"),
                                                           metrics=["loss"])
        assert got["loss"] == pytest.approx(expected, rel=1e-6)
        assert got["sentences"] == 3.0
        assert set(got) == {"loss", "sentences"}  # nothing decoded: Bigram cannot decode


def test_long_references_are_cut_as_the_translated_sources_are():
    # max_length 2: "3 4 5" is scored as BOS 3 4 EOS, like a source cut before its EOS.
    got = _task([("9", "3 4 5")], max_length=2).evaluate(Bigram(), "test", torch.device("cpu"),
                                                         metrics=["loss"])
    assert got["loss"] == pytest.approx(-(math.log(0.5) + math.log(0.4) + math.log(0.6)) / 3)


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown translation metrics.*perplexity"):
        _task([("9", "3")]).evaluate(Bigram(), "test", torch.device("cpu"),
                                     metrics=["loss", "perplexity"])
