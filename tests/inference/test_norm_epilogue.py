"""``LayerNorm(y + residual)`` applied by a sparse product to its own rows: the kernels'
epilogue against ``F.layer_norm`` on every product path (one row, partial and whole panels,
compiled pattern kernels, the count-class layout, the chained pair, one and two threads);
bad arguments refused in one sentence; ``fuse_residual_norm`` rewriting a post-norm block
only where the sum feeds the norm alone; a Linear fed a residual never chained to it; the
switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsebench.inference import SparseLinear, dense_to_csr, fuse_residual_norm, sparse_linear
from sparsebench.inference.chains import chain_linears


@pytest.fixture
def norm_ext(ext):
    """The kernels, where they apply the layer norm epilogue (AVX-512)."""
    if not getattr(ext, "HAVE_NORM_EPILOGUE", False):
        pytest.skip("this build has no layer norm epilogue (no AVX-512)")
    return ext


def _sparse(out_f: int, in_f: int, density: float, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) < density)


@pytest.mark.parametrize("rows", [1, 7, 64, 100, 256, 320])
@pytest.mark.parametrize("layout", ["none", "counted", "compiled"])
def test_the_epilogue_equals_layer_norm_of_the_sum(norm_ext, threads, rows, layout):
    w, b = _sparse(48, 40, 0.3, rows), torch.randn(48)
    x, r = torch.randn(rows, 40), torch.randn(rows, 48)
    nw, nb = torch.randn(48), torch.randn(48)
    crow, col, values = dense_to_csr(w)
    parts = 1 if threads == 1 else 2 * threads
    kernel = {"none": [],
              "counted": norm_ext.csr_panel_layout(crow, col, values, 40, -1, parts),
              "compiled": norm_ext.csr_pattern_kernel(crow, col, values, 40, -1, -1, parts)}
    y = F.linear(x, w, b)
    for res, weight, bias in ((r, nw, nb), (None, nw, nb), (r, None, None)):
        want = F.layer_norm(y if res is None else y + res, (48,), weight, bias, 1e-5)
        got = norm_ext.csr_linear(x, crow, col, values, b, 40, -1, -1, 0, kernel[layout],
                                  residual=res, norm_weight=weight, norm_bias=bias, eps=1e-5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_chained_pair_applies_the_epilogue_to_its_panels(norm_ext, threads):
    jit = norm_ext
    if not getattr(jit, "HAVE_PATTERN_KERNEL", False):
        pytest.skip("no pattern kernels on this CPU")
    w1, w2 = _sparse(96, 32, 0.3, 1), _sparse(32, 96, 0.3, 2)
    b1, b2 = torch.randn(96), torch.randn(32)
    x, r = torch.randn(200, 32), torch.randn(200, 32)
    nw, nb = torch.randn(32), torch.randn(32)
    first = jit.csr_pattern_kernel(*dense_to_csr(w1), 32, -1, -1, 1)
    second = jit.csr_pattern_kernel(*dense_to_csr(w2), 96, -1, -1, 1)
    y = torch.zeros(200, 32)
    jit.csr_pattern_chain(x, first, b1, 2, second, b2, 0, y, 192, -1, residual=r,
                          norm_weight=nw, norm_bias=nb, eps=1e-6)
    want = F.layer_norm(F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2) + r, (32,), nw, nb, 1e-6)
    torch.testing.assert_close(y[:192], want[:192], rtol=1e-5, atol=1e-5)
    assert (y[192:] == 0).all()  # the rows past `rows` are the caller's


def test_bad_epilogue_arguments_get_one_sentence(norm_ext):
    w = _sparse(48, 40, 0.3, 0)
    crow, col, values = dense_to_csr(w)
    x = torch.randn(4, 40)
    with pytest.raises(RuntimeError, match="only added before a layer norm"):
        norm_ext.csr_linear(x, crow, col, values, None, 40, residual=torch.randn(4, 48))
    with pytest.raises(RuntimeError, match="the residual must be contiguous float32 with 192"):
        norm_ext.csr_linear(x, crow, col, values, None, 40, residual=torch.randn(3, 48),
                            eps=1e-5)
    with pytest.raises(RuntimeError, match="norm's weight must be"):
        norm_ext.csr_linear(x, crow, col, values, None, 40, norm_weight=torch.randn(47),
                            eps=1e-5)
    crow, col, values = dense_to_csr(_sparse(40, 40, 0.3, 0))
    with pytest.raises(RuntimeError, match="a multiple of 16 wide, got 40"):
        norm_ext.csr_linear(x, crow, col, values, None, 40, eps=1e-5)


class PostNorm(nn.Module):
    """BERT's attention output: norm(dropout(dense(h)) + residual)."""

    def __init__(self, width: int = 32, extra_use: bool = False) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.dropout = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.extra_use = extra_use

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        total = self.dropout(self.dense(h)) + residual
        out = self.norm(total)
        return out + total if self.extra_use else out


def _sparsified(module: nn.Module) -> nn.Module:
    module.eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_()
                m.bias.normal_()
    dense = module.dense
    dense.weight.data.mul_(torch.rand_like(dense.weight) < 0.4)
    module.dense = SparseLinear.from_linear(dense)
    return module


def test_a_post_norm_block_becomes_one_call_with_the_same_output(norm_ext):
    torch.manual_seed(0)
    block = _sparsified(PostNorm())
    h, r = torch.randn(3, 70, 32), torch.randn(3, 70, 32)
    with torch.no_grad():
        want = block(h, r)
        assert fuse_residual_norm(block) == 1
        assert block.dense.fused_norm is block.norm
        torch.testing.assert_close(block(h, r), want, rtol=1e-5, atol=1e-5)
        try:
            sparse_linear.NORM_EPILOGUE = False  # the sum and norm after the product
            torch.testing.assert_close(block(h, r), want, rtol=1e-5, atol=1e-5)
        finally:
            sparse_linear.NORM_EPILOGUE = True


def test_blocks_whose_sum_is_used_elsewhere_or_whose_dropout_trains_stay_as_they_are(norm_ext):
    used_twice = _sparsified(PostNorm(extra_use=True))
    assert fuse_residual_norm(used_twice) == 0
    training = _sparsified(PostNorm())
    training.dropout.train()
    assert fuse_residual_norm(training) == 0


class TwoLinears(nn.Module):
    """a's output feeds b, and is also b's residual: not a chainable pair."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.norm(self.b(h) + h)


def test_a_linear_whose_output_is_also_a_residual_is_not_chained(norm_ext):
    torch.manual_seed(1)
    model = TwoLinears().eval()
    for lin in (model.a, model.b):
        lin.weight.data.mul_(torch.rand_like(lin.weight) < 0.3)
    x = torch.randn(256, 32)
    with torch.no_grad():
        want = model(x)
        model.a, model.b = SparseLinear.from_linear(model.a), SparseLinear.from_linear(model.b)
        assert fuse_residual_norm(model) == 1
        assert model.b.fused_norm is model.norm  # the residual goes into b's call
        assert chain_linears(model, x) == 0  # and so a cannot hand its output to b alone
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
