"""Sparse variational dropout against the paper's formulas and Monte-Carlo estimates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsebench as sb
from sparsebench.methods.variational_dropout import negative_kl


@pytest.mark.parametrize("log_alpha", [-8.0, -3.0, 0.0, 1.5, 3.0, 8.0])
def test_kl_approximation_matches_eq_14(log_alpha):
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    sigmoid = 1 / (1 + math.exp(-(k2 + k3 * log_alpha)))
    expected = k1 * sigmoid - 0.5 * math.log(1 + math.exp(-log_alpha)) - k1
    got = negative_kl(torch.tensor(log_alpha)).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _set_log_sigma2(layer_module, value_fn):
    p = layer_module.parametrizations.weight[0]
    with torch.no_grad():
        p.log_sigma2.copy_(value_fn(layer_module.parametrizations.weight.original))


def test_local_reparameterization_mean_and_variance_linear():
    layer = nn.Linear(5, 3)
    model = nn.Sequential(layer)
    sb.sparsify(model, "vd")
    theta = layer.parametrizations.weight.original.detach()
    _set_log_sigma2(layer, lambda t: torch.full_like(t, -3.0))
    x = torch.randn(1, 5)
    samples = torch.stack([model(x) for _ in range(20000)])  # training mode
    mean_expected = x @ theta.T + layer.bias.detach()
    var_expected = (x * x) @ torch.full_like(theta, math.exp(-3.0)).T
    assert torch.allclose(samples.mean(0), mean_expected, atol=4 * var_expected.sqrt().max() / 100)
    assert torch.allclose(samples.var(0), var_expected, rtol=0.05)


def test_local_reparameterization_conv():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv)
    sb.sparsify(model, "vd")
    theta = conv.parametrizations.weight.original.detach()
    _set_log_sigma2(conv, lambda t: torch.log(0.5 * t * t))  # α = 0.5 everywhere
    x = torch.randn(1, 2, 4, 4)
    samples = torch.stack([model(x) for _ in range(8000)])
    mean_expected = F.conv2d(x, theta, conv.bias.detach(), padding=1)
    var_expected = F.conv2d(x * x, 0.5 * theta * theta, padding=1)
    assert torch.allclose(samples.mean(0), mean_expected, atol=0.05)
    assert torch.allclose(samples.var(0), var_expected, rtol=0.1, atol=1e-4)


def test_evaluation_output_is_theta_times_mask():
    layer = nn.Linear(8, 6)
    model = nn.Sequential(layer)
    sp = sb.sparsify(model, "vd", threshold=3.0)
    theta = layer.parametrizations.weight.original.detach()
    # Half the weights get log σ² so that log α = 5 (> 3), the other half log α = 0.
    big = torch.rand_like(theta) < 0.5
    _set_log_sigma2(layer, lambda t: torch.where(big, 5.0, 0.0) + torch.log(t * t + 1e-8))
    model.eval()
    x = torch.randn(4, 8)
    expected = F.linear(x, theta * ~big, layer.bias.detach())
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert torch.equal(model(x), model(x))
    assert sp.sparsity() == pytest.approx(big.float().mean().item())
    sp.finalize()
    assert torch.equal(layer.weight.detach() == 0, big)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_penalty_is_weighted_kl_sum_with_warmup():
    model = nn.Sequential(nn.Linear(4, 3))
    sp = sb.sparsify(model, "vd", kl_weight=0.01, warmup_begin=2, warmup_end=6)
    layer = sp.layers[0]
    la = torch.clamp(layer.parametrization.log_sigma2 - torch.log(layer.original**2 + 1e-8), -8, 8)
    kl = -negative_kl(la).sum().item()
    assert sp.penalty().item() == 0.0
    for _ in range(4):
        sp.step()
    assert sp.penalty().item() == pytest.approx(0.01 * 0.5 * kl, rel=1e-5)


def test_attention_weights_are_sampled_in_training_and_fixed_in_eval():
    mha = nn.MultiheadAttention(8, 2)
    sb.sparsify(nn.Sequential(mha), "vd", init_log_sigma2=-2.0)
    q = torch.randn(3, 1, 8)
    assert not torch.equal(mha(q, q, q)[0], mha(q, q, q)[0])
    mha.eval()
    assert torch.equal(mha(q, q, q)[0], mha(q, q, q)[0])
