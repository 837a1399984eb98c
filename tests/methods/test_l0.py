"""L0 regularization: hard-concrete gates against their closed forms."""

import math

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.methods.l0 import deterministic_gate, expected_l0, hard_concrete_sample

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("log_alpha", [-1.0, 0.0, 1.0])
def test_gate_samples_and_probability_of_exact_zero(log_alpha):
    z = hard_concrete_sample(torch.full((200_000,), log_alpha))
    assert z.min() >= 0 and z.max() <= 1
    # z = 0 ⟺ s < -γ/(ζ-γ) ⟺ logistic noise < β·logit(-γ/(ζ-γ)) - log α.
    p_zero = _sigmoid(BETA * _logit(-GAMMA / (ZETA - GAMMA)) - log_alpha)
    p_one = 1 - _sigmoid(BETA * _logit((1 - GAMMA) / (ZETA - GAMMA)) - log_alpha)
    assert (z == 0).float().mean().item() == pytest.approx(p_zero, abs=0.005)
    assert (z == 1).float().mean().item() == pytest.approx(p_one, abs=0.005)
    # The penalty's P(z ≠ 0) is the complement of the same event.
    assert expected_l0(torch.tensor(log_alpha)).item() == pytest.approx(1 - p_zero, rel=1e-5)


@pytest.mark.parametrize("log_alpha", [-5.0, -2.0, 0.0, 2.0, 5.0])
def test_deterministic_gate_formula(log_alpha):
    expected = min(1.0, max(0.0, _sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA))
    assert deterministic_gate(torch.tensor(log_alpha)).item() == pytest.approx(expected, abs=1e-6)


def test_penalty_closed_form_and_finalize():
    layer = nn.Linear(5, 4)
    model = nn.Sequential(layer)
    sp = sb.sparsify(model, "l0", l0_weight=0.1)
    p = sp.layers[0].parametrization
    values = torch.linspace(-6, 6, 20).view(4, 5)
    with torch.no_grad():
        p.log_alpha.copy_(values)
    expected = 0.1 * sum(_sigmoid(v - BETA * math.log(-GAMMA / ZETA)) for v in values.flatten())
    assert sp.penalty().item() == pytest.approx(expected, rel=1e-5)
    theta = sp.layers[0].original.detach().clone()
    gates = torch.tensor([min(1, max(0, _sigmoid(v) * 1.2 - 0.1)) for v in values.flatten()])
    model.eval()
    x = torch.randn(2, 5)
    expected_out = x @ (theta * gates.view(4, 5)).T + layer.bias.detach()
    assert torch.allclose(model(x), expected_out, atol=1e-6)
    assert sp.sparsity() == pytest.approx((gates == 0).float().mean().item())
    sp.finalize()
    assert torch.allclose(layer.weight.detach(), theta * gates.view(4, 5), atol=1e-7)
    assert torch.allclose(model(x), expected_out, atol=1e-6)


def test_training_samples_differ_between_forwards():
    model = nn.Sequential(nn.Linear(6, 6))
    sb.sparsify(model, "l0", init_log_alpha=0.0)
    x = torch.randn(2, 6)
    assert not torch.equal(model(x), model(x))
