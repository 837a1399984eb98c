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


def _task(pairs, max_length=100, max_tokens=4096):
    task = object.__new__(TranslationTask)  # no corpus: only what evaluate() reads
    task.config = SimpleNamespace(
        data=SimpleNamespace(max_length=max_length, max_tokens=max_tokens),
        eval=SimpleNamespace(max_valid=None, max_test=None, batch_size=500,
                             beam_size=4, length_penalty=0.6))
    task.vocab = Digits()
    task.eval_pairs = {"test": pairs}
    return task


def test_the_loss_is_the_mean_reference_token_cross_entropy():
    # Three references of different lengths, one per batch (4 tokens at most) or all in one
    # padded batch: padding, teacher forcing and the average over tokens (not sentences).
    pairs = [("9", "3 4"), ("9 9", "5"), ("9", "4 3 5")]
    # Predicted token given the previous one, EOS included:
    nll = [  # BOS->3, 3->4, 4->EOS | BOS->5, 5->EOS | BOS->4, 4->3, 3->5, 5->EOS
        0.50, 0.40, 0.60, 0.10, 0.20, 0.20, 0.10, 0.10, 0.20]
    expected = sum(-math.log(p) for p in nll) / len(nll)
    for max_tokens in (4, 4096):
        got = _task(pairs, max_tokens=max_tokens).evaluate(Bigram(), "test", torch.device("cpu"),
                                                           metrics=["loss"])
        assert got["loss"] == pytest.approx(expected, rel=1e-6)
        assert got["sentences"] == 3.0
        assert set(got) == {"loss", "sentences"}  # nothing decoded: Bigram cannot decode


def test_a_long_reference_is_scored_whole():
    # max_length 2 cuts sources for decoding; the reference "3 4 5" still counts every token.
    got = _task([("9", "3 4 5")], max_length=2).evaluate(Bigram(), "test", torch.device("cpu"),
                                                         metrics=["loss"])
    nll = [0.50, 0.40, 0.10, 0.20]  # BOS->3, 3->4, 4->5, 5->EOS
    assert got["loss"] == pytest.approx(sum(-math.log(p) for p in nll) / 4)


def test_no_pairs_give_no_loss_rather_than_zero():
    got = _task([]).evaluate(Bigram(), "test", torch.device("cpu"), metrics=["loss"])
    assert math.isnan(got["loss"]) and got["sentences"] == 0.0


def test_token_batches_keep_the_padded_size_within_the_budget():
    from sparsebench.train.tasks import _token_batches

    lengths = [5, 1, 3, 3, 9, 2]
    # By length: 1 (i1), 2 (i5), 3 (i2), 3 (i3), 5 (i0), 9 (i4). With 10 tokens: 3 x 3, then
    # 2 x 5 (a third item of 3 would pad to 12), then 9 alone.
    assert _token_batches(lengths, 10) == [[1, 5, 2], [3, 0], [4]]
    assert _token_batches(lengths, 9) == [[1, 5, 2], [3], [0], [4]]
    assert _token_batches(lengths, 4) == [[1, 5], [2], [3], [0], [4]]  # 5 and 9 go alone
    assert _token_batches([], 9) == []


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown translation metrics.*perplexity"):
        _task([("9", "3")]).evaluate(Bigram(), "test", torch.device("cpu"),
                                     metrics=["loss", "perplexity"])
