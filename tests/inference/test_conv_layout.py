"""Sparse convolutions through the count-class layout of their weight: when the kernels take
it (``conv_layout_pays``, worked by hand from the geometry), convolutions through it equal to
``F.conv2d`` on every path it has (in place, through the prepared buffer, whole images per
thread, tiles per thread, partial tiles, residual and ReLU), and ``SparseConv2d`` using it."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import SparseConv2d, dense_to_csr, sparse_conv


@pytest.fixture
def layout_ext(ext, monkeypatch):
    """The kernels, where the build runs convolutions through the layout (AVX-512), with the
    compiled pattern kernels, which take precedence over it, turned off."""
    if not ext.conv_layout_pays(10 * 9, 1, 14, 14, [3, 3, 1, 1, 1, 1, 1, 1]):
        pytest.skip("this build runs no convolution through the layout (no AVX-512)")
    monkeypatch.setattr(sparse_conv, "CONV_PATTERN", False)
    return ext


def _geometry(k: int, stride: int, pad: int, dilation: int = 1) -> list[int]:
    return [k, k, stride, stride, pad, pad, dilation, dilation]


def test_the_layout_is_taken_where_runs_start_off_a_line_and_columns_are_full_enough(layout_ext):
    pays = layout_ext.conv_layout_pays
    # 3x3, stride 1, padding 1 on 14x14: the tap in column 1 reads one float after the
    # plane's start, off a 64-byte line. 4 channels x 9 taps = 36 columns.
    assert pays(10 * 36, 4, 14, 14, _geometry(3, 1, 1))
    assert not pays(10 * 36 - 1, 4, 14, 14, _geometry(3, 1, 1))  # under 10 per column
    # 1x1 read in place: channel c starts at c * H * W floats: 8x8 = 64 (whole lines) is
    # aligned for every channel, 7x7 = 49 is not.
    assert not pays(10 * 16, 16, 8, 8, _geometry(1, 1, 0))
    assert pays(10 * 16, 16, 7, 7, _geometry(1, 1, 0))
    # 1x1 of stride 2 reads one phase plane per channel; planes are whole lines apart.
    assert not pays(10 * 16, 16, 14, 14, _geometry(1, 2, 0))


CASES = [
    # (C, out, H, W, kernel, stride, padding, dilation, images)
    (4, 48, 14, 14, 3, 1, 1, 1, 1),  # 4 tiles of the 14 x 16 wrapped positions
    (5, 40, 9, 13, 3, 1, 1, 1, 3),  # odd sizes, one partial tile per image
    (6, 32, 20, 20, 3, 2, 1, 1, 4),  # stride 2: phase planes; whole images per thread
    (3, 64, 11, 11, 3, 1, 2, 2, 1),  # dilation 2
    (16, 48, 7, 7, 1, 1, 0, 1, 2),  # 1x1 in place, 49 positions: a masked partial tile
    (20, 32, 13, 17, 1, 1, 0, 1, 5),  # 1x1 in place, 221 positions
    (2, 160, 30, 30, 5, 1, 2, 1, 1),  # 5x5, rows beyond the unrolled counts
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_convolutions_through_the_layout_equal_dense(layout_ext, threads, case):
    C, out, H, W, k, stride, pad, dil, N = case
    torch.manual_seed(sum(case))
    weight = torch.randn(out, C, k, k) * (torch.rand(out, C, k, k) < 0.4)
    weight[::5] = 0  # empty rows
    bias = torch.randn(out)
    x = torch.randn(N, C, H, W)
    crow, col, values = dense_to_csr(weight.reshape(out, -1))
    geometry = _geometry(k, stride, pad, dil)
    assert layout_ext.conv_layout_pays(values.numel(), C, H, W, geometry)
    offsets = layout_ext.conv_offsets(col, C, H, W, geometry)
    layout = layout_ext.csr_panel_layout(crow, col, values, C * k * k, -1, 1)
    ref = F.conv2d(x, weight, bias, stride, pad, dil)
    residual = torch.randn_like(ref)
    for relu in (False, True):
        for res in (None, residual):
            want = ref if res is None else ref + res
            want = want.relu() if relu else want
            got = layout_ext.csr_conv2d(x, crow, offsets, values, bias, out, geometry, relu,
                                        -1, res, layout)
            scale = want.abs().max().clamp_min(1.0)
            assert ((got - want).abs().max() / scale).item() <= 1e-5


def test_a_layout_of_another_weight_is_refused(layout_ext):
    weight = torch.randn(24, 4 * 9) * (torch.rand(24, 4 * 9) < 0.5)
    crow, col, values = dense_to_csr(weight)
    other = layout_ext.csr_panel_layout(*dense_to_csr(torch.randn(12, 4 * 9)), 4 * 9, -1, 1)
    offsets = layout_ext.conv_offsets(col, 4, 14, 14, _geometry(3, 1, 1))
    with pytest.raises(RuntimeError, match="output width"):
        layout_ext.csr_conv2d(torch.randn(1, 4, 14, 14), crow, offsets, values, None, 24,
                       _geometry(3, 1, 1), False, -1, None, other)


def _sparse_conv(c_in: int, c_out: int, k: int, density: float) -> tuple[nn.Conv2d, SparseConv2d]:
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < density)
    return conv, SparseConv2d.from_conv(conv)


def test_sparse_conv2d_builds_the_layout_only_where_it_pays(layout_ext):
    torch.manual_seed(0)
    conv, sparse = _sparse_conv(8, 64, 3, 0.5)  # 32 nonzeros per column
    x = torch.randn(2, 8, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), rtol=1e-4, atol=1e-4)
        assert sparse._panel_layout is not None
        thin, thin_sparse = _sparse_conv(8, 8, 3, 0.5)  # 4 per column: plain CSR rows
        torch.testing.assert_close(thin_sparse(x), thin(x), rtol=1e-4, atol=1e-4)
        assert thin_sparse._panel_layout is None


def test_the_switch_turns_the_layout_off_with_the_same_result(layout_ext):
    torch.manual_seed(1)
    conv, sparse = _sparse_conv(6, 48, 3, 0.6)
    x = torch.randn(1, 6, 15, 15)
    with torch.no_grad():
        through_layout = sparse(x)
        try:
            sparse_conv.CONV_LAYOUT = False
            plain = sparse(x)
        finally:
            sparse_conv.CONV_LAYOUT = True
        torch.testing.assert_close(through_layout, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain, conv(x), rtol=1e-4, atol=1e-4)


def test_the_conv_layout_is_not_pickled(layout_ext):
    _, sparse = _sparse_conv(8, 64, 3, 0.5)
    with torch.no_grad():
        sparse(torch.randn(1, 8, 14, 14))
    assert sparse._panel_layout is not None
    assert pickle.loads(pickle.dumps(sparse))._panel_layout is None
