"""The character GRU language model against torch.nn.GRU, under sparsify(), and its sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench import models
from sparsebench.models.gru import GRULanguageModel
from sparsebench.sparsify import sparsify


def torch_reference(model: GRULanguageModel) -> nn.GRU:
    """Returns a torch.nn.GRU holding ``model``'s recurrent weights."""
    first = model.cells[0]
    reference = nn.GRU(first.ih.in_features, model.hidden_size, num_layers=len(model.cells),
                       batch_first=True)
    with torch.no_grad():
        for k, cell in enumerate(model.cells):
            getattr(reference, f"weight_ih_l{k}").copy_(cell.ih.weight)
            getattr(reference, f"weight_hh_l{k}").copy_(cell.hh.weight)
            getattr(reference, f"bias_ih_l{k}").copy_(cell.ih.bias)
            getattr(reference, f"bias_hh_l{k}").copy_(cell.hh.bias)
    return reference


@pytest.mark.parametrize("layers", [1, 2])
def test_outputs_match_torch_gru_with_the_same_weights(layers):
    model = GRULanguageModel(vocab_size=30, embed_dim=12, hidden_size=20, layers=layers).eval()
    reference = torch_reference(model).eval()
    tokens = torch.randint(0, 30, (3, 17))
    for state in (None, torch.randn(layers, 3, 20)):
        logits, last = model(tokens, state)
        expected_out, expected_last = reference(model.embed(tokens), state)
        assert logits.shape == (3, 17, 30) and last.shape == (layers, 3, 20)
        torch.testing.assert_close(logits, model.output(expected_out), atol=1e-5, rtol=0)
        torch.testing.assert_close(last, expected_last, atol=1e-5, rtol=0)


def test_carrying_the_state_equals_one_pass():
    model = GRULanguageModel(vocab_size=11, embed_dim=4, hidden_size=8, layers=2).eval()
    tokens = torch.randint(0, 11, (2, 12))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :5])
    second, _ = model(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-6, rtol=0)


def test_initialization_is_torch_grus():
    model = GRULanguageModel(vocab_size=10, embed_dim=300, hidden_size=16)
    bound = 16 ** -0.5
    for tensor in (model.cells[0].ih.weight, model.cells[0].hh.weight, model.cells[0].ih.bias):
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.9 * bound


def test_default_sparsify_selection_is_the_gru_and_softmax_matrices():
    model = models.create("gru-lm", vocab_size=40, embed_dim=8, hidden_size=16, layers=2)
    sparsifier = sparsify(model, "magnitude", sparsity=0.75)
    assert sorted(layer.name for layer in sparsifier.layers) == [
        "cells.0.hh.weight", "cells.0.ih.weight", "cells.1.hh.weight", "cells.1.ih.weight",
        "output.weight"]
    logits, _ = model(torch.randint(0, 40, (2, 6)))
    logits.pow(2).mean().backward()
    sparsifier.step()
    plain = sparsifier.finalize()
    hh = plain.cells[0].hh.weight
    assert (hh == 0).float().mean().item() == pytest.approx(0.75, abs=1 / hh.numel())
    # The pruned model is still torch.nn.GRU, with the zeros in its matrices.
    tokens = torch.randint(0, 40, (2, 9))
    out, _ = torch_reference(plain)(plain.embed(tokens))
    torch.testing.assert_close(plain(tokens)[0], plain.output(out), atol=1e-5, rtol=0)


def test_sampling_is_reproducible_by_seed():
    model = GRULanguageModel(vocab_size=25, embed_dim=6, hidden_size=12).train()

    def sample(seed):
        return model.generate([3, 1, 4], 40, torch.Generator().manual_seed(seed))

    a, b, c = sample(7), sample(7), sample(8)
    assert a.shape == (40,) and a.dtype == torch.long and a.min() >= 0 and a.max() < 25
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # the mode comes back


def test_sampling_carries_the_state():
    # Near zero temperature the sample is the argmax; each must be the argmax of one
    # teacher-forced pass over the prompt and the samples before it.
    model = GRULanguageModel(vocab_size=9, embed_dim=4, hidden_size=10, layers=2)
    prompt = [1, 2, 3]
    ids = model.generate(prompt, 12, torch.Generator().manual_seed(0), temperature=1e-6)
    sequence = torch.tensor([prompt + ids.tolist()])
    logits, _ = model.eval()(sequence[:, :-1])
    assert logits[0, len(prompt) - 1 :].argmax(-1).tolist() == ids.tolist()


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate([], 3, torch.Generator()), "at least one character"),
    (lambda m: m.generate([1], 3, torch.Generator(), temperature=0.0), "temperature"),
    (lambda m: m.generate([1], -1, torch.Generator()), "length"),
    (lambda m: m(torch.zeros(4, dtype=torch.long)), r"shape \(batch, time\)"),
])
def test_bad_calls_get_one_sentence(call, match):
    model = GRULanguageModel(vocab_size=5, embed_dim=2, hidden_size=3)
    with pytest.raises(ValueError, match=match):
        call(model)


@pytest.mark.parametrize("options, field", [
    ({"hidden_size": 0}, "hidden_size"), ({"layers": 1.5}, "layers"),
    ({"dropout": 1.0}, "dropout"), ({"vocab_size": -3}, "vocab_size"),
])
def test_bad_options_get_one_sentence(options, field):
    with pytest.raises(ValueError, match=field) as info:
        models.create("gru-lm", **options)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)
