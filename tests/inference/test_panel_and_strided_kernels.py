"""The large-batch CSR product (inputs packed into panels) and the CSR convolution of any
stride (input split into stride phases), each against the dense layer with the same zeros.

Shapes are picked so every branch runs: panel widths 16, 32 and 64 (64 by default, the others
forced), feature blocks that split the input unevenly or not at all, a last panel narrower
than the rest, output row blocks of 16 (the transposed store) and a partial one, convolution
outputs that end in a partial 64-column tile, strides 1-3 with and without padding and
dilation, and both ways of splitting a batch over two threads.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import _extension
from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import SparseLinear, set_kernel_options


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def ext():
    module = _extension.load_extension()
    if module is None:
        pytest.skip("C++ extension unavailable here (no compiler or ninja)")
    yield module
    module.set_spmm_panel(-1)
    module.set_spmm_kblock(-1)


# Panels from 128 rows; in_features 700 and 1500 span 3 and 6 blocks of 256 features, the
# last one partial; 37 and 9 fit in one.
@pytest.mark.parametrize("shape", [(37, 37), (64, 700), (53, 1500), (16, 9)])
@pytest.mark.parametrize("batch", [127, 128, 300, 1031])
def test_panelled_product_equals_dense_and_unpanelled(ext, threads, shape, batch):
    out_f, in_f = shape
    torch.manual_seed(batch + out_f)
    w = torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) < 0.15)
    b = torch.randn(out_f)
    layer = SparseLinear.from_dense(w, b)
    x = torch.randn(batch, in_f)
    ref = F.linear(x.double(), w.double(), b.double()).float()
    ext.set_spmm_panel(-1)
    panelled = layer(x)  # from 64 rows, through the layer's count-class layout
    # The blocked loop over plain CSR (what a call without a layout runs, e.g. training's).
    blocked = ext.csr_linear(x, layer.crow_indices, layer.col_indices, layer.values, b, in_f)
    ext.set_spmm_panel(0)
    whole = layer(x)
    # Each order against float64: they differ from each other only in rounding.
    assert _rel(panelled, ref) <= 1e-5
    assert _rel(blocked, ref) <= 1e-5
    assert _rel(whole, ref) <= 1e-5


def test_any_panel_width_and_feature_block_gives_the_dense_result(ext):
    """Width and block size only change the tiling: widths 16 and 32 (one and two AVX-512
    registers per row), 128 (wider than the blocked kernel takes), blocks smaller than,
    equal to and wider than the input, and no blocks."""
    torch.manual_seed(0)
    w = torch.randn(40, 300) * (torch.rand(40, 300) < 0.1)
    layer = SparseLinear.from_dense(w, None)
    x = torch.randn(700, 300)
    ref = x @ w.t()
    for width in (16, 32, 64, 128):
        for kblock in (0, 64, 100, 300, 512):
            ext.set_spmm_panel(width)
            ext.set_spmm_kblock(kblock)
            assert _rel(layer(x), ref) <= 1e-5, (width, kblock)


def test_three_dimensional_input_is_one_large_batch(ext):
    """(batch, tokens, features), as in a Transformer: 8 x 128 tokens is one product of 1,024
    rows, the case the panels are for."""
    torch.manual_seed(1)
    w = torch.randn(96, 48) * (torch.rand(96, 48) < 0.1)
    layer = SparseLinear.from_dense(w, torch.zeros(96))
    x = torch.randn(8, 128, 48)
    assert _rel(layer(x), x @ w.t()) <= 1e-5


CONV_GEOMETRIES = [
    dict(kernel_size=3, stride=2, padding=1),  # ResNet's downsampling 3x3
    dict(kernel_size=1, stride=2),  # and its projection shortcut
    dict(kernel_size=7, stride=2, padding=3),  # a ResNet stem
    dict(kernel_size=3, stride=3, padding=2, dilation=2),
    dict(kernel_size=(2, 5), stride=(3, 1), padding=(0, 2), dilation=(2, 1)),
    dict(kernel_size=(3, 1), stride=(1, 2), padding=(1, 0)),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=1),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
@pytest.mark.parametrize("images", [1, 2, 5])
def test_csr_conv_any_stride_equals_dense(ext, threads, geometry, images):
    torch.manual_seed(images)
    conv = nn.Conv2d(6, 21, **geometry)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.2)
    sparse = SparseConv2d.from_conv(conv)
    # 30x23: outputs of several 64-column tiles and a partial one; 9x10: fewer than 64.
    for h, w in ((30, 23), (9, 10)):
        x = torch.randn(images, 6, h, w)
        with torch.no_grad():
            assert _rel(sparse(x), conv(x)) <= 1e-5, (h, w)


# A 1x1 convolution of stride 1 reads its input in place: its last tile is 1-4 vectors of
# 16 positions, the last one masked. 49 and 196 positions are ResNet-50's 7x7 and 14x14 maps.
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (5, 7), (4, 5), (8, 8), (1, 1), (3, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_in_place_pointwise_conv_any_map_size(ext, threads, hw, relu):
    torch.manual_seed(hw[0] * 31 + hw[1])
    conv = nn.Conv2d(40, 19, 1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.15)
    sparse = SparseConv2d.from_conv(conv)
    sparse.relu = relu
    x = torch.randn(3, 40, *hw)
    before = x.clone()
    with torch.no_grad():
        got, ref = sparse(x), conv(x)
    if relu:
        ref = ref.relu()
    assert got.shape == ref.shape
    assert _rel(got, ref) <= 1e-5
    assert torch.equal(x, before)


def test_fused_relu_equals_relu_after(ext, threads):
    conv = nn.Conv2d(5, 12, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    sparse = SparseConv2d.from_conv(conv)
    sparse.relu = True
    x = torch.randn(3, 5, 17, 16)
    with torch.no_grad():
        got, ref = sparse(x), conv(x).relu()
    assert (got >= 0).all() and (got == 0).any()
    assert _rel(got, ref) <= 1e-5
    assert "relu" in repr(sparse)


def test_offsets_follow_the_input_size(ext):
    """The nonzeros' input offsets depend on the input size: one module run on several sizes,
    back and forth, keeps giving the dense result."""
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.4)
    sparse = SparseConv2d.from_conv(conv)
    for h, w in ((12, 12), (7, 9), (12, 12), (31, 5)):
        x = torch.randn(2, 4, h, w)
        with torch.no_grad():
            assert _rel(sparse(x), conv(x)) <= 1e-5, (h, w)
    assert set(sparse._offsets) == {(12, 12), (7, 9), (31, 5)}


def test_conv_offsets_are_the_tap_positions(ext):
    """Worked by hand: a 3x3 kernel, stride 2, padding 1 on a 5x6 input. The padded input is
    7x8, split into 2x2 phases of 4x4; tap (c, i, j) reads phase (i % 2, j % 2) of channel c
    at row i // 2, column j // 2, so its offset is ((c*2 + i%2)*2 + j%2)*16 + (i//2)*4 + j//2."""
    col = torch.tensor([0, 4, 8, 9 + 5], dtype=torch.int32)  # (0,0,0) (0,1,1) (0,2,2) (1,1,2)
    off = ext.conv_offsets(col, 2, 5, 6, [3, 3, 2, 2, 1, 1, 1, 1])
    assert off.tolist() == [0, 3 * 16, 0 * 16 + 4 + 1, (2 * 2 + 1 * 2 + 0) * 16 + 1]


def test_conv_kernel_refuses_bad_geometry(ext):
    col = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        ext.conv_offsets(col, 1, 2, 2, [5, 5, 1, 1, 0, 0, 1, 1])
    with pytest.raises(RuntimeError, match="must be positive"):
        ext.conv_offsets(col, 1, 8, 8, [3, 3, 0, 1, 0, 0, 1, 1])
    with pytest.raises(RuntimeError, match="out of range"):
        ext.conv_offsets(torch.tensor([9], dtype=torch.int32), 1, 8, 8, [3, 3, 1, 1, 0, 0, 1, 1])


@pytest.mark.parametrize("threading", ["serial", "adaptive", "pool"])
def test_conv_and_panels_under_each_threading_mode(ext, threading):
    before = torch.get_num_threads()
    old = set_kernel_options(threading=threading)
    try:
        torch.set_num_threads(2)
        conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.mul_(torch.rand_like(conv.weight) < 0.2)
        sparse = SparseConv2d.from_conv(conv)
        w = torch.randn(33, 80) * (torch.rand(33, 80) < 0.2)
        layer = SparseLinear.from_dense(w, None)
        for n in (1, 3, 8):
            x = torch.randn(n, 8, 20, 21)
            with torch.no_grad():
                assert _rel(sparse(x), conv(x)) <= 1e-5, n
        x = torch.randn(517, 80)  # panels from 128 rows
        assert _rel(layer(x), x @ w.t()) <= 1e-5
    finally:
        set_kernel_options(**old)
        torch.set_num_threads(before)


def test_conv_kernel_refuses_offsets_of_another_input_size(ext):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    sparse = SparseConv2d.from_conv(conv)
    geometry = [3, 3, 1, 1, 1, 1, 1, 1]
    small = ext.conv_offsets(sparse.col_indices, 3, 6, 6, geometry)
    large = ext.conv_offsets(sparse.col_indices, 3, 40, 40, geometry)
    x = torch.randn(1, 3, 6, 6)
    ext.csr_conv2d(x, sparse.crow_indices, small, sparse.values, None, 4, geometry)
    with pytest.raises(RuntimeError, match="another input size"):
        ext.csr_conv2d(x, sparse.crow_indices, large, sparse.values, None, 4, geometry)
