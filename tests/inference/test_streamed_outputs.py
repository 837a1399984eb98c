"""Outputs written by non-temporal stores (``set_stream_min_bytes``): with the threshold at 0
every output the kernels can stream is streamed, and products and convolutions still equal
dense, on aligned and unaligned outputs, one and two threads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsebench.inference import dense_to_csr


@pytest.fixture
def streaming(ext):
    """The kernels with every output they can stream streamed."""
    ext.set_stream_min_bytes(0)
    yield ext
    ext.set_stream_min_bytes(-1)


@pytest.mark.parametrize("out_f", [64, 50])  # 50: rows of y start off a cache line
@pytest.mark.parametrize("batch", [64, 200])
def test_streamed_linear_outputs_equal_dense(streaming, threads, out_f, batch):
    torch.manual_seed(out_f + batch)
    w = torch.randn(out_f, 96) * (torch.rand(out_f, 96) < 0.2)
    b = torch.randn(out_f)
    x = torch.randn(batch, 96)
    crow, col, values = dense_to_csr(w)
    parts = 1 if threads == 1 else 2 * threads
    layout = streaming.csr_panel_layout(crow, col, values, 96, -1, parts)
    got = streaming.csr_linear(x, crow, col, values, b, 96, -1, -1, 1, layout)
    torch.testing.assert_close(got, F.linear(x, w, b).relu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [16, 9])  # 9x9 = 81 positions: the last tile is not streamed
@pytest.mark.parametrize("images", [1, 5])
def test_streamed_convolution_outputs_equal_dense(streaming, threads, hw, images):
    torch.manual_seed(hw + images)
    w = torch.randn(40, 24, 1, 1) * (torch.rand(40, 24, 1, 1) < 0.3)
    b = torch.randn(40)
    x = torch.randn(images, 24, hw, hw)
    crow, col, values = dense_to_csr(w.reshape(40, -1))
    geometry = [1, 1, 1, 1, 0, 0, 1, 1]
    offsets = streaming.conv_offsets(col, 24, hw, hw, geometry)
    ref = F.conv2d(x, w, b)
    residual = torch.randn_like(ref)
    got = streaming.csr_conv2d(x, crow, offsets, values, b, 40, geometry, True, -1, residual)
    torch.testing.assert_close(got, (ref + residual).relu(), rtol=1e-5, atol=1e-5)
