"""Greedy and beam-search decoding: hand-worked toy distributions and a copy-trained model."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.models import Transformer, TransformerConfig

PAD, BOS, EOS, UNK, A, B, C = range(7)


def tiny_model(vocab: int = 7, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=vocab, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=1, n_decoder_layers=1
    )
    return Transformer(config).eval()


def markov_decoder(model: Transformer, table: dict[int, dict[int, float]]):
    """Returns a stand-in for ``model.decode`` whose next-token distribution depends only on the
    previous token: ``table[previous][next] = probability`` (unlisted tokens get probability 0).
    """

    def decode(tgt_in, memory, src_mask, cache=None, offset=0):
        last = tgt_in[:, -1].tolist()
        probs = torch.zeros(len(last), model.config.vocab_size)
        for row, token in enumerate(last):
            for nxt, p in table.get(token, {EOS: 1.0}).items():
                probs[row, nxt] = p
        return torch.log(probs)[:, None, :]  # (N, 1, V) logits whose softmax is probs

    return decode


def strip(row: list[int]) -> list[int]:
    return [t for t in row if t != PAD]


# From BOS: A 0.5, B 0.4, EOS 0.1. After A: EOS 0.4, A 0.3, B 0.3. After B: EOS 0.9, A 0.1.
# Greedy takes A then EOS: P = 0.5 * 0.4 = 0.20. A beam of 2 keeps B and finds B EOS: 0.36.
BEAM_BEATS_GREEDY = {
    BOS: {A: 0.5, B: 0.4, EOS: 0.1},
    A: {EOS: 0.4, A: 0.3, B: 0.3},
    B: {EOS: 0.9, A: 0.1},
}


def test_beam_of_two_finds_what_greedy_misses(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(model, "decode", markov_decoder(model, BEAM_BEATS_GREEDY))
    src = torch.tensor([[A, B, EOS], [B, EOS, PAD]])
    greedy = model.greedy_decode(src, max_len=5)
    assert [strip(r) for r in greedy.tolist()] == [[A, EOS], [A, EOS]]
    beam = model.beam_search(src, beam_size=2, alpha=0.0, max_len=5)
    assert [strip(r) for r in beam.tolist()] == [[B, EOS], [B, EOS]]
    assert torch.equal(model.beam_search(src, beam_size=1, alpha=0.6, max_len=5), greedy)


# From BOS: EOS 0.5, A 0.49, B 0.01. After A: EOS 0.99, B 0.01.
# Short [EOS]: log 0.5 = -0.6931, lp(1) = 1. Long [A, EOS]: log(0.49 * 0.99) = -0.7234.
# alpha = 0:   -0.6931 > -0.7234, the short one wins.
# alpha = 0.6: lp(2) = (7/6)^0.6 = 1.0969, -0.7234 / 1.0969 = -0.6595 > -0.6931, the long one wins.
LENGTH_PENALTY_FLIPS = {
    BOS: {EOS: 0.5, A: 0.49, B: 0.01},
    A: {EOS: 0.99, B: 0.01},
    B: {EOS: 1.0},
}


def test_gnmt_length_penalty_by_hand(monkeypatch):
    assert math.log(0.5) > math.log(0.49 * 0.99)
    assert math.log(0.49 * 0.99) / (7 / 6) ** 0.6 > math.log(0.5)
    model = tiny_model()
    monkeypatch.setattr(model, "decode", markov_decoder(model, LENGTH_PENALTY_FLIPS))
    src = torch.tensor([[A, EOS]])
    no_penalty = model.beam_search(src, beam_size=2, alpha=0.0, max_len=5)
    assert strip(no_penalty[0].tolist()) == [EOS]
    penalty = model.beam_search(src, beam_size=2, alpha=0.6, max_len=5)
    assert strip(penalty[0].tolist()) == [A, EOS]


def test_max_len_and_eos_handling(monkeypatch):
    model = tiny_model()
    # After A always A: a hypothesis that never ends; after B always EOS.
    table = {BOS: {A: 0.6, B: 0.4}, A: {A: 1.0}, B: {EOS: 1.0}}
    monkeypatch.setattr(model, "decode", markov_decoder(model, table))
    src = torch.tensor([[A, EOS]])
    greedy = model.greedy_decode(src, max_len=4)
    assert greedy.tolist() == [[A, A, A, A]]  # cut at max_len, no EOS
    # The beam keeps [B, EOS] (P = 0.4) beside the unfinished A A A A (P = 0.6) and returns the
    # higher-scoring one; with alpha = 0 that is the unfinished one.
    beam = model.beam_search(src, beam_size=2, alpha=0.0, max_len=4)
    assert beam.tolist() == [[A, A, A, A]]
    # Finished rows are padded after EOS, and decoding stops once every row has finished.
    table = {BOS: {B: 1.0}, B: {EOS: 1.0}}
    monkeypatch.setattr(model, "decode", markov_decoder(model, table))
    assert model.greedy_decode(src, max_len=10).tolist() == [[B, EOS]]
    assert model.beam_search(src, beam_size=3, max_len=10).tolist() == [[B, EOS]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_greedy_equals_beam_of_one_on_random_models(seed, alpha):
    model = tiny_model(vocab=20, seed=seed)
    src = torch.randint(4, 20, (4, 6))
    src[2, 3:] = PAD
    greedy = model.greedy_decode(src, max_len=12)
    beam = model.beam_search(src, beam_size=1, alpha=alpha, max_len=12)
    assert torch.equal(greedy, beam)


def test_beam_search_is_the_same_alone_and_in_a_padded_batch():
    model = tiny_model(vocab=20, seed=3)
    src = torch.randint(4, 20, (3, 7))
    src[0, 4:] = PAD
    src[2, 2:] = PAD
    batched = model.beam_search(src, beam_size=3, max_len=8)
    for i in range(3):
        length = int((src[i] != PAD).sum())
        alone = model.beam_search(src[i : i + 1, :length], beam_size=3, max_len=8)
        assert strip(batched[i].tolist()) == strip(alone[0].tolist())


def test_decoding_rejects_bad_arguments():
    model = tiny_model()
    src = torch.tensor([[A, EOS]])
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, beam_size=0)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, beam_size=6)  # only 5 tokens are valid outputs
    with pytest.raises(ValueError, match="alpha"):
        model.beam_search(src, alpha=-1.0)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, max_len=0)


# --- a model trained to copy its input ------------------------------------------------------


def copy_batch(generator: torch.Generator, n: int, vocab: int, max_tokens: int) -> torch.Tensor:
    """Returns (n, max_tokens + 1) sequences of 2..max_tokens content tokens, EOS, then pad."""
    lengths = torch.randint(2, max_tokens + 1, (n,), generator=generator)
    x = torch.randint(4, vocab, (n, max_tokens + 1), generator=generator)
    x[torch.arange(max_tokens + 1)[None] >= lengths[:, None]] = PAD
    x[torch.arange(n), lengths] = EOS
    return x


def train_copy_model(steps: int, vocab: int, max_tokens: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=64,
        n_heads=4,
        d_ff=128,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        label_smoothing=0.0,
    )
    model = Transformer(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        x = copy_batch(generator, 64, vocab, max_tokens)
        loss = model.loss(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


def copied(out: torch.Tensor, src: torch.Tensor) -> int:
    """Returns how many rows of ``out`` are exactly the source (content tokens and EOS)."""
    return sum(strip(o) == strip(s) for o, s in zip(out.tolist(), src.tolist(), strict=True))


@pytest.fixture
def one_thread():
    # Two cores shared by several people: one thread is faster than fighting over both.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_beam_search_reproduces_the_input_of_a_copy_model(one_thread):
    """Fast variant (about 6 s): 300 steps on sequences of up to 6 tokens from 12 symbols."""
    model = train_copy_model(steps=300, vocab=16, max_tokens=6)
    src = copy_batch(torch.Generator().manual_seed(1234), 64, 16, 6)
    assert copied(model.beam_search(src, beam_size=4, max_len=10), src) == 64
    assert copied(model.greedy_decode(src, max_len=10), src) >= 60


@pytest.mark.slow
def test_beam_and_greedy_reproduce_longer_inputs_of_a_copy_model(one_thread):
    model = train_copy_model(steps=1500, vocab=32, max_tokens=12)
    src = copy_batch(torch.Generator().manual_seed(1234), 128, 32, 12)
    assert copied(model.beam_search(src, beam_size=4, max_len=20), src) == 128
    assert copied(model.greedy_decode(src, max_len=20), src) == 128
