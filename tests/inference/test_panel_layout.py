"""The count-class layout of large-batch CSR products (``csr_panel_layout``): its contents on
a matrix worked by hand, products through it equal to dense ``F.linear`` on every kernel path
it has, and a cache that follows the weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsebench.inference import SparseLinear, dense_to_csr, sparse_linear
from sparsebench.inference.sparse_linear import PANEL_LAYOUT_MIN_ROWS


def _hand_matrix() -> torch.Tensor:
    # Row 0: features 0, 2, 4; row 1: feature 1; row 2: features 0, 1, 3, 5; row 3: none.
    w = torch.zeros(4, 6)
    w[0, [0, 2, 4]] = torch.tensor([1.0, 2.0, 3.0])
    w[1, 1] = 4.0
    w[2, [0, 1, 3, 5]] = torch.tensor([5.0, 6.0, 7.0, 8.0])
    return w


def test_layout_groups_rows_by_their_count_in_each_block(ext):
    crow, col, values = dense_to_csr(_hand_matrix())
    meta, part_rows, group_ptr, groups, rows, offsets, vals = ext.csr_panel_layout(
        crow, col, values, 6, 3, 1)
    assert meta.tolist() == [3, 1, 2]  # blocks of 3 features, one part, two blocks
    assert part_rows.tolist() == [0, 4]
    # Block 0 (features 0-2): row 1 holds one nonzero, rows 0 and 2 two each, row 3 none.
    # Block 1 (features 3-5): row 0 one, row 2 two.
    assert group_ptr.tolist() == [0, 2, 4]
    assert groups.tolist() == [[1, 0, 1, 0], [2, 1, 2, 1], [1, 3, 1, 5], [2, 4, 1, 6]]
    assert rows.tolist() == [1, 0, 2, 0, 2]
    assert offsets.tolist() == [1, 0, 2, 0, 1, 1, 0, 2]  # feature minus its block's first
    assert vals.tolist() == [4.0, 1.0, 2.0, 5.0, 6.0, 3.0, 7.0, 8.0]


def test_layout_parts_split_rows_by_nonzeros_and_count_rows_from_their_start(ext):
    crow, col, values = dense_to_csr(_hand_matrix())
    _, part_rows, group_ptr, groups, rows, _, vals = ext.csr_panel_layout(
        crow, col, values, 6, 3, 2)
    # Nonzeros plus rows up to each row: 0, 4, 6, 11, 12; half of 12 is reached at row 2.
    assert part_rows.tolist() == [0, 2, 4]
    # Part 0 (rows 0-1): block 0 has row 1 (one nonzero) and row 0 (two); block 1 row 0.
    # Part 1 (rows 2-3, numbered 0-1 in the part): block 0 row 0 (two), block 1 row 0 (two).
    assert group_ptr.tolist() == [0, 2, 3, 4, 5]
    assert groups[:, 0].tolist() == [1, 2, 1, 2, 2]
    assert rows.tolist() == [1, 0, 0, 0, 0]
    assert vals.tolist() == [4.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]


@pytest.mark.parametrize(
    "out_f,in_f,density",
    [
        (70, 300, 0.1),  # 300 features: blocks of 128, the last one partial
        (33, 200, 1.0),  # 128 nonzeros per row and block: beyond the unrolled counts
        (40, 1000, 0.02),  # sparse: blocks of 256
        (64, 50, 0.5),  # one block narrower than the default
        (9, 17, 0.0),  # no nonzeros at all
    ],
)
@pytest.mark.parametrize("batch", [64, 100, 128, 256, 333])
def test_products_through_the_layout_equal_dense(ext, threads, out_f, in_f, density, batch):
    w = torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) < density)
    w[::7] = 0  # empty rows
    b = torch.randn(out_f)
    x = torch.randn(batch, in_f)
    crow, col, values = dense_to_csr(w)
    for parts in (1, 3):
        layout = ext.csr_panel_layout(crow, col, values, in_f, -1, parts)
        for act, fn in ((0, lambda t: t), (2, F.gelu)):
            got = ext.csr_linear(x, crow, col, values, b, in_f, -1, -1, act, layout)
            ref = fn(F.linear(x, w, b))
            scale = ref.abs().max().clamp_min(1.0)
            assert ((got - ref).abs().max() / scale).item() <= 1e-5


def test_a_layout_of_another_layer_is_refused(ext):
    w = torch.randn(20, 30) * (torch.rand(20, 30) < 0.3)
    crow, col, values = dense_to_csr(w)
    other = torch.randn(21, 30) * (torch.rand(21, 30) < 0.3)
    layout = ext.csr_panel_layout(*dense_to_csr(other), 30, -1, 1)
    with pytest.raises(RuntimeError, match="output width"):
        ext.csr_linear(torch.randn(128, 30), crow, col, values, None, 30, -1, -1, 0, layout)
    with pytest.raises(RuntimeError, match="parts must be at least 1"):
        ext.csr_panel_layout(crow, col, values, 30, -1, 0)


@pytest.fixture
def count_class(monkeypatch):
    """SparseLinear on the count-class layout, not on code compiled for its pattern."""
    monkeypatch.setattr(sparse_linear, "PATTERN_KERNEL", False)


def test_sparse_linear_rebuilds_its_layout_when_the_weight_changes(ext, threads, count_class):
    w = torch.randn(50, 40) * (torch.rand(50, 40) < 0.2)
    layer = SparseLinear.from_dense(w)
    x = torch.randn(PANEL_LAYOUT_MIN_ROWS, 40)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
        first = layer._panel_layout[1]
        layer.values.mul_(2.0)  # in place: the cached layout holds the old values
        torch.testing.assert_close(layer(x), F.linear(x, 2.0 * w), rtol=1e-5, atol=1e-5)
    assert layer._panel_layout[1] is not first


def test_the_layout_is_not_pickled(ext, tmp_path, count_class):
    w = torch.randn(50, 40) * (torch.rand(50, 40) < 0.2)
    layer = SparseLinear.from_dense(w)
    with torch.no_grad():
        layer(torch.randn(PANEL_LAYOUT_MIN_ROWS, 40))
    assert layer._panel_layout is not None
    assert layer.__getstate__()["_panel_layout"] is None
    assert layer._panel_layout is not None  # only the pickled copy drops it
