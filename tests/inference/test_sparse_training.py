"""SparseTrainableLinear: forward and every gradient equal the dense masked path computed with
autograd (``x @ (W * mask).T + b``), on both kernel paths; Adam steps equal masked dense steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.inference import kernel_path
from sparsebench.inference.sparse_training import (
    CsrPattern,
    SparseLinearFunction,
    SparseTrainableLinear,
)


def _mask(out_f: int, in_f: int, sparsity: float, empty_row: bool = True) -> torch.Tensor:
    mask = torch.rand(out_f, in_f) >= sparsity
    if empty_row and out_f > 2:
        mask[out_f // 2] = False  # a row with no nonzeros
    return mask


def _close(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    assert got.shape == ref.shape
    if ref.numel():
        scale = ref.abs().max().clamp_min(1e-6)
        assert ((got - ref).abs().max() / scale).item() <= rtol


def _compare(out_f: int, in_f: int, lead: tuple[int, ...], sparsity: float, bias: bool = True,
             dtype: torch.dtype = torch.float32) -> None:
    """Checks output and the gradients of x, values and bias against dense autograd."""
    lin = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    mask = _mask(out_f, in_f, sparsity)
    layer = SparseTrainableLinear.from_linear(lin, mask)
    assert layer.nnz == int(mask.sum())

    w = (lin.weight.detach() * mask).requires_grad_(True)  # independent dense computation
    b = lin.bias.detach().clone().requires_grad_(True) if bias else None
    x = torch.randn(*lead, in_f, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = x_ref @ w.T + (b if b is not None else 0)
    got = layer(x)
    _close(got, ref)

    g = torch.randn_like(ref)
    ref.backward(g)
    got.backward(g)
    _close(x.grad, x_ref.grad)
    _close(layer.values.grad, w.grad[mask])
    if bias:
        _close(layer.bias.grad, b.grad)


@pytest.mark.parametrize("shape", [(7, 13), (1, 1), (13, 7), (64, 1000), (33, 65)])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_forward_and_gradients_match_dense_masked(kernel, shape, sparsity, lead):
    _compare(*shape, lead, sparsity)
    assert kernel_path() == kernel


@pytest.mark.parametrize("lead", [(), (130,), (3, 4, 2)])
def test_leading_shapes_and_no_bias(kernel, lead):
    _compare(24, 40, lead, 0.8, bias=False)


def test_all_pruned_and_zero_batch(kernel):
    lin = nn.Linear(6, 5)
    layer = SparseTrainableLinear.from_linear(lin, torch.zeros(5, 6, dtype=torch.bool))
    x = torch.randn(4, 6, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, lin.bias.detach().expand(4, 5))
    y.sum().backward()
    assert layer.values.grad.shape == (0,)
    assert torch.equal(x.grad, torch.zeros(4, 6))
    assert layer(torch.randn(0, 6)).shape == (0, 5)


def test_float64_gradcheck():
    torch.manual_seed(0)
    mask = _mask(7, 11, 0.6)
    pattern = CsrPattern(mask)
    x = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    values = torch.randn(pattern.nnz, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, v, b: SparseLinearFunction.apply(a, v, b, pattern), (x, values, bias))
    _compare(9, 17, (4,), 0.7, dtype=torch.float64)


def test_transposed_layout_and_permutation():
    mask = _mask(9, 14, 0.7)
    pattern = CsrPattern(mask)
    values = torch.randn(pattern.nnz)
    w = torch.zeros(9, 14)
    w[mask] = values
    wt = pattern.torch_csr(values[pattern.perm], transposed=True).to_dense()
    assert torch.equal(wt, w.T)


def test_adam_steps_equal_masked_dense_steps(kernel):
    torch.manual_seed(1)
    dims = [(20, 31), (17, 20)]
    masks = [_mask(o, i, 0.85) for o, i in dims]
    dense = nn.Sequential(nn.Linear(31, 20), nn.ReLU(), nn.Linear(20, 17))
    with torch.no_grad():
        for lin, m in zip(dense[::2], masks, strict=True):
            lin.weight.mul_(m)
    sparse = nn.Sequential(SparseTrainableLinear.from_linear(dense[0], masks[0]), nn.ReLU(),
                           SparseTrainableLinear.from_linear(dense[2], masks[1]))
    opt_d = torch.optim.Adam(dense.parameters(), lr=1e-2)
    opt_s = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    for _ in range(5):
        x, target = torch.randn(8, 31), torch.randn(8, 17)
        for model, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), target).backward()
            if model is dense:
                for lin, m in zip(dense[::2], masks, strict=True):
                    lin.weight.grad.mul_(m)
            opt.step()
    for lin, layer, m in zip(dense[::2], sparse[::2], masks, strict=True):
        assert torch.equal(lin.weight.detach()[~m], torch.zeros(int((~m).sum())))
        back = layer.to_linear()
        assert torch.equal(back.weight.detach()[~m], torch.zeros(int((~m).sum())))
        torch.testing.assert_close(back.weight.detach(), lin.weight.detach(), rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(back.bias.detach(), lin.bias.detach(), rtol=1e-4, atol=1e-5)
        # Optimizer state is per nonzero.
        assert opt_s.state[layer.values]["exp_avg"].shape == (layer.nnz,)


def test_round_trip_and_state_dict():
    lin = nn.Linear(13, 7)
    mask = _mask(7, 13, 0.5)
    layer = SparseTrainableLinear.from_linear(lin, mask)
    assert torch.equal(layer.weight_dense().detach(), lin.weight.detach() * mask)
    assert torch.equal(layer.mask(), mask)
    # Same number of kept weights, another pattern: loading replaces the pattern.
    other = SparseTrainableLinear.from_linear(nn.Linear(13, 7), mask.flip(0))
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.mask(), mask)
    x = torch.randn(3, 13, requires_grad=True)
    torch.testing.assert_close(other(x), layer(x))
    other(x).sum().backward()  # the transposed layout was rebuilt too
    layer_x = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer_x)


def test_refuses_other_dtypes_and_bad_masks():
    layer = SparseTrainableLinear.from_linear(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="float32 or float64 CPU"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects inputs"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="mask must be a bool"):
        SparseTrainableLinear.from_linear(nn.Linear(4, 3), torch.ones(3, 4))
    with pytest.raises(ValueError, match="float32 or float64 weights"):
        SparseTrainableLinear.from_linear(nn.Linear(4, 3, dtype=torch.bfloat16))
