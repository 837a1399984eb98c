"""Activations applied by the sparse Linear kernel as it writes its output (ReLU, exact GELU,
GELU's tanh form), and fuse_activations, which finds a Linear -> activation chain and moves
the activation into the layer. References are torch's own functions in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    SparseLinear,
    compile_sparse,
    fuse_activations,
    load_sparse,
    plan_sparse,
    save_sparse,
)
from sparsebench.inference.compile import PerformanceModel
from sparsebench.inference.fusion import activation_of

REFERENCE = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


def test_gelu_approximations_over_a_wide_range():
    """The identity as a 1x1 weight, so the layer's output before the activation is exactly
    x: the kernel's GELU against torch's in float64, from -12 to 12 (both tails saturated),
    within 5e-7 times max(1, |x|)."""
    layer = SparseLinear.from_dense(torch.ones(1, 1), None)
    x = torch.linspace(-12, 12, 24001).reshape(-1, 1)
    for name in ("gelu", "gelu_tanh"):
        layer.activation = name
        for rows in (x, x[::97], x[11990:12011]):  # panels, the unpacked order, around 0
            with torch.no_grad():
                got = layer(rows)
            ref = REFERENCE[name](rows.double())
            scaled = ((got.double() - ref).abs() / rows.double().abs().clamp_min(1)).max()
            assert scaled <= 5e-7, (name, rows.shape[0], float(scaled))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("batch", [1, 5, 16, 37, 130, 300])
def test_every_kernel_path_applies_the_activation(threads, activation, batch):
    """Batch 1 (SpMV), the unpacked order with its scalar tail (5, 37), whole tiles (16) and
    the panels (130, 300: a partial last panel), 53 output rows (a partial row block)."""
    torch.manual_seed(batch)
    w = torch.randn(53, 70) * (torch.rand(53, 70) < 0.2)
    b = torch.randn(53)
    layer = SparseLinear.from_dense(w, b)
    layer.activation = activation
    x = torch.randn(batch, 70)
    with torch.no_grad():
        got = layer(x)
    ref = REFERENCE[activation](F.linear(x.double(), w.double(), b.double()))
    assert ((got.double() - ref).abs().max() / ref.abs().max()) <= 1e-5


def test_block_layers_and_the_torch_fallback_apply_it_too(monkeypatch):
    from sparsebench.inference import _extension

    torch.manual_seed(0)
    w = torch.randn(32, 48) * (torch.rand(32, 48) < 0.3)
    x = torch.randn(9, 48)
    ref = F.gelu(x @ w.t())
    block = SparseLinear.from_dense(w, None, block=(4, 4))
    block.activation = "gelu"
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    _extension._reset_for_tests()
    try:
        csr = SparseLinear.from_dense(w, None)
        csr.activation = "gelu"
        with torch.no_grad():
            torch.testing.assert_close(csr(x), ref, rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.delenv(_extension.DISABLE_ENV)
        _extension._reset_for_tests()


def test_fused_relu_keeps_nan_as_torch_does():
    layer = SparseLinear.from_dense(torch.ones(1, 1), None)
    layer.activation = "relu"
    x = torch.tensor([[float("nan")], [-1.0], [2.0]] * 11)  # 33 rows: vector and tail
    with torch.no_grad():
        got = layer(x)
    assert torch.equal(got.isnan(), x.isnan())
    assert torch.equal(got.nan_to_num(), F.relu(x).nan_to_num())


def test_bad_activation_and_to_linear_refuse():
    layer = SparseLinear.from_dense(torch.eye(3), None)
    with pytest.raises(ValueError, match="activation must be one of"):
        layer.activation = "swish"
    layer.activation = "relu"
    with pytest.raises(ValueError, match="cannot"):
        layer.to_linear()
    assert "activation=relu" in repr(layer)


class LibraryGelu(nn.Module):
    """Another library's GELU class (as transformers' GELUActivation): recognised by value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class LibraryTanhGelu(nn.Module):
    """GPT-2's gelu_new, written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class ClippedGelu(nn.Module):
    """GELU clipped to [-10, 10] (transformers' gelu_10): equal to GELU on [-10, 10] only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x).clamp(-10, 10)


class Doubling(nn.Module):
    """Parameter-free but no activation: never fused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class Scaled(nn.Module):
    """A GELU with a parameter: not probed, not fused."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x) * self.scale


def test_activation_of_reads_torch_modules_and_probes_others():
    assert activation_of(nn.ReLU(inplace=True)) == "relu"
    assert activation_of(nn.GELU()) == "gelu"
    assert activation_of(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_of(LibraryGelu()) == "gelu"
    assert activation_of(LibraryTanhGelu()) == "gelu_tanh"
    for other in (Doubling(), Scaled(), nn.Tanh(), nn.Identity(), nn.Dropout(0.0),
                  ClippedGelu()):
        assert activation_of(other) is None, other


class Intermediate(nn.Module):
    """The shape of BERT's intermediate block: dense, then a library's GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(24, 40)
        self.act = LibraryGelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class UsedTwice(nn.Module):
    """The Linear's output feeds the activation and the sum: not fused."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(40, 40)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x)
        return self.act(y) + y


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        Intermediate(),
        UsedTwice(),
        nn.Sequential(nn.Linear(40, 40), nn.GELU(approximate="tanh")),
        nn.Sequential(nn.Linear(40, 40), Doubling()),
        nn.Linear(40, 8),
        nn.ReLU(),
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand_like(m.weight) < 0.2)
    return model


def test_compile_fuses_each_sole_follower_and_keeps_outputs(tmp_path):
    model = _model()
    x = torch.randn(6, 11, 24)
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.05, 1.0), budget_s=0.01)
    plan = plan_sparse(model, batch_hint=66, perf_model=pm, example_input=x[:1])
    forced = [d.__class__(**{**d.__dict__, "use_sparse": True}) for d in plan]
    fast = compile_sparse(model, plan=forced)
    linears = [m for m in fast.modules() if isinstance(m, SparseLinear)]
    assert [m.activation for m in linears] == ["gelu", "none", "gelu_tanh", "none", "relu"]
    assert isinstance(fast[1].act, nn.GELU) and isinstance(fast[3][1], Doubling)
    assert isinstance(fast[0].act, nn.Identity) and isinstance(fast[5], nn.Identity)
    assert fuse_activations(fast) == 0  # nothing left to fuse; fused layers stay as they are
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "fused.safetensors"
    save_sparse(fast, path)
    again = load_sparse(path, model=_model())
    assert [m.activation for m in again.modules() if isinstance(m, SparseLinear)] == [
        "gelu", "none", "gelu_tanh", "none", "relu"]
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)
