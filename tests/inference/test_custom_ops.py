"""The sparse Linear kernels as custom ops (``inference/ops.py``): ``torch.compile`` of a
model with sparse layers traces it whole (``fullgraph=True``: no graph break at a sparse layer)
and computes what eager mode does, on each kernel path (CSR with the count-class layout or the
pattern kernel, BSR, and torch's fallback); the ops' fake kernels give the right shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    SparseConv2d,
    SparseLinear,
    _extension,
    dense_to_csr,
    ops,
    sparse_linear,
)


def _layer(out_f: int, in_f: int, density: float, block=(1, 1), activation="none", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) < density)
    layer = SparseLinear.from_dense(w, torch.randn(out_f, generator=g), block=block)
    layer.activation = activation
    return layer


class _Block(nn.Module):
    """Two sparse products with dense work between and around them, as in a Transformer's
    feed-forward block: what inductor may fuse once the products are graph nodes."""

    def __init__(self, block=(1, 1)):
        super().__init__()
        self.up = _layer(96, 40, 0.2, activation="gelu", seed=1)
        self.down = _layer(40, 96, 0.2, block=block, seed=2)
        self.norm = nn.LayerNorm(40)

    def forward(self, x):
        return self.norm(x + self.down(self.up(x)))


@pytest.fixture(autouse=True)
def _fresh_compile_cache():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
@pytest.mark.parametrize("rows", [1, 64, 256])
def test_torch_compile_traces_the_sparse_layers_whole_and_agrees(block, rows):
    model = _Block(block).eval()
    x = torch.randn(rows, 40)
    with torch.no_grad():
        eager = model(x)  # builds the layouts the compiled graph then reads
        if rows >= sparse_linear.PATTERN_KERNEL_MIN_ROWS and block == (1, 1):
            ext = _extension.load_extension()
            if ext is not None and getattr(ext, "HAVE_PATTERN_KERNEL", False):
                assert model.up._pattern_kernel is not None
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_the_torch_fallback_runs_under_the_op(monkeypatch):
    monkeypatch.setattr(_extension, "load_extension", lambda: None)
    layer = _layer(30, 50, 0.3, activation="relu")
    x = torch.randn(7, 50)
    y = ops.csr_linear(x, layer.crow_indices, layer.col_indices, layer.values, layer.bias,
                       50, 30, -1, -1, sparse_linear.ACTIVATIONS.index("relu"), [])
    torch.testing.assert_close(y, F.relu(F.linear(x, layer.dense_weight(), layer.bias)),
                               rtol=1e-5, atol=1e-5)
    blocked = _layer(30, 50, 0.3, block=(4, 4))
    y = ops.bsr_linear(x, blocked.crow_indices, blocked.col_indices, blocked.values,
                       blocked.bias, 50, 30, -1)
    torch.testing.assert_close(y, F.linear(x, blocked.dense_weight(), blocked.bias),
                               rtol=1e-5, atol=1e-5)


def test_the_fake_kernels_give_the_output_shape():
    crow, col, values = dense_to_csr(torch.eye(6, 4))
    args = (torch.randn(5, 4), crow, col, values, None, 4, 6, -1, -1, 0, [])
    torch.library.opcheck(ops.csr_linear, args, test_utils=("test_schema", "test_faketensor"))


class _ConvBlock(nn.Module):
    """A residual block of sparse convolutions (3x3 and 1x1, one strided), the shortcut's sum
    and ReLU fused into the last as ``compile_sparse`` does."""

    def __init__(self, block=(1, 1)):
        super().__init__()
        g = torch.Generator().manual_seed(4)

        def conv(cin, cout, k, s, p):
            dense = nn.Conv2d(cin, cout, k, s, p)
            with torch.no_grad():
                dense.weight.mul_(torch.rand(dense.weight.shape, generator=g) < 0.3)
            return SparseConv2d.from_conv(dense, block=block)

        self.a = conv(16, 16, 3, 1, 1)
        self.a.relu = True
        self.b = conv(16, 16, 1, 1, 0)
        self.down = conv(16, 16, 3, 2, 1)

    def forward(self, x):
        return self.down(self.b(self.a(x), residual=x, relu=True))


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_torch_compile_of_sparse_convolutions_agrees(block):
    model = _ConvBlock(block).eval()
    x = torch.randn(2, 16, 14, 14)
    with torch.no_grad():
        eager = model(x)  # caches the input offsets (and layouts) the traced graph reads
        compiled = torch.compile(model, fullgraph=block == (1, 1))  # BSR: eager, graph breaks
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
