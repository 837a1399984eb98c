"""The extension's layer norm (``glue.RowLayerNorm``) against ``nn.LayerNorm``: shapes, with
and without affine parameters, large offsets, the widths and cases it leaves to torch, and
``compile_sparse`` swapping it into a model with the model's output kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.inference import compile_sparse, glue
from sparsebench.inference.glue import RowLayerNorm


def _norm(width: int, affine: bool = True, bias: bool = True) -> nn.LayerNorm:
    torch.manual_seed(width)
    norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            if bias:
                norm.bias.uniform_(-1, 1)
    return norm.eval()


@pytest.mark.parametrize("shape", [(1, 16), (3, 7, 48), (2, 128, 768), (5, 1040)])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_equals_torch(threads, shape, affine, bias):
    norm = _norm(shape[-1], affine, bias)
    fast = RowLayerNorm.from_module(norm)
    x = torch.randn(*shape) * 3 + 10  # an offset the two-pass variance must not lose
    with torch.no_grad():
        torch.testing.assert_close(fast(x), norm(x), rtol=1e-5, atol=1e-5)


def test_what_it_leaves_to_torch_gives_torchs_result():
    norm = _norm(20)  # 20 is not a multiple of 16
    fast = RowLayerNorm.from_module(norm)
    x = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), norm(x))
        wide = torch.randn(4, 64, 32).transpose(1, 2)  # not contiguous
        torch.testing.assert_close(RowLayerNorm.from_module(_norm(64))(wide), _norm(64)(wide))
    # With gradients wanted, torch runs and they flow to the shared parameters.
    fast(torch.randn(2, 20)).sum().backward()
    assert norm.weight.grad is not None


def test_compile_sparse_swaps_it_in_and_keeps_the_output(monkeypatch):
    model = nn.Sequential(nn.Linear(32, 64), _norm(64), nn.ReLU(), nn.Linear(64, 16)).eval()
    x = torch.randn(6, 32)
    with torch.no_grad():
        expected = model(x)
        fast = compile_sparse(model, plan=[])
        assert type(fast[1]) is RowLayerNorm and type(model[1]) is nn.LayerNorm
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(glue, "LAYER_NORM_KERNEL", False)
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    assert set(dict(fast.named_parameters())) == set(dict(model.named_parameters()))
