"""Code compiled for a CSR weight's pattern (``csr_pattern_kernel``): products through it equal
to dense ``F.linear`` on odd shapes, partial panels, every activation, one and two threads;
its tensors on a matrix worked by hand; copies of its code refused rather than run; and
``SparseLinear`` taking it by default where the extension has it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sparsebench.inference import SparseLinear, dense_to_csr, sparse_linear

ACTIVATIONS = {0: lambda y: y, 1: torch.relu, 2: F.gelu,
               3: lambda y: F.gelu(y, approximate="tanh")}


@pytest.fixture
def jit(ext):
    """The extension, where it compiles pattern kernels (x86-64, AVX-512, Linux)."""
    if not getattr(ext, "HAVE_PATTERN_KERNEL", False):
        pytest.skip("no pattern kernels on this CPU (x86-64 with AVX-512 on Linux only)")
    return ext


def _sparse(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


def test_kernel_tensors_on_a_matrix_worked_by_hand(jit):
    # Rows 0-4 in groups of 2, features in blocks of 3:
    # row 0: features 0, 4; row 1: feature 2; row 2: none; row 3: features 1, 2; row 4: 5.
    w = torch.zeros(5, 6)
    w[0, [0, 4]] = torch.tensor([1.0, 2.0])
    w[1, 2] = 3.0
    w[3, [1, 2]] = torch.tensor([4.0, 5.0])
    w[4, 5] = 6.0
    crow, col, values = dense_to_csr(w)
    meta, part_rows, chunk_code, chunk_w, weights, code = jit.csr_pattern_kernel(
        crow, col, values, 6, 2, 3, 1)
    assert meta.tolist()[1:] == [2, 3, 1, 3, 2]  # R, kblock, parts, groups, blocks
    assert part_rows.tolist() == [0, 5]
    # Chunks (group, block): (0,0) rows 0-1 features 0, 2; (0,1) row 0 feature 4; (1,0) row 3
    # features 1, 2 (row 2 has none); (1,1) nothing; (2,0) nothing; (2,1) row 4 feature 5.
    # Weights in each chunk by feature, then row.
    assert chunk_w.tolist() == [0, 2, 3, 5, 5, 5]
    assert weights.tolist() == [1.0, 3.0, 2.0, 4.0, 5.0, 6.0]
    # A group's first-block chunk starts its sums at the bias, so it has code even without
    # nonzeros ((2,0)); a later block's chunk without nonzeros has none ((1,1)).
    empty = [chunk_code[k + 1] == chunk_code[k] for k in range(6)]
    assert empty == [False, False, False, True, False, False]
    assert code.numel() == chunk_code[-1]


@pytest.mark.parametrize(
    "out_f,in_f,density",
    [
        (70, 300, 0.1),  # 70 rows: groups of 31 and a last one of 8
        (31, 64, 1.0),  # a full group, every feature of every row
        (100, 1500, 0.1),  # 1,500 features: blocks of 768, the last one partial
        (45, 40, 0.02),  # mostly empty chunks
        (9, 17, 0.0),  # no nonzeros at all
    ],
)
@pytest.mark.parametrize("rows", [64, 100, 192])
def test_products_equal_dense(jit, threads, out_f, in_f, density, rows):
    w = _sparse(out_f, in_f, density)
    bias = torch.randn(out_f)
    crow, col, values = dense_to_csr(w)
    kernel = jit.csr_pattern_kernel(crow, col, values, in_f, -1, -1, 2 * threads)
    x = torch.randn(rows, in_f)
    y = jit.csr_linear(x, crow, col, values, bias, in_f, -1, -1, 0, kernel)
    torch.testing.assert_close(y, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("group_rows,kblock", [(1, 5), (7, 64), (31, -1)])
def test_every_group_size_block_and_activation(jit, act, group_rows, kblock):
    w = _sparse(50, 130, 0.3, seed=1)
    crow, col, values = dense_to_csr(w)
    kernel = jit.csr_pattern_kernel(crow, col, values, 130, group_rows, kblock, 1)
    x = torch.randn(128, 130)
    y = jit.csr_linear(x, crow, col, values, None, 130, -1, -1, act, kernel)
    torch.testing.assert_close(y, ACTIVATIONS[act](F.linear(x, w)), rtol=1e-5, atol=1e-5)


def test_int32_column_indices(jit):
    w = _sparse(40, 90, 0.2, seed=2)
    crow, col, values = dense_to_csr(w)
    col32 = col.to(torch.int32)
    kernel = jit.csr_pattern_kernel(crow, col32, values, 90)
    x = torch.randn(64, 90)
    y = jit.csr_linear(x, crow, col32, values, None, 90, -1, -1, 0, kernel)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_a_copy_of_the_code_is_refused_not_run(jit):
    w = _sparse(40, 90, 0.2)
    crow, col, values = dense_to_csr(w)
    kernel = jit.csr_pattern_kernel(crow, col, values, 90)
    copied = [t.clone() for t in kernel]
    with pytest.raises(RuntimeError, match="copy"):
        jit.csr_linear(torch.randn(64, 90), crow, col, values, None, 90, -1, -1, 0, copied)


def test_bad_arguments_get_one_sentence(jit):
    crow, col, values = dense_to_csr(_sparse(40, 90, 0.2))
    with pytest.raises(RuntimeError, match="at most 31 rows per group"):
        jit.csr_pattern_kernel(crow, col, values, 90, 32)
    kernel = jit.csr_pattern_kernel(crow, col, values, 90)
    with pytest.raises(RuntimeError, match="another input width"):
        jit.csr_linear(torch.randn(64, 91), crow, col, values, None, 91, -1, -1, 0, kernel)
    geometry = [3, 3, 1, 1, 1, 1, 1, 1]  # the same weight as a 3x3 convolution of 10 channels
    offsets = jit.conv_offsets(col, 10, 3, 3, geometry)
    x = torch.randn(1, 10, 3, 3)
    wider = jit.csr_pattern_kernel(*dense_to_csr(_sparse(70, 90, 0.2)), 90)
    with pytest.raises(RuntimeError, match="another output width"):
        jit.csr_conv2d(x, crow, offsets, values, None, 40, geometry, False, -1, None, wider)
    # A convolution takes the kernel of its own weight (test_conv_pattern.py).
    got = jit.csr_conv2d(x, crow, offsets, values, None, 40, geometry, False, -1, None, kernel)
    dense = torch.zeros(40, 90).index_put_(
        (torch.repeat_interleave(torch.arange(40), crow.diff().long()), col.long()), values)
    torch.testing.assert_close(got, F.conv2d(x, dense.view(40, 10, 3, 3), padding=1),
                               rtol=1e-5, atol=1e-5)


def test_sparse_linear_keeps_the_layout_below_the_kernel_rows(jit, monkeypatch):
    monkeypatch.setattr(sparse_linear, "PATTERN_KERNEL", True)
    w = _sparse(90, 200, 0.1)
    layer = SparseLinear.from_dense(w)
    x = torch.randn(sparse_linear.PATTERN_KERNEL_MIN_ROWS - 1, 200)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert getattr(layer, "_pattern_kernel", None) is None
    assert layer._panel_layout is not None


def test_sparse_linear_takes_the_kernel_and_rebuilds_it_after_a_copy(jit, monkeypatch):
    monkeypatch.setattr(sparse_linear, "PATTERN_KERNEL", True)
    lin = torch.nn.Linear(200, 90)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) < 0.1)
    layer = SparseLinear.from_linear(lin)
    x = torch.randn(2, sparse_linear.PATTERN_KERNEL_MIN_ROWS // 2, 200)
    with torch.no_grad():
        expected = lin(x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        assert layer._pattern_kernel is not None
        twin = copy.deepcopy(layer)
        assert twin._pattern_kernel is None  # dropped with the copy, built again on use
        torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            layer.values.mul_(2.0)  # a new weight: the compiled code must follow it
        torch.testing.assert_close(layer(x), 2 * (expected - lin.bias) + lin.bias,
                                   rtol=1e-5, atol=1e-5)
    assert layer.__getstate__()["_pattern_kernel"] is None  # never pickled


def test_a_megabyte_of_code_on_its_own_pages(jit):
    # 1024 x 1024 at 12%: about 126,000 nonzeros, more than a megabyte of code, which is
    # mapped on 2 MB pages (where the system gives transparent huge pages).
    w = _sparse(1024, 1024, 0.12, seed=3)
    crow, col, values = dense_to_csr(w)
    kernel = jit.csr_pattern_kernel(crow, col, values, 1024)
    assert kernel[5].numel() >= 1 << 20
    x = torch.randn(256, 1024)
    y = jit.csr_linear(x, crow, col, values, None, 1024, -1, -1, 0, kernel)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-4)
    del kernel, y  # unmapped with the tensor; a second one maps afresh
    again = jit.csr_pattern_kernel(crow, col, values, 1024)
    y = jit.csr_linear(x, crow, col, values, None, 1024, -1, -1, 0, again)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_a_system_that_refuses_executable_memory_gets_the_layout(jit, monkeypatch):
    """Where mapping the code fails (a system that forbids writable-then-executable pages),
    the layer says so once and runs through the count-class layout, with the same result."""

    class Refusing:
        HAVE_PATTERN_KERNEL = True

        def __getattr__(self, name):
            return getattr(jit, name)

        def csr_pattern_kernel(self, *args):
            raise RuntimeError("csr_pattern_kernel: the system refused executable memory")

    monkeypatch.setattr(sparse_linear, "_refused", [])
    monkeypatch.setattr(sparse_linear._extension, "load_extension", lambda: Refusing())
    w = _sparse(90, 200, 0.1)
    layer = SparseLinear.from_dense(w)
    x = torch.randn(sparse_linear.PATTERN_KERNEL_MIN_ROWS, 200)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert len(sparse_linear._refused) == 1  # asked once, not at every call
    assert layer._panel_layout is not None
