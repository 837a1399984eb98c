"""fuse_residual_relu and SparseConv2d's residual: relu(conv(x) + shortcut) computed by the
convolution's kernel, checked against the dense model. Two block shapes: transformers'
(nested layers, ``h += r`` then an activation module) and torchvision's (``out += identity``
then ``F.relu``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    SparseConv2d,
    compile_sparse,
    fold_batchnorm,
    fuse_residual_relu,
    load_sparse,
    plan_sparse,
    save_sparse,
)
from sparsebench.inference.compile import PerformanceModel


class ConvLayer(nn.Module):
    """transformers' ResNetConvLayer: conv, BatchNorm, activation (Identity when None)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.normalization = nn.BatchNorm2d(cout)
        self.activation = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(x)))


class HFBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = cout // 4
        self.shortcut = (ConvLayer(cin, cout, 1, stride, act=False)
                         if cin != cout or stride != 1 else nn.Identity())
        self.layer = nn.Sequential(ConvLayer(cin, mid, 1), ConvLayer(mid, mid, 3, stride),
                                   ConvLayer(mid, cout, 1, act=False))
        self.activation = nn.ReLU()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.layer(hidden_state)
        residual = self.shortcut(residual)
        hidden_state += residual
        return self.activation(hidden_state)


class TVBottleneck(nn.Module):
    """torchvision's Bottleneck, without downsampling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c // 4, 1, bias=False), nn.BatchNorm2d(c // 4)
        self.conv2 = nn.Conv2d(c // 4, c // 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c // 4)
        self.conv3, self.bn3 = nn.Conv2d(c // 4, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return F.relu(out)


class Defaulted(nn.Module):
    """The same sum, in a forward with a defaulted argument: never rewritten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return F.relu(self.conv(x) + x * scale)


class SumUsedTwice(nn.Module):
    """The sum is used after the ReLU too: not fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv(x) + x
        return F.relu(s) * s


class InputChangedBetween(nn.Module):
    """The convolution's input is changed in place before the sum: the call cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        x.mul_(2)
        return F.relu(y + x)


class BroadcastSum(nn.Module):
    """relu(conv(x) + b) with b a (1, C, 1, 1) parameter: fused, and the kernel path falls
    back to torch's broadcasting sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.b = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x) + self.b)


class SetItemBetween(nn.Module):
    """An item assignment into the convolution's input before the sum: not moved."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        x[:, 0] = 0
        return F.relu(y + x)


class SumOfItself(nn.Module):
    """conv(x) + conv(x), the same value twice: nothing to take as the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.relu(y + y)


def test_a_sum_is_left_alone_where_moving_the_call_would_change_it():
    torch.manual_seed(2)
    for module in (InputChangedBetween(), SetItemBetween(), SumOfItself()):
        with torch.no_grad():
            module.conv.weight.mul_(torch.rand_like(module.conv.weight) < 0.3)
        module.conv = SparseConv2d.from_conv(module.conv)
        x = torch.randn(2, 8, 5, 5)
        with torch.no_grad():
            before = module(x.clone())
        assert fuse_residual_relu(module) == 0, type(module).__name__
        with torch.no_grad():
            torch.testing.assert_close(module(x.clone()), before)


def test_a_broadcast_residual_is_fused_and_still_right():
    torch.manual_seed(3)
    module = BroadcastSum().eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        before = module(x)
        module.conv = SparseConv2d.from_conv(module.conv)
        assert fuse_residual_relu(module) == 1
        torch.testing.assert_close(module(x), before, rtol=1e-5, atol=1e-5)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(HFBottleneck(8, 16, stride=2), HFBottleneck(16, 16), TVBottleneck(16),
                          nn.Conv2d(16, 8, 1), Defaulted(), SumUsedTwice()).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) < 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
    fold_batchnorm(model)
    return model


def _all_sparse(model: nn.Module, x: torch.Tensor, tmp_path) -> nn.Module:
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.05, 1.0), budget_s=0.01)
    plan = plan_sparse(model, batch_hint=x.shape[0], perf_model=pm, example_input=x[:1])
    forced = [d.__class__(**{**d.__dict__, "use_sparse": True}) for d in plan]
    return compile_sparse(model, plan=forced)


@pytest.mark.parametrize("hw", [(9, 9), (14, 14)])
def test_compile_fuses_block_sums_and_keeps_outputs(tmp_path, hw):
    model = _model()
    x = torch.randn(3, 8, *hw)
    fast = _all_sparse(model, x, tmp_path)
    # Two transformers-style blocks and the torchvision one; the last two are left alone.
    assert fuse_residual_relu(fast) == 0  # compile_sparse did them all
    assert "forward" in vars(fast[0]) and "forward" in vars(fast[2])
    assert "forward" not in vars(fast[4]) and "forward" not in vars(fast[5])
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
        # The rewritten forward survives a copy, bound to the copy's own layers.
        twin = copy.deepcopy(fast)
        torch.testing.assert_close(twin(x), model(x), rtol=1e-5, atol=1e-5)
    # Saved and loaded, the blocks run their own forward again: the same outputs.
    path = tmp_path / "fused.safetensors"
    save_sparse(fast, path)
    again = load_sparse(path, model=_model())
    assert "forward" not in vars(again[0])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)


def test_three_sums_fused_once():
    """Every convolution swapped for its sparse twin by hand: the three block sums are fused,
    the defaulted forward and the reused sum are not, and a second call finds nothing."""
    model = _model()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, SparseConv2d.from_conv(child))
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        before = model(x)
    assert fuse_residual_relu(model) == 3
    assert fuse_residual_relu(model) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", [dict(kernel_size=1), dict(kernel_size=3, padding=1),
                                      dict(kernel_size=3, stride=2, padding=1)])
@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_residual_argument_on_every_path(geometry, block, monkeypatch):
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 16, **geometry)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.25)
    sparse = SparseConv2d.from_conv(conv, block=block)
    x = torch.randn(3, 12, 13, 11)
    with torch.no_grad():
        y = conv(x)
        r = torch.randn_like(y)
        torch.testing.assert_close(sparse(x, r, relu=True), F.relu(y + r), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse(x, r), y + r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse(x[0], r[0], relu=True), F.relu(y[0] + r[0]),
                                   rtol=1e-5, atol=1e-5)
        # A residual that only broadcasts, or of another dtype, is added as torch would.
        bias = torch.randn(1, 16, 1, 1)
        torch.testing.assert_close(sparse(x, bias, relu=True), F.relu(y + bias),
                                   rtol=1e-5, atol=1e-5)
        wide = r.double()
        torch.testing.assert_close(sparse(x, wide), y.double() + wide, rtol=1e-5, atol=1e-5)
    from sparsebench.inference import _extension

    monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    _extension._reset_for_tests()
    try:
        with torch.no_grad():
            torch.testing.assert_close(sparse(x, r, relu=True), F.relu(y + r),
                                       rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.delenv(_extension.DISABLE_ENV)
        _extension._reset_for_tests()
