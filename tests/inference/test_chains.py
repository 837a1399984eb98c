"""Two sparse Linears in one call (``csr_pattern_chain``, ``chains.chain_linears``): the chained
product equal to the two layers computed with dense ``F.linear`` on odd widths, tails of fewer
than 64 rows, every activation on both sides, with and without bias, one and two threads; a
pair linked only where the first layer's output goes to the second alone; and a chained model
that copies, saves, traces and unlinks like any other."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    LayerDecision,
    SparseLinear,
    compile_sparse,
    dense_to_csr,
    sparse_linear,
)
from sparsebench.inference.chains import chain_linears, unchain_linears
from sparsebench.inference.export import load_sparse, save_sparse

ACTIVATIONS = {0: lambda y: y, 1: torch.relu, 2: F.gelu,
               3: lambda y: F.gelu(y, approximate="tanh")}


@pytest.fixture
def jit(ext, monkeypatch):
    """The extension, where it compiles pattern kernels, taken from 64 rows on."""
    if not getattr(ext, "HAVE_PATTERN_KERNEL", False):
        pytest.skip("no pattern kernels on this CPU (x86-64 with AVX-512 on Linux only)")
    monkeypatch.setattr(sparse_linear, "PATTERN_KERNEL", True)
    monkeypatch.setattr(sparse_linear, "PATTERN_KERNEL_MIN_ROWS", 64)
    return ext


def _sparse(out_f: int, in_f: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    return w * (torch.rand(out_f, in_f, generator=g) < density)


def _dense_pair(x, w1, b1, act1, w2, b2, act2):  # noqa: ANN001, ANN202
    return ACTIVATIONS[act2](F.linear(ACTIVATIONS[act1](F.linear(x, w1, b1)), w2, b2))


@pytest.mark.parametrize(
    "in_f,mid,out_f",
    [
        (40, 70, 33),  # groups of 31 and partial ones on both sides
        (100, 1500, 20),  # the second reads 1,500 features: blocks of 768, the last partial
        (17, 9, 64),
    ],
)
@pytest.mark.parametrize("rows,full", [(64, 64), (200, 192), (128, 64)])
def test_chained_product_equals_dense(jit, threads, in_f, mid, out_f, rows, full):
    w1, w2 = _sparse(mid, in_f, 0.2, 0), _sparse(out_f, mid, 0.2, 1)
    b1, b2 = torch.randn(mid), torch.randn(out_f)
    k1 = jit.csr_pattern_kernel(*dense_to_csr(w1), in_f, -1, -1, 2 * threads)
    k2 = jit.csr_pattern_kernel(*dense_to_csr(w2), mid, -1, -1, 2 * threads)
    x = torch.randn(rows, in_f)
    y = torch.full((rows, out_f), 7.0)
    jit.csr_pattern_chain(x, k1, b1, 2, k2, b2, 0, y, full, -1)
    torch.testing.assert_close(y[:full], _dense_pair(x[:full], w1, b1, 2, w2, b2, 0),
                               rtol=1e-5, atol=1e-5)
    assert (y[full:] == 7.0).all()  # rows past `full` are the caller's


@pytest.mark.parametrize("act1,act2", [(0, 0), (1, 3), (3, 1), (2, 2)])
def test_every_activation_with_and_without_bias(jit, act1, act2):
    w1, w2 = _sparse(80, 50, 0.3, 2), _sparse(45, 80, 0.3, 3)
    x = torch.randn(128, 50)
    for b1, b2 in [(None, None), (torch.randn(80), None), (None, torch.randn(45))]:
        k1 = jit.csr_pattern_kernel(*dense_to_csr(w1), 50, -1, -1, 1)
        k2 = jit.csr_pattern_kernel(*dense_to_csr(w2), 80, -1, -1, 1)
        y = torch.empty(128, 45)
        jit.csr_pattern_chain(x, k1, b1, act1, k2, b2, act2, y, 128, -1)
        torch.testing.assert_close(y, _dense_pair(x, w1, b1, act1, w2, b2, act2),
                                   rtol=1e-5, atol=1e-5)


def test_bad_arguments_get_one_sentence(jit):
    w1, w2 = _sparse(30, 20, 0.3, 4), _sparse(10, 30, 0.3, 5)
    k1 = jit.csr_pattern_kernel(*dense_to_csr(w1), 20, -1, -1, 1)
    k2 = jit.csr_pattern_kernel(*dense_to_csr(w2), 30, -1, -1, 1)
    x, y = torch.randn(64, 20), torch.empty(64, 10)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        jit.csr_pattern_chain(x, k1, None, 0, k2, None, 0, y, 32, -1)
    with pytest.raises(RuntimeError, match="input width"):  # the second built for 30 inputs
        jit.csr_pattern_chain(x, k1, None, 0, k1, None, 0, torch.empty(64, 30), 64, -1)
    with pytest.raises(RuntimeError, match="activation"):
        jit.csr_pattern_chain(x, k1, None, 9, k2, None, 0, y, 64, -1)
    with pytest.raises(RuntimeError, match="bias"):
        jit.csr_pattern_chain(x, k1, torch.randn(29), 0, k2, None, 0, y, 64, -1)


class FeedForward(nn.Module):
    """A transformer's feed-forward block, its two Linears in modules of their own as in
    transformers' BERT (the activation in the first)."""

    def __init__(self, width: int = 48, hidden: int = 160) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Linear(width, hidden), nn.GELU())
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x)) + x


def _pruned(model: nn.Module, density: float = 0.2) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand_like(m.weight) < density)
    return model.eval()


def _compiled(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """compile_sparse with every Linear made sparse (CSR), whatever the timings say."""
    forced = [
        LayerDecision(name, "linear", tuple(m.weight.shape), 0.2, {1: 2.0}, 1.0, True, "test")
        for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    return compile_sparse(model, plan=forced, example_input=x)


def test_compile_sparse_chains_a_feed_forward_block_and_agrees(jit, threads):
    model = _pruned(FeedForward())
    x = torch.randn(2, 100, 48)  # 200 rows: three whole panels and a tail of 8
    fast = _compiled(model, x)
    assert fast.down.chained == (fast.up[0], fast.down)
    assert fast.up[0].activation == "gelu"
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
        small = torch.randn(3, 48)  # below the panels: one layer after the other
        torch.testing.assert_close(fast(small), model(small), rtol=1e-5, atol=1e-5)


class Leaky(FeedForward):
    """The first layer's output also leaves the block."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.up(x)
        return self.down(h), h


class Summed(FeedForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return self.down(h) + h.sum()


class Twice(FeedForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return self.down(h) + self.down(h)


class Viewed(FeedForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x).view(x.shape[0], -1))


@pytest.mark.parametrize("model_type", [Leaky, Summed, Twice, Viewed])
def test_no_chain_where_the_output_goes_anywhere_else(jit, model_type):
    model = _pruned(model_type())
    x = torch.randn(128, 48)
    fast = _compiled(model, x)
    assert all(m.chained is None for m in fast.modules() if isinstance(m, SparseLinear))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_no_chain_without_an_example(jit):
    model = _pruned(FeedForward())
    assert chain_linears(copy.deepcopy(model), None) == 0


def test_a_chained_model_copies_saves_and_unlinks(jit, tmp_path):
    model = _pruned(FeedForward())
    x = torch.randn(128, 48)
    fast = _compiled(model, x)
    twin = copy.deepcopy(fast)
    assert twin.down.chained == (twin.up[0], twin.down)  # the copy's own layers
    save_sparse(fast, tmp_path / "ffn.safetensors")
    loaded = load_sparse(tmp_path / "ffn.safetensors", FeedForward())
    assert all(m.chained is None for m in loaded.modules() if isinstance(m, SparseLinear))
    with torch.no_grad():
        expected = model(x)
        for m in (twin, loaded):
            torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
        assert unchain_linears(fast) == 1 and fast.down.chained is None
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)


def test_torch_compile_of_a_chained_model_agrees(jit):
    model = _pruned(FeedForward())
    x = torch.randn(128, 48)
    fast = _compiled(model, x)
    with torch.no_grad():
        eager = fast(x)  # builds the layouts the traced graph reads
        traced = torch.compile(fast, fullgraph=True)
        torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-5)


def test_the_default_threading_is_the_adaptive_mode(jit):
    # threading -1 must mean csr_linear's default, the adaptive mode, which counts its jobs;
    # it once fell through to the helper pool, which ran BERT's chained products serially.
    w1, w2 = _sparse(64, 32, 0.3, 6), _sparse(32, 64, 0.3, 7)
    k1 = jit.csr_pattern_kernel(*dense_to_csr(w1), 32, -1, -1, 4)
    k2 = jit.csr_pattern_kernel(*dense_to_csr(w2), 64, -1, -1, 4)
    x, y = torch.randn(256, 32), torch.empty(256, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        jobs, _, serial = jit.adaptive_stats()
        jit.csr_pattern_chain(x, k1, None, 0, k2, None, 0, y, 256, -1)
        jobs_after, _, serial_after = jit.adaptive_stats()
    finally:
        torch.set_num_threads(before)
    assert (jobs_after - jobs) + (serial_after - serial) == 1
    torch.testing.assert_close(y, _dense_pair(x, w1, None, 0, w2, None, 0), rtol=1e-5, atol=1e-5)
