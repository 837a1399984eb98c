"""VD and L0 on channels-last (NHWC) convolutions: each weight meets its own log σ² / log α,
the maths is the paper's, and the layout survives (so the next convolution need not convert).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsebench as sb
from sparsebench.methods._fused import flat_in_memory_order

NHWC = torch.channels_last


def test_channels_last_tensors_flatten_without_a_copy_and_come_back_channels_last():
    a = torch.randn(4, 3, 5, 2).to(memory_format=NHWC)
    b = torch.randn(4, 3, 5, 2).to(memory_format=NHWC)
    (fa, fb), shaped = flat_in_memory_order(a, b)
    assert fa.data_ptr() == a.data_ptr() and fb.data_ptr() == b.data_ptr()
    out = shaped(fa * 2 + fb)
    assert out.is_contiguous(memory_format=NHWC)
    assert torch.equal(out, a * 2 + b)


@pytest.mark.parametrize("layouts", [("nchw", "nhwc"), ("nhwc", "nchw"), ("nchw", "nchw")])
def test_mixed_layouts_still_pair_each_element_with_its_own(layouts):
    shape = (4, 3, 5, 2)
    a, b = (torch.randn(shape).to(memory_format=NHWC if layout == "nhwc"
                                  else torch.contiguous_format) for layout in layouts)
    (fa, fb), shaped = flat_in_memory_order(a, b)
    assert torch.equal(shaped(fa - fb), a - b)


def _nhwc_conv(in_channels=2, out_channels=3):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return conv.to(memory_format=NHWC)


def test_variational_dropout_moments_on_a_channels_last_conv():
    conv = _nhwc_conv()
    model = nn.Sequential(conv)
    sb.sparsify(model, "vd")
    p = conv.parametrizations.weight[0]
    theta = conv.parametrizations.weight.original.detach()
    assert p.log_sigma2.is_contiguous(memory_format=NHWC)
    # A different α per weight (0.5 or 0.01, in a random pattern): a weight paired with
    # another weight's log σ² would change the variance of the pre-activations.
    alpha = torch.where(torch.rand(theta.shape) < 0.5, 0.5, 0.01)
    with torch.no_grad():
        p.log_sigma2.copy_(torch.log(alpha * theta * theta))
    x = torch.randn(1, 2, 4, 4).to(memory_format=NHWC)
    samples = torch.stack([model(x) for _ in range(8000)])
    assert model(x).is_contiguous(memory_format=NHWC)
    mean_expected = F.conv2d(x, theta, conv.bias.detach(), padding=1)
    var_expected = F.conv2d(x * x, alpha * theta * theta, padding=1)
    assert torch.allclose(samples.mean(0), mean_expected, atol=0.05)
    assert torch.allclose(samples.var(0), var_expected, rtol=0.1, atol=1e-4)


def test_variational_dropout_kl_does_not_depend_on_the_layout():
    penalties = []
    for layout in (torch.contiguous_format, NHWC):
        conv = _nhwc_conv().to(memory_format=layout)
        sp = sb.sparsify(nn.Sequential(conv), "vd", kl_weight=1.0)
        with torch.no_grad():  # log α from -4 to 4, in the weights' logical order
            theta = conv.parametrizations.weight.original
            log_alpha = torch.linspace(-4, 4, theta.numel()).view(theta.shape)
            conv.parametrizations.weight[0].log_sigma2.copy_(log_alpha + torch.log(theta ** 2))
        penalties.append(sp.penalty().item())
    assert penalties[0] == pytest.approx(penalties[1], rel=1e-5)


def test_l0_gates_meet_their_own_weights_on_a_channels_last_conv():
    conv = _nhwc_conv()
    model = nn.Sequential(conv)
    sp = sb.sparsify(model, "l0", l0_weight=1.0)
    p = sp.layers[0].parametrization
    theta = sp.layers[0].original.detach()
    # log α = +30 opens a gate for good (its stretched sample clips to 1), -30 shuts it (0).
    open_ = torch.rand(theta.shape) < 0.5
    with torch.no_grad():
        p.log_alpha.copy_(torch.where(open_, 30.0, -30.0))
    x = torch.randn(2, 2, 4, 4).to(memory_format=NHWC)
    expected = F.conv2d(x, theta * open_, conv.bias.detach(), padding=1)
    out = model(x)  # training mode: sampled gates
    assert out.is_contiguous(memory_format=NHWC)
    assert torch.allclose(out, expected, atol=1e-5)
    # The expected L0 norm: P(z != 0) = sigmoid(log α - β log(-γ/ζ)), 1 or 0 here.
    shift = 2 / 3 * math.log(0.1 / 1.1)
    probability = torch.sigmoid(torch.where(open_, 30.0, -30.0) - shift)
    assert sp.penalty().item() == pytest.approx(probability.sum().item(), rel=1e-5)
