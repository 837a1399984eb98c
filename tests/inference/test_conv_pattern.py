"""Sparse convolutions through code compiled for their weight's pattern (``conv_pattern.h``):
equal to ``F.conv2d`` on every path (in place with positions numbered across images, slices
that cross images, maps smaller than a slice, the prepared buffer image by image and tile by
tile, rows split between threads, several feature blocks, streamed outputs, residual and
ReLU); ``SparseConv2d`` taking it where its rows hold enough nonzeros and the call enough
positions (the rule worked by hand); the switch; the cache not pickled; a kernel of another
weight refused."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import SparseConv2d, dense_to_csr, sparse_conv


@pytest.fixture
def jit(ext):
    """The extension, where it compiles pattern kernels (x86-64, AVX-512, Linux)."""
    if not getattr(ext, "HAVE_PATTERN_KERNEL", False):
        pytest.skip("no pattern kernels on this CPU (x86-64 with AVX-512 on Linux only)")
    return ext


def _geometry(k: int, stride: int, pad: int, dilation: int = 1) -> list[int]:
    return [k, k, stride, stride, pad, pad, dilation, dilation]


CASES = [
    # (C, out, H, W, kernel, stride, padding, dilation, images)
    (16, 40, 7, 7, 1, 1, 0, 1, 8),  # in place: 392 positions, slices crossing images
    (8, 33, 3, 3, 1, 1, 0, 1, 7),  # 9 positions an image: one slice spans 2-3 images
    (6, 20, 1, 1, 1, 1, 0, 1, 37),  # 1x1 maps: 16 images in one slice
    (24, 64, 8, 8, 1, 1, 0, 1, 1),  # one image, whole tiles, rows split between threads
    (5, 70, 9, 13, 3, 1, 1, 1, 3),  # 3x3: the prepared buffer, odd sizes, 3 groups of rows
    (6, 32, 20, 20, 3, 2, 1, 1, 4),  # stride 2: phase planes, whole images per thread
    (3, 64, 11, 11, 3, 1, 2, 2, 1),  # dilation 2, one image: tiles and rows per thread
    (130, 31, 6, 6, 3, 1, 1, 1, 2),  # 1,170 columns: two feature blocks of 768
    (12, 24, 14, 14, 1, 2, 0, 1, 2),  # 1x1 of stride 2
]


def _case(case: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    C, out, H, W, k, *_, N = case
    torch.manual_seed(sum(case))
    weight = torch.randn(out, C, k, k) * (torch.rand(out, C, k, k) < 0.3)
    weight[::7] = 0  # empty rows: their outputs are the bias
    return weight, torch.randn(out), torch.randn(N, C, H, W)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_convolutions_through_the_compiled_code_equal_dense(jit, threads, case):
    C, out, H, W, k, stride, pad, dil, N = case
    weight, bias, x = _case(case)
    crow, col, values = dense_to_csr(weight.reshape(out, -1))
    geometry = _geometry(k, stride, pad, dil)
    offsets = jit.conv_offsets(col, C, H, W, geometry)
    kernel = jit.csr_pattern_kernel(crow, col, values, C * k * k, -1, -1, 1)
    ref = F.conv2d(x, weight, bias, stride, pad, dil)
    residual = torch.randn_like(ref)
    for relu in (False, True):
        for res in (None, residual):
            want = ref if res is None else ref + res
            want = want.relu() if relu else want
            got = jit.csr_conv2d(x, crow, offsets, values, bias, out, geometry, relu, -1, res,
                                 kernel)
            scale = want.abs().max().clamp_min(1.0)
            assert ((got - want).abs().max() / scale).item() <= 1e-5


def test_streamed_outputs_through_the_compiled_code_equal_dense(jit, threads):
    # Every output streamed (threshold 0): whole aligned vectors around the caches, the
    # partial ones (49 positions an image) stored plainly.
    C, out, N = 16, 40, 3
    weight = torch.randn(out, C, 1, 1) * (torch.rand(out, C, 1, 1) < 0.5)
    x = torch.randn(N, C, 7, 7)
    crow, col, values = dense_to_csr(weight.reshape(out, -1))
    geometry = _geometry(1, 1, 0)
    kernel = jit.csr_pattern_kernel(crow, col, values, C, -1, -1, 1)
    jit.set_stream_min_bytes(0)
    try:
        got = jit.csr_conv2d(x, crow, jit.conv_offsets(col, C, 7, 7, geometry), values, None,
                             out, geometry, True, -1, None, kernel)
    finally:
        jit.set_stream_min_bytes(-1)
    torch.testing.assert_close(got, F.conv2d(x, weight).relu(), rtol=1e-5, atol=1e-5)


def test_a_kernel_of_another_weight_is_refused(jit):
    weight = torch.randn(24, 4 * 9) * (torch.rand(24, 4 * 9) < 0.5)
    crow, col, values = dense_to_csr(weight)
    offsets = jit.conv_offsets(col, 4, 14, 14, _geometry(3, 1, 1))
    x = torch.randn(1, 4, 14, 14)
    wider = jit.csr_pattern_kernel(*dense_to_csr(torch.randn(40, 4 * 9)), 4 * 9, -1, -1, 1)
    with pytest.raises(RuntimeError, match="output width"):
        jit.csr_conv2d(x, crow, offsets, values, None, 24, _geometry(3, 1, 1), False, -1, None,
                       wider)
    denser = jit.csr_pattern_kernel(*dense_to_csr(torch.randn(24, 4 * 9)), 4 * 9, -1, -1, 1)
    with pytest.raises(RuntimeError, match="nonzeros"):
        jit.csr_conv2d(x, crow, offsets, values, None, 24, _geometry(3, 1, 1), False, -1, None,
                       denser)


def _sparse_conv(c_in: int, c_out: int, k: int, per_row: int) -> tuple[nn.Conv2d, SparseConv2d]:
    """A convolution whose every output row keeps exactly ``per_row`` weights."""
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    with torch.no_grad():
        flat = conv.weight.view(c_out, -1)
        keep = torch.rand_like(flat).argsort(dim=1)[:, :per_row]
        flat.copy_(torch.zeros_like(flat).scatter(1, keep, flat.gather(1, keep)))
    return conv, SparseConv2d.from_conv(conv)


def test_sparse_conv2d_takes_the_compiled_code_from_enough_nonzeros_and_positions(jit):
    torch.manual_seed(0)
    need = sparse_conv.CONV_PATTERN_MIN_ROW_NONZEROS
    assert sparse_conv.CONV_PATTERN_MIN_POSITIONS == 256
    x = torch.randn(3, 8, 10, 10)  # 3 images of 10x10 outputs: 300 positions
    with torch.no_grad():
        conv, sparse = _sparse_conv(8, 40, 3, need)  # 72 columns, exactly enough per row
        few = x[:2]  # 200 positions: too few to reuse the code over
        torch.testing.assert_close(sparse(few), conv(few), rtol=1e-4, atol=1e-4)
        assert sparse._pattern_kernel is None
        torch.testing.assert_close(sparse(x), conv(x), rtol=1e-4, atol=1e-4)
        assert sparse._pattern_kernel is not None
        thin, thin_sparse = _sparse_conv(8, 40, 3, need - 1)  # one short
        torch.testing.assert_close(thin_sparse(x), thin(x), rtol=1e-4, atol=1e-4)
        assert thin_sparse._pattern_kernel is None


def test_the_switch_turns_the_compiled_code_off_with_the_same_result(jit):
    torch.manual_seed(1)
    conv, sparse = _sparse_conv(16, 48, 3, 60)
    x = torch.randn(4, 16, 9, 9)  # 324 positions
    with torch.no_grad():
        compiled = sparse(x)
        try:
            sparse_conv.CONV_PATTERN = False
            plain = sparse(x)
        finally:
            sparse_conv.CONV_PATTERN = True
        torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain, conv(x), rtol=1e-4, atol=1e-4)


def test_the_compiled_code_is_not_pickled_and_follows_weight_changes(jit):
    torch.manual_seed(2)
    conv, sparse = _sparse_conv(16, 32, 3, 40)
    x = torch.randn(5, 16, 8, 8)  # 320 positions
    with torch.no_grad():
        sparse(x)
        assert sparse._pattern_kernel is not None
        assert pickle.loads(pickle.dumps(sparse))._pattern_kernel is None
        sparse.values.mul_(2.0)  # the cached code holds the old weights: built again
        conv.weight.mul_(2.0)
        torch.testing.assert_close(sparse(x), conv(x), rtol=1e-4, atol=1e-4)
