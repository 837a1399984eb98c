"""fold_batchnorm and fuse_relu: what follows a convolution is folded in only where the
convolution's output goes nowhere else, and the model computes what it did before."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    PerformanceModel,
    SparseConv2d,
    compile_sparse,
    fold_batchnorm,
    fuse_relu,
    load_sparse,
    plan_sparse,
    save_sparse,
)


def _prune(model: nn.Module, keep: float = 0.2) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) < keep)
    return model


def _trained_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():  # statistics far from the defaults, so a missed fold shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


class ConvBnAct(nn.Module):
    """The shape of transformers' ResNetConvLayer: three children called in a chain."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.normalization = _trained_bn(cout)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(x)))


class Residual(nn.Module):
    """The conv's output feeds the ReLU and the sum: the ReLU must not be fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y) + y


class Branching(nn.Module):
    """Data-dependent control flow: fx cannot trace it, so it stays as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y) if y.sum() > 0 else y


def _all_sparse(model: nn.Module, x: torch.Tensor, tmp_path) -> nn.Module:
    """compile_sparse with every convolution made sparse, whatever the timings say."""
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.05, 1.0), budget_s=0.01)
    plan = plan_sparse(model, batch_hint=x.shape[0], perf_model=pm, example_input=x[:1])
    forced = [d.__class__(**{**d.__dict__, "use_sparse": True}) for d in plan]
    return compile_sparse(model, plan=forced)


def _model() -> nn.Module:
    shared = nn.ReLU()  # used twice: never replaced
    return _prune(
        nn.Sequential(
            ConvBnAct(3, 8),
            nn.Sequential(nn.Conv2d(8, 8, 1), _trained_bn(8), nn.ReLU(inplace=True)),
            ConvBnAct(8, 16, stride=2),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), shared, nn.Conv2d(16, 16, 1), shared),
        )
    ).eval()


def test_fold_batchnorm_in_sequential_and_traced_parents():
    model = _model()
    x = torch.randn(2, 3, 17, 15)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 3
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # Folding scales output channels: a pruned zero stays zero.
    conv = model[0].convolution
    assert (conv.weight == 0).float().mean() > 0.7


def test_training_mode_batchnorm_is_not_folded():
    block = ConvBnAct(3, 4)
    block.normalization.train()
    assert fold_batchnorm(block) == 0
    assert isinstance(block.normalization, nn.BatchNorm2d)


def test_compile_fuses_relus_and_keeps_outputs(tmp_path):
    model = _model()
    fold_batchnorm(model)
    x = torch.randn(2, 3, 17, 15)
    fast = _all_sparse(model, x, tmp_path)
    sparse_convs = [m for m in fast.modules() if isinstance(m, SparseConv2d)]
    assert len(sparse_convs) == 5
    # ConvBnAct x2 and the Sequential's ReLU(inplace) are fused; the shared ReLU is not.
    assert sum(m.relu for m in sparse_convs) == 3
    assert sum(isinstance(m, nn.ReLU) for m in fast.modules()) == 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "fused.safetensors"
    save_sparse(fast, path)
    skeleton = _model()  # folded like the compiled one, and still holding its ReLUs
    fold_batchnorm(skeleton)
    again = load_sparse(path, model=skeleton)
    assert sum(m.relu for m in again.modules() if isinstance(m, SparseConv2d)) == 3
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)


def test_relu_is_not_fused_where_the_conv_output_is_used_twice_or_untraceable(tmp_path):
    for module in (Residual(), Branching()):
        module = _prune(module).eval()
        x = torch.randn(1, 4, 6, 6)
        fast = _all_sparse(module, x, tmp_path)
        assert isinstance(fast.conv, SparseConv2d)
        assert isinstance(fast.act, nn.ReLU)
        assert fuse_relu(fast) == 0
        with torch.no_grad():
            torch.testing.assert_close(fast(x), module(x), rtol=1e-5, atol=1e-5)


def test_fused_relu_applies_on_the_fallback_path(monkeypatch):
    from sparsebench.inference import _extension

    conv = _prune(nn.Conv2d(3, 5, 3, padding=1))
    sparse = SparseConv2d.from_conv(conv)
    sparse.relu = True
    monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    _extension._reset_for_tests()
    try:
        x = torch.randn(2, 3, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), F.relu(conv(x)), rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.delenv(_extension.DISABLE_ENV)
        _extension._reset_for_tests()


def test_max_pools_are_replaced_by_an_equal_faster_one():
    from sparsebench.inference.glue import ChannelsLastMaxPool2d, replace_glue

    model = nn.Sequential(
        nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d((2, 3), (1, 2), (1, 0), dilation=(2, 1), ceil_mode=True),
        nn.MaxPool2d(2, return_indices=True),  # its indices have no channels-last twin
    )
    fast = copy.deepcopy(model)
    assert replace_glue(fast) == 2
    assert [type(m) for m in fast] == [ChannelsLastMaxPool2d, ChannelsLastMaxPool2d, nn.MaxPool2d]
    x = torch.randn(2, 5, 23, 18)
    x[0, 1, 4, 5] = float("nan")  # a NaN is its windows' maximum, as in torch
    for a, b in zip(model[:2], fast[:2], strict=True):
        got, ref = b(x), a(x)
        assert torch.equal(got.nan_to_num(), ref.nan_to_num()) and got.is_contiguous()
        assert torch.equal(got.isnan(), ref.isnan()) and got.isnan().any()
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(b(x_cl).nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (1, 1, 0), (5, 3, 2),
                                    (4, 4, 2)])
@pytest.mark.parametrize("size", [(112, 112), (7, 9), (1, 1), (5, 17)])
def test_nchw_pooling_kernel_equals_torch(window, size):
    from sparsebench.inference import _extension

    ext = _extension.load_extension()
    if ext is None:
        pytest.skip("C++ extension unavailable here")
    k, s, p = window
    if size[0] + 2 * p < k or size[1] + 2 * p < k:
        pytest.skip("window larger than the padded input")
    torch.manual_seed(size[0] + k)
    x = torch.randn(3, 4, *size)
    assert torch.equal(ext.max_pool2d_nchw(x, k, s, p), F.max_pool2d(x, k, s, p))
    with pytest.raises(RuntimeError, match="padding at most half"):
        ext.max_pool2d_nchw(x, 2, 1, 2)
