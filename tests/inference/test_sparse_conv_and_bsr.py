"""SparseConv2d and BSR SparseLinear equal the dense layers within 1e-5, on both kernel paths;
the compile step sizes convolutions and recognises block structure; export keeps them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    BLOCK_SIZES,
    PerformanceModel,
    SparseConv2d,
    SparseLinear,
    compile_sparse,
    load_sparse,
    plan_sparse,
    save_sparse,
)
from sparsebench.inference.sparse_linear import (
    block_density,
    check_block,
    set_kernel_options,
)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _block_weight(out_f: int, in_f: int, block: tuple[int, int], density: float) -> torch.Tensor:
    """A weight whose zeros form whole blocks (edge blocks cut by the shape)."""
    bh, bw = block
    keep = torch.rand(-(-out_f // bh), -(-in_f // bw)) < density
    keep = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out_f, :in_f]
    return torch.randn(out_f, in_f) * keep


GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=(3, 5), stride=(1, 2), padding=(2, 1), dilation=2),
    dict(kernel_size=5),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (8, 8), (16, 1)])
def test_conv_matches_dense(kernel, geometry, block):
    conv = nn.Conv2d(7, 19, **geometry)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    sparse = SparseConv2d.from_conv(conv, block)
    # 13x11 and 8x7 outputs (stride 1): every register-tile width of the kernels and a tail.
    for n, h, w in ((1, 13, 11), (2, 13, 11), (5, 13, 11), (2, 8, 7)):
        x = torch.randn(n, 7, h, w)
        with torch.no_grad():
            assert _rel(sparse(x), conv(x)) <= 1e-5
    with torch.no_grad():
        assert _rel(sparse(x[0]), conv(x[0])) <= 1e-5  # unbatched (C, H, W)
    back = sparse.to_conv()
    assert torch.equal(back.weight, conv.weight)


@pytest.mark.parametrize("hw", [7, 8, 14])
@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_conv_with_residual_on_small_maps(kernel, threads, hw, batch):
    """A 1x1 convolution reads its input in place on maps of any size (7x7 and 14x14 end in
    a masked vector, 8x8 does not) and adds the residual before the ReLU: relu(conv(x) + r)."""
    conv = nn.Conv2d(40, 24, 1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.2)
    sparse = SparseConv2d.from_conv(conv)
    x = torch.randn(batch, 40, hw, hw)
    r = torch.randn(batch, 24, hw, hw)
    with torch.no_grad():
        assert _rel(sparse(x, residual=r, relu=True), (conv(x) + r).relu()) <= 1e-5
        assert _rel(sparse(x), conv(x)) <= 1e-5


@pytest.mark.parametrize("threading", ["serial", "adaptive", "pool"])
@pytest.mark.parametrize("block", [(1, 1), (8, 8)])
def test_conv_whole_image_and_split_image_paths(kernel, threading, block):
    """With two threads, a batch of one or two images splits each image's rows over the
    threads; four or more give each thread whole images in its own padded buffers (and a
    serial run always does). Both paths equal the dense convolution, padding included."""
    if kernel != "cpp":
        pytest.skip("threading options apply to the compiled kernels only")
    conv = nn.Conv2d(16, 24, 3, padding=(2, 1), dilation=(2, 1))
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.2)
    sparse = SparseConv2d.from_conv(conv, block)
    threads = torch.get_num_threads()
    old = set_kernel_options(threading=threading)
    try:
        torch.set_num_threads(2)
        for n in (1, 2, 4, 9):
            x = torch.randn(n, 16, 10, 9)
            with torch.no_grad():
                assert _rel(sparse(x), conv(x)) <= 1e-5, n
    finally:
        set_kernel_options(**old)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_conv_empty_and_full(kernel, density):
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(density)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d.from_conv(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_conv_refuses_groups_and_autograd():
    with pytest.raises(ValueError, match="groups=2"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding='same'"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding="same"))
    sparse = SparseConv2d.from_conv(nn.Conv2d(2, 3, 3))
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(torch.randn(1, 2, 5, 5, requires_grad=True))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        sparse(torch.randn(1, 3, 5, 5))


@pytest.mark.parametrize("block", BLOCK_SIZES)
@pytest.mark.parametrize("shape", [(37, 53), (64, 128), (100, 33), (5, 3)])
def test_bsr_linear_matches_dense(kernel, block, shape):
    w = _block_weight(*shape, block, 0.4)
    b = torch.randn(shape[0])
    layer = SparseLinear.from_dense(w, b, block)
    assert layer.block == block and torch.equal(layer.dense_weight(), w)
    # Batches that take every register-tile width (32, 16, 8 columns) and a scalar tail.
    for batch in (1, 2, 9, 16, 24, 33, 63, 130):
        x = torch.randn(batch, shape[1])
        with torch.no_grad():
            assert _rel(layer(x), F.linear(x, w, b)) <= 1e-5, batch


@pytest.mark.parametrize("density", [1.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_16x1_blocks_at_every_few_rows_batch(threads, density, bias):
    """16x1 blocks at 2-16 batch rows take the kernel that makes a block's 16 rows the vector
    (a dense output projection in that format, as compile_sparse runs GPT-2's at batch 8):
    every such batch, a last block row cut by the width, with and without a bias, against
    the dense product."""
    torch.manual_seed(int(density * 10) + bias)
    w = _block_weight(77, 45, (16, 1), density)
    b = torch.randn(77) if bias else None
    layer = SparseLinear.from_dense(w, b, (16, 1))
    for batch in range(2, 18):
        x = torch.randn(batch, 45)
        with torch.no_grad():
            assert _rel(layer(x), F.linear(x, w, b)) <= 1e-5, batch


def test_bsr_stores_only_nonzero_blocks():
    w = _block_weight(64, 64, (16, 16), 0.25)
    layer = SparseLinear.from_dense(w, block=(16, 16))
    blocks, fill = block_density(w, (16, 16))
    assert layer.values.shape == (round(blocks * 16), 16, 16) and fill == pytest.approx(1.0, 1e-3)
    assert layer.col_indices.dtype == torch.int16


@pytest.mark.parametrize("bad", [(0, 4), (-4, 4), (3, 3), (4.0, 4), (4,), "4x4", (64, 64)])
def test_bad_block_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="block must be one of"):
        check_block(bad)


def _convnet() -> nn.Sequential:
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 64),
    )
    with torch.no_grad():
        m[0].weight.mul_(torch.rand_like(m[0].weight) < 0.05)
        m[4].weight.copy_(_block_weight(64, 1024, (16, 16), 0.05))
    return m.eval()


def test_compile_sizes_convs_and_finds_blocks(tmp_path):
    model = _convnet()
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.05, 1.0), budget_s=0.01)
    x = torch.randn(2, 3, 8, 8)
    plan = plan_sparse(model, batch_hint=2, perf_model=pm)
    assert "example_input" in plan[0].reason and not plan[0].use_sparse
    plan = plan_sparse(model, batch_hint=2, perf_model=pm, example_input=x[:1])
    assert [d.kind for d in plan] == ["Conv2d", "Conv2d", "Linear"]
    assert "groups=2" in plan[1].reason and not plan[1].use_sparse
    # Whatever the timings say, every fitting block size was a candidate and outputs agree.
    forced = [
        d.__class__(**{**d.__dict__, "use_sparse": d.kind == "Linear" or d.name == "0"})
        for d in plan
    ]
    compiled = compile_sparse(model, plan=forced)
    assert isinstance(compiled[0], SparseConv2d) and isinstance(compiled[4], SparseLinear)
    with torch.no_grad():
        assert _rel(compiled(x), model(x)) <= 1e-5
    loaded = load_sparse(save_sparse(compiled, tmp_path / "m.safetensors").path)
    with torch.no_grad():
        assert torch.equal(loaded(x), compiled(x))


def test_block_structure_is_recognised(tmp_path):
    from sparsebench.inference.compile import _block_candidates

    w = _block_weight(64, 96, (16, 16), 0.3)
    blocks = dict(_block_candidates(w))
    assert {(1, 1), (4, 4), (8, 8), (16, 16)} <= set(blocks) and (32, 32) not in blocks
    assert blocks[(16, 16)] == pytest.approx(block_density(w, (16, 16))[0])
    unstructured = torch.randn(64, 96) * (torch.rand(64, 96) < 0.1)
    assert [b for b, _ in _block_candidates(unstructured)] == [(1, 1)]


def test_export_round_trip_conv_and_bsr(tmp_path):
    conv = nn.Conv2d(5, 8, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.2)
    model = nn.Sequential(
        SparseConv2d.from_conv(conv, (4, 4)),
        nn.Flatten(),
        SparseLinear.from_dense(_block_weight(20, 8 * 4 * 4, (16, 1), 0.3), block=(16, 1)),
    ).eval()
    report = save_sparse(model, tmp_path / "m.safetensors")
    assert report.sparse_layers == 2
    loaded = load_sparse(tmp_path / "m.safetensors")
    assert loaded[0].block == (4, 4) and loaded[2].block == (16, 1)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(3, 5, 7, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
