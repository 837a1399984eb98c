"""The sparse training step's backward kernels against dense products worked in float64: the
weight gradient at the kept positions (``csr_sddmm``, read at the mask) and the input gradient
from W's own rows (``csr_matmul_scatter``); odd shapes, batch 1, empty rows, both index
widths, two threads."""

from __future__ import annotations

import pytest
import torch

from sparsebench.inference import load_extension
from sparsebench.inference.sparse_training import CsrPattern

pytestmark = pytest.mark.skipif(load_extension() is None,
                                reason="the compiled kernels are unavailable")


def _case(batch: int, out_f: int, in_f: int, density: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_f, in_f, generator=g) < density
    mask[min(3, out_f - 1)] = False  # an empty row
    grad_out = torch.randn(batch, out_f, generator=g)
    x = torch.randn(batch, in_f, generator=g)
    expected = (grad_out.double().t() @ x.double())[mask]  # row-major: CSR order
    return CsrPattern(mask), grad_out, x, expected


@pytest.mark.parametrize("batch, out_f, in_f, density", [
    (1, 5, 7, 0.5),          # batch 1, nothing a multiple of 16
    (37, 33, 130, 0.2),      # ragged batch and row groups
    (128, 64, 256, 0.1),     # whole 16 x 16 tiles
    (3, 40, 40_000, 0.001),  # int32 column indices
])
@pytest.mark.parametrize("threads", [1, 2])
def test_kept_positions_of_the_dense_gradient(batch, out_f, in_f, density, threads):
    pattern, grad_out, x, expected = _case(batch, out_f, in_f, density, seed=batch + in_f)
    assert pattern.col.dtype == (torch.int16 if in_f < 2**15 else torch.int32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = load_extension().csr_sddmm(grad_out, x, pattern.crow, pattern.col)
        via_pattern = pattern.sddmm(grad_out, x)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == torch.float32 and got.shape == (pattern.nnz,)
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * scale)
    assert torch.equal(got, via_pattern)


def test_strided_inputs_and_bad_shapes():
    pattern, grad_out, x, expected = _case(20, 18, 24, 0.3, seed=1)
    got = load_extension().csr_sddmm(grad_out.t().contiguous().t(), x.t().contiguous().t(),
                                     pattern.crow, pattern.col)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError, match="share their batch"):
        load_extension().csr_sddmm(grad_out[:5], x, pattern.crow, pattern.col)
    with pytest.raises(RuntimeError, match="crow must be int32"):
        load_extension().csr_sddmm(grad_out[:, :10], x, pattern.crow, pattern.col)


@pytest.mark.parametrize("block", [16, 0])
def test_batch_taken_in_passes_sums_the_same(block):
    # 37 rows in passes of 16 (16, 16, then 5) or all at once: the same sums to rounding.
    pattern, grad_out, x, expected = _case(37, 33, 130, 0.2, seed=5)
    ext = load_extension()
    ext.set_sddmm_batch_block(block)
    try:
        got = ext.csr_sddmm(grad_out, x, pattern.crow, pattern.col)
    finally:
        ext.set_sddmm_batch_block(-1)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch, out_f, in_f, density", [
    (1, 5, 7, 0.5),
    (37, 33, 130, 0.2),       # a ragged last block of 16 batch rows
    (64, 300, 16, 0.3),       # more outputs than inputs (a vocabulary projection's shape)
    (3, 40, 40_000, 0.001),   # int32 column indices
])
@pytest.mark.parametrize("threads", [1, 2])
def test_input_gradient_scattered_from_the_rows_of_w(batch, out_f, in_f, density, threads):
    pattern, grad_out, _, _ = _case(batch, out_f, in_f, density, seed=out_f + in_f)
    values = torch.randn(pattern.nnz, generator=torch.Generator().manual_seed(2))
    weight = torch.zeros(out_f, in_f, dtype=torch.float64)
    weight[pattern.rows, pattern.cols] = values.double()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = load_extension().csr_matmul_scatter(grad_out, pattern.crow, pattern.col, values,
                                                  in_f)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (batch, in_f) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), grad_out.double() @ weight, rtol=0, atol=1e-4)
