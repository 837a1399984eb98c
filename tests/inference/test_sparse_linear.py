"""SparseLinear equals dense F.linear within 1e-5 relative error, on both kernel paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import SparseLinear, _extension, dense_to_csr, kernel_path
from sparsebench.inference.sparse_linear import set_kernel_options


def _weight(out_f: int, in_f: int, density: float, empty_rows: bool = False) -> torch.Tensor:
    w = torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) < density)
    if empty_rows and out_f > 2:
        w[:: max(out_f // 3, 1)] = 0
    return w


def _check(layer: SparseLinear, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor) -> None:
    with torch.no_grad():
        got = layer(x)
    ref = F.linear(x, w, b)
    assert got.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-30)
    assert ((got - ref).abs().max() / scale).item() <= 1e-5


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (53, 37), (129, 33), (16, 64)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_dense_for_odd_shapes_and_batches(kernel, shape, density, bias):
    out_f, in_f = shape
    w = _weight(out_f, in_f, density, empty_rows=True)
    b = torch.randn(out_f) if bias else None
    layer = SparseLinear.from_dense(w, b)
    assert kernel_path() == kernel
    for batch in (1, 2, 7, 8, 9, 16, 33, 56, 64, 100, 120, 130):
        _check(layer, w, b, torch.randn(batch, in_f))


@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 7), (3, 4, 2)])
def test_any_leading_shape(kernel, lead):
    w = _weight(24, 40, 0.2)
    b = torch.randn(24)
    _check(SparseLinear.from_dense(w, b), w, b, torch.randn(*lead, 40))


def test_large_batch_and_non_contiguous_input(kernel):
    w = _weight(300, 200, 0.1)
    layer = SparseLinear.from_dense(w)
    _check(layer, w, None, torch.randn(300, 200))
    x = torch.randn(200, 257).t()  # (257, 200) view, not contiguous
    _check(layer, w, None, x)


def test_zero_batch(kernel):
    layer = SparseLinear.from_dense(_weight(5, 6, 0.5))
    with torch.no_grad():
        assert layer(torch.randn(0, 6)).shape == (0, 5)


def test_csr_arrays_and_index_dtype():
    w = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -3.0]])
    crow, col, values = dense_to_csr(w)
    assert crow.tolist() == [0, 1, 1, 3]
    assert col.tolist() == [1, 0, 2] and col.dtype == torch.int16
    assert values.tolist() == [2.0, 1.0, -3.0]
    wide = SparseLinear.from_dense(torch.eye(3, 40000))
    assert wide.col_indices.dtype == torch.int32


@pytest.mark.slow
def test_int32_indices_wide_layer(kernel):
    w = _weight(8, 40000, 0.01)
    _check(SparseLinear.from_dense(w), w, None, torch.randn(20, 40000))


def test_round_trip_to_linear_is_exact():
    lin = nn.Linear(17, 9)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) < 0.3)
    back = SparseLinear.from_linear(lin).to_linear()
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)


def test_other_dtype_takes_dense_path():
    w = _weight(6, 5, 0.5)
    layer = SparseLinear.from_dense(w)
    x = torch.randn(3, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, w.double()))


def test_refuses_autograd_and_bad_shapes():
    layer = SparseLinear.from_dense(_weight(4, 3, 0.5))
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match="col_indices must lie"):
        SparseLinear(
            3,
            1,
            torch.tensor([0, 1], dtype=torch.int32),
            torch.tensor([3], dtype=torch.int16),
            torch.ones(1),
        )


def test_fallback_is_announced(monkeypatch, caplog):
    monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    _extension._reset_for_tests()
    try:
        with caplog.at_level("WARNING"):
            assert _extension.load_extension() is None
        assert "torch CSR fallback" in caplog.text and _extension.DISABLE_ENV in caplog.text
    finally:
        _extension._reset_for_tests()


@pytest.mark.parametrize("spmv", ["scalar", "gather16", "gather8"])
@pytest.mark.parametrize("threading", ["serial", "openmp", "pool", "adaptive"])
def test_kernel_variants_match_dense(kernel, spmv, threading):
    """Every batch-1 kernel and every threading mode gives the dense result (big enough to
    be split into chunks, with int16 and int32 indices)."""
    if kernel == "torch-csr" and (spmv, threading) != ("scalar", "pool"):
        pytest.skip("the torch CSR fallback ignores kernel options; one combination covers it")
    old = set_kernel_options(spmv=spmv, threading=threading)
    try:
        for in_f, density in ((700, 0.3), (33000, 0.005)):
            w = _weight(333, in_f, density, empty_rows=True)
            b = torch.randn(333)
            layer = SparseLinear.from_dense(w, b)
            assert layer.col_indices.dtype == (torch.int16 if in_f < 32768 else torch.int32)
            for batch in (1, 3, 40):
                _check(layer, w, b, torch.randn(batch, in_f))
    finally:
        set_kernel_options(**old)


def test_kernel_options_are_validated():
    with pytest.raises(ValueError, match="threading must be one of"):
        set_kernel_options(threading="mpi")
    assert set_kernel_options() == {"spmv": "default", "threading": "default"}
