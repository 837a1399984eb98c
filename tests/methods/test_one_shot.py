"""One-shot post-training pruning (issue 25): Wanda against scores worked by hand, SparseGPT
against a straightforward OBS implementation written here, the layer-by-layer order, bad
inputs, and the study's two models."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.methods import catalogue
from sparsebench.methods.calibration import input_rows
from sparsebench.methods.one_shot import (
    OneShotReport,
    fine_tune,
    prune_lowest,
    prune_one_shot,
    spread_zeros,
)
from sparsebench.methods.sparsegpt import sparsegpt_prune
from sparsebench.methods.wanda import Wanda, wanda_scores
from sparsebench.models.transformer import TiedProjection

# Wanda's hand-worked layer: columns of X have norms 5, 1, 1, 2 (3-4-5 in the first).
W_HAND = torch.tensor([[1.0, -2.0, 3.0, -4.0],
                       [4.0, 3.0, -2.0, 1.0]])
X_HAND = torch.tensor([[3.0, 0.0, 1.0, 0.0],
                       [4.0, 1.0, 0.0, 2.0]])


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


# -- Wanda ----------------------------------------------------------------------------------------
def test_wanda_scores_are_weight_magnitude_times_input_norm_worked_by_hand():
    squared_norms = (X_HAND ** 2).sum(0)
    assert squared_norms.tolist() == [25.0, 1.0, 1.0, 4.0]
    # row 0: |1|·5, |−2|·1, |3|·1, |−4|·2; row 1: |4|·5, |3|·1, |−2|·1, |1|·2
    assert wanda_scores(W_HAND, squared_norms).tolist() == [[5.0, 2.0, 3.0, 8.0],
                                                           [20.0, 3.0, 2.0, 2.0]]


@pytest.mark.parametrize("split", [False, True])
def test_wanda_prunes_per_output_row_worked_by_hand(split):
    layer = _linear(W_HAND)
    batches = [X_HAND[:1], X_HAND[1:]] if split else [X_HAND]  # norms add up over batches
    report = prune_one_shot(layer, batches, "wanda", 0.5)
    # Row 0 keeps scores 5 and 8 (columns 0, 3) although |3| > |1|: magnitude alone would
    # keep columns 2 and 3. Row 1 keeps 20 and 3 (columns 0, 1).
    assert layer.weight.tolist() == [[1.0, 0.0, 0.0, -4.0], [4.0, 3.0, 0.0, 0.0]]
    assert report.masks["weight"].tolist() == [[True, False, False, True],
                                               [True, True, False, False]]
    assert report.layers[0].rows == 2


def test_wanda_flattens_a_sequence_of_tokens_into_rows():
    layer = _linear(W_HAND)
    prune_one_shot(layer, [X_HAND.reshape(1, 2, 4)], "wanda", 0.5)  # (batch, tokens, features)
    assert layer.weight.tolist() == [[1.0, 0.0, 0.0, -4.0], [4.0, 3.0, 0.0, 0.0]]


def test_wanda_two_four_keeps_the_best_two_scores_of_each_group():
    layer = _linear(torch.cat([W_HAND, W_HAND.flip(1)], dim=1))  # 2 x 8
    x = torch.cat([X_HAND, X_HAND.flip(1)], dim=1)
    prune_one_shot(layer, [x], "wanda", nm=(2, 4))
    assert layer.weight.tolist() == [[1.0, 0.0, 0.0, -4.0, -4.0, 0.0, 0.0, 1.0],
                                     [4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]]


@pytest.mark.parametrize("method", ["one-shot-magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_every_group_of_m_inputs_keeps_exactly_n(method, nm):
    torch.manual_seed(0)
    layer = nn.Linear(16, 6)
    report = prune_one_shot(layer, [_correlated(n=64, features=16).float()], method, nm=nm)
    n, m = nm
    groups = (layer.weight != 0).reshape(6, 16 // m, m).sum(-1)
    assert (groups == n).all(), groups
    assert report.masks["weight"].reshape(6, 16 // m, m).sum(-1).eq(n).all()


def test_exact_counts_are_spread_so_the_layer_hits_its_target():
    # 3 rows of 10 at 33%: round(0.33·30) = 10 zeros, shared 3, 4, 3 (not 3 per row = 30%).
    assert spread_zeros(0.33, 10, 3).tolist() == [3, 4, 3]
    keep = prune_lowest(torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2]))
    assert keep.tolist() == [[False, True, True], [False, False, True]]


# -- SparseGPT ------------------------------------------------------------------------------------
def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.t() @ x / x.shape[0]


def _damped(h: torch.Tensor, damping: float) -> torch.Tensor:
    return h + damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)


def _naive_sparsegpt(w, h, sparsity=0.5, keep=None, damping=0.01, mask_block=4):
    """The OBS sequence written out: column j is pruned with the inverse of H over the columns
    not yet frozen (j..n), recomputed by torch.linalg.inv at every column (O(n⁴), fine on 8x16);
    without ``keep`` the mask of columns j..j+mask_block is chosen at j by w²/[H_F⁻¹]₀₀."""
    w, h = w.clone(), _damped(h, damping)
    rows, cols = w.shape
    keep = None if keep is None else keep.clone()
    chosen = torch.ones_like(w, dtype=torch.bool)
    for j in range(cols):
        if keep is None and j % mask_block == 0:
            end = min(j + mask_block, cols)
            obs = torch.stack([torch.linalg.inv(h[c:, c:])[0, 0] for c in range(j, end)])
            scores = (w[:, j:end] ** 2 / obs).flatten()
            zeros = round(sparsity * rows * end) - round(sparsity * rows * j)
            block = torch.ones(scores.numel(), dtype=torch.bool)
            block[torch.sort(scores, stable=True).indices[:zeros]] = False
            chosen[:, j:end] = block.view(rows, end - j)
        mask = chosen if keep is None else keep
        inverse = torch.linalg.inv(h[j:, j:])
        for r in range(rows):
            if not mask[r, j]:
                w[r, j:] -= w[r, j] / inverse[0, 0] * inverse[0, :]
                w[r, j] = 0.0
    return w, mask


def _correlated(n=512, features=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, features, generator=g, dtype=torch.float64)
    mix = torch.randn(features, features, generator=g, dtype=torch.float64)
    return z @ mix * torch.linspace(0.2, 3.0, features, dtype=torch.float64)


def test_sparsegpt_matches_the_straightforward_obs_sequence_for_a_fixed_mask():
    x = _correlated()
    w = torch.randn(8, 16, dtype=torch.float64)
    keep = torch.rand(8, 16) > 0.5
    expected, _ = _naive_sparsegpt(w, _hessian(x), keep=keep)
    got, got_keep = sparsegpt_prune(w, _hessian(x), 0.5, keep=keep, block_size=5)
    assert torch.equal(got_keep, keep)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert bool((got[~keep] == 0).all())


@pytest.mark.parametrize(("block", "mask_block", "sparsity", "seed"),
                         [(7, 6, 0.5, 0), (7, 4, 0.5, 1), (3, 4, 0.4, 2), (16, 16, 0.3, 3)])
def test_sparsegpt_matches_the_straightforward_obs_sequence_with_adaptive_masks(
        block, mask_block, sparsity, seed):
    x = _correlated(seed=seed)
    w = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected, expected_keep = _naive_sparsegpt(w, _hessian(x), sparsity, mask_block=mask_block)
    got, keep = sparsegpt_prune(w, _hessian(x), sparsity, block_size=block,
                                mask_block_size=mask_block)
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert int((~keep).sum()) == round(sparsity * 128)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_lazy_block_size_does_not_change_the_result(nm):
    x = _correlated(seed=2)
    w = torch.randn(8, 16, dtype=torch.float64)
    results = [sparsegpt_prune(w, _hessian(x), 0.5, nm, block_size=b, mask_block_size=8)
               for b in (1, 3, 5, 16)]
    for got, keep in results[1:]:
        assert torch.equal(keep, results[0][1])
        torch.testing.assert_close(got, results[0][0], rtol=1e-10, atol=1e-10)


def test_sparsegpt_at_sparsity_zero_leaves_the_weights_unchanged():
    layer = nn.Sequential(nn.Linear(16, 8))
    before = layer[0].weight.detach().clone()
    prune_one_shot(layer, [_correlated().float()], "sparsegpt", 0.0)
    assert torch.equal(layer[0].weight, before)


def _error(w, w_hat, x):
    return float(((x @ w.t() - x @ w_hat.t()) ** 2).sum())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda_on_correlated_inputs(nm):
    x = _correlated(n=1024, features=32, seed=3)
    w = torch.randn(16, 32, dtype=torch.float64)
    errors = {}
    for method in ("one-shot-magnitude", "wanda", "sparsegpt"):
        layer = _linear(w).double()
        prune_one_shot(layer, [x[:512], x[512:]], method, None if nm else 0.5, nm=nm)
        assert layer.weight.count_nonzero() == w.numel() // 2
        errors[method] = _error(w, layer.weight.detach(), x)
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["one-shot-magnitude"]


def test_sparsegpt_prunes_dead_inputs_first_and_still_hits_the_target():
    x = _correlated()
    x[:, [3, 9]] = 0  # two inputs that never carry a value: diag H = 0 there
    w = torch.randn(8, 16, dtype=torch.float64)
    got, keep = sparsegpt_prune(w, _hessian(x), 0.25, mask_block_size=16)
    assert not keep[:, [3, 9]].any()
    assert int((~keep).sum()) == 32 and torch.isfinite(got).all()


# -- the layer-by-layer order ---------------------------------------------------------------------
class _Recording(Wanda):
    """Wanda that keeps the statistic each layer was pruned with, in the order pruned."""

    seen: list[torch.Tensor] = []

    def prune(self, weight, statistic, sparsity, nm):
        self.seen.append(statistic.clone())
        return super().prune(weight, statistic, sparsity, nm)


@pytest.fixture
def recording():
    _Recording.seen = []
    catalogue.register(catalogue.Technique("recording-wanda", catalogue.ONE_SHOT, "recording",
                                           method=_Recording, takes_target=True))
    yield _Recording.seen
    catalogue.unregister("recording-wanda")


class _TwoLayers(nn.Module):
    """Registers its second layer first: the order pruned must be the order run."""

    def __init__(self):
        super().__init__()
        self.second = nn.Linear(6, 3)
        self.first = nn.Linear(4, 6)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_each_layer_is_calibrated_on_the_outputs_of_the_already_pruned_layers(recording):
    model = _TwoLayers()
    x = torch.randn(32, 4)
    dense_hidden = torch.relu(model.first(x)).detach()
    report = prune_one_shot(model, [x[:16], x[16:]], "recording-wanda", 0.5)
    assert [layer.name for layer in report.layers] == ["first.weight", "second.weight"]
    pruned_hidden = torch.relu(model.first(x)).detach()  # first is pruned now
    torch.testing.assert_close(recording[1], (pruned_hidden ** 2).sum(0))
    assert not torch.allclose(recording[1], (dense_hidden ** 2).sum(0))


class _Twice(nn.Module):
    """Calls one layer twice in a forward: both inputs are its calibration rows."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_a_layer_called_twice_is_calibrated_on_both_calls(recording):
    model = _Twice()
    x = torch.randn(8, 4)
    first_output = torch.relu(model.shared(x)).detach()  # computed before pruning
    report = prune_one_shot(model, [x], "recording-wanda", 0.5)
    assert [layer.name for layer in report.layers] == ["shared.weight", "head.weight"]
    assert report.layers[0].rows == 16
    torch.testing.assert_close(recording[0], (x ** 2).sum(0) + (first_output ** 2).sum(0))


class _ConvBatchNorm(nn.Module):
    """conv → BatchNorm → ReLU → strided conv, channels-last: the ResNet pattern."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.second = nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.second(torch.relu(self.bn(self.first(x))))


def test_batch_norm_normalizes_calibration_batches_by_their_own_statistics(recording):
    # Pruning `first` moves its outputs away from the dense model's running statistics; the
    # pruned model is used only once they are estimated again, so `second` must be calibrated
    # on each batch normalized by its own mean and (biased) variance, not the stale running ones.
    torch.manual_seed(0)
    model = _ConvBatchNorm().to(memory_format=torch.channels_last)
    x = torch.randn(16, 2, 7, 7).to(memory_format=torch.channels_last)
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 2.0)
        model.bn.bias.uniform_(-0.5, 0.5)
        model.bn.running_mean.uniform_(-1.0, 1.0)  # the dense model's statistics, say
        model.bn.running_var.uniform_(0.5, 2.0)
    running = [model.bn.running_mean.clone(), model.bn.running_var.clone(),
               model.bn.num_batches_tracked.clone()]
    batches = [x[:8], x[8:]]
    prune_one_shot(model, batches, "recording-wanda", 0.5)

    expected = torch.zeros(6 * 9)
    for batch in batches:  # worked directly: pruned conv, batch statistics, ReLU, unfold
        h = nn.functional.conv2d(batch, model.first.weight, padding=1)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        bn = model.bn
        h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) \
            + bn.bias.view(1, -1, 1, 1)
        cols = nn.functional.unfold(torch.relu(h), 3, padding=1, stride=2)  # (B, 6·9, L)
        expected += (cols ** 2).sum(dim=(0, 2))
    torch.testing.assert_close(recording[1], expected)
    # The running statistics and the mode (training, as created) are left as they were.
    assert model.training and model.bn.training and model.bn.track_running_stats
    for before, after in zip(running, [model.bn.running_mean, model.bn.running_var,
                                       model.bn.num_batches_tracked], strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(2, 4, (3, 2), dilation=(2, 1), padding=(1, 0), bias=False),
    nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2, bias=False),
])
def test_a_convolution_is_its_weight_matrix_times_the_unfolded_input_rows(conv):
    x = torch.randn(2, conv.in_channels, *([9, 8] if isinstance(conv, nn.Conv2d) else [11]))
    rows = input_rows(conv, x)  # (B·positions, in·k)
    out = conv(x)
    expected = out.reshape(2, conv.out_channels, -1).transpose(1, 2).reshape(-1, conv.out_channels)
    torch.testing.assert_close(rows @ conv.weight.reshape(conv.out_channels, -1).t(), expected)


def test_a_hessian_cholesky_cannot_factor_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"not positive definite with damping=0.01; raise"):
        sparsegpt_prune(torch.randn(2, 3), -torch.eye(3), 0.5)


# -- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "message"), [
    (lambda m: prune_one_shot(m, [], "wanda", 0.5), r"calibration set is empty"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 5)], "wanda", 0.5),
     r"Calibration batch 0 could not be run through the model \(RuntimeError"),
    (lambda m: prune_one_shot(m, torch.randn(3, 4), "wanda", 0.5), r"iterable of batches"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", 1.0), r"\[0, 1\), got 1.0"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", -0.1), r"\[0, 1\), got -0.1"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda"), r"needs a target"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "magnitude", 0.5),
     r"Unknown sparsification method 'magnitude'; choose one of .*sparsegpt"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", 0.5, damping=0.1),
     r"Unknown hyperparameter\(s\) \['damping'\]"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "sparsegpt", 0.5, damping=0.0),
     r"damping = 0.0 is invalid"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", 0.6, nm=(2, 4)),
     r"nm=\(2, 4\) fixes every layer's sparsity at 0.5"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", nm=(4, 2)), r"1 <= N <= M"),
    (lambda m: prune_one_shot(m, [torch.randn(3, 4)], "wanda", nm=(2, 4)),
     r"Layer second.weight has 6 inputs"),
])
def test_bad_inputs_get_one_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call(_TwoLayers())


def test_a_model_without_sparsifiable_layers_or_with_uncalibratable_ones_is_refused():
    with pytest.raises(ValueError, match=r"no nn.Linear, nn.Conv1d, nn.Conv2d"):
        prune_one_shot(nn.Sequential(nn.ReLU()), [torch.randn(2, 3)], "wanda", 0.5)
    embed = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"0.weight is an embedding \(a lookup\) read as a "
                                         r"linear map by 0 projections"):
        prune_one_shot(embed, [torch.tensor([[1, 2]])], "wanda", 0.5, include="*")
    unused = nn.ModuleDict({"used": nn.Linear(4, 2), "unused": nn.Linear(4, 2)})
    with pytest.raises(ValueError, match=r"unused.weight is not called"):
        prune_one_shot(unused, [torch.randn(2, 4)], "wanda", 0.5,
                       forward=lambda model, batch: model["used"](batch))


class _TiedLM(nn.Module):
    """An embedding (vocabulary 2, width 4) whose weight is W_HAND, also read as the output
    projection, either as a Hugging Face ``lm_head`` holding the same Parameter or as the
    Transformer's ``TiedProjection``; the projection's input is given, so it is X_HAND."""

    def __init__(self, tie: str):
        super().__init__()
        self.embed = nn.Embedding(2, 4)
        with torch.no_grad():
            self.embed.weight.copy_(W_HAND)
        if tie == "linear":
            self.head = nn.Linear(4, 2, bias=False)
            self.head.weight = self.embed.weight
        else:
            self.head = TiedProjection(self.embed)

    def forward(self, tokens, hidden):
        return self.head(hidden) + self.embed(tokens).sum()


@pytest.mark.parametrize("tie", ["linear", "tied_weight_module"])
def test_an_embedding_tied_to_an_output_projection_is_calibrated_on_the_projection(tie):
    model = _TiedLM(tie)
    report = prune_one_shot(model, [(torch.tensor([[0, 1]]), X_HAND)], "wanda", 0.5,
                            include="*")
    # The projection multiplies X_HAND by the weight, so Wanda keeps what it keeps for a Linear
    # of that weight (worked by hand above); the lookup reads the same, pruned, weight.
    assert model.embed.weight.tolist() == [[1.0, 0.0, 0.0, -4.0], [4.0, 3.0, 0.0, 0.0]]
    assert model.embed(torch.tensor([1])).tolist() == [[4.0, 3.0, 0.0, 0.0]]
    assert list(report.masks) == ["embed.weight"] and report.layers[0].rows == 2


class _EmbedLinearTied(nn.Module):
    """tokens -> embedding (2 x 4, weight W_HAND) -> fc (4 x 4) -> the tied projection."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(2, 4)
        self.fc = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(W_HAND)
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0],
                                               [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0]]))
        self.head = TiedProjection(self.embed)

    def forward(self, tokens):
        return self.head(self.fc(self.embed(tokens)))


def test_a_tied_embedding_is_pruned_after_the_layers_its_projection_reads():
    model = _EmbedLinearTied()
    report = prune_one_shot(model, [torch.tensor([[0, 1]])], "wanda", 0.5, include="*")
    assert [layer.name for layer in report.layers] == ["fc.weight", "embed.weight"]
    # fc first, on the dense lookups (the rows of W_HAND): its input norms are those of W_HAND's
    # columns, sqrt(17), sqrt(13), sqrt(13), sqrt(17); diagonal fc keeps 2 of 4 per row, its
    # diagonal entry being each row's only nonzero: fc stays diag(1, 2, 3, 4).
    assert model.fc.weight.diagonal().tolist() == [1.0, 2.0, 3.0, 4.0]
    # Then the embedding, on the projection's input fc(W_HAND rows) = W_HAND · diag(1, 2, 3, 4):
    # rows [1, −4, 9, −16] and [4, 6, −6, 4], column norms sqrt(17), sqrt(52), sqrt(117),
    # sqrt(272). Scores |W|·norm, row 0: 4.12, 14.4, 32.4, 66.0 keep columns 2 and 3; row 1:
    # 16.5, 21.6, 21.6, 16.5 (ties to the earlier column) keep columns 1 and 2.
    assert model.embed.weight.tolist() == [[0.0, 0.0, 3.0, -4.0], [0.0, 3.0, -2.0, 0.0]]


def test_an_embedding_read_by_two_projections_is_refused():
    model = _TiedLM("tied_weight_module")
    model.second = TiedProjection(model.embed)
    with pytest.raises(ValueError, match=r"embed.weight is an embedding \(a lookup\) read as a "
                                         r"linear map by 2 projections"):
        prune_one_shot(model, [(torch.tensor([[0, 1]]), X_HAND)], "wanda", 0.5, include="*")


def test_a_sparsified_model_is_refused():
    model = _TwoLayers()
    sb.sparsify(model, "magnitude", sparsity=0.5)
    with pytest.raises(ValueError, match=r"finalize\(\) its Sparsifier"):
        prune_one_shot(model, [torch.randn(2, 4)], "wanda", 0.5)


def test_one_shot_magnitude_needs_no_calibration_and_is_not_a_sparsifier():
    model = _TwoLayers()
    report = prune_one_shot(model, None, "omp", 0.5)
    assert report.method == "one-shot-magnitude" and report.sparsity == 0.5
    assert "wanda" not in catalogue.sparsifiers()
    assert catalogue.display("sparsegpt") == "SparseGPT"
    assert all(t.colour for t in catalogue.entries(catalogue.ONE_SHOT))
    with pytest.raises(ValueError, match=r"Unknown sparsification method 'wanda'"):
        sb.sparsify(_TwoLayers(), "wanda", sparsity=0.5)


def test_a_transposed_conv1d_is_pruned_like_the_linear_it_is():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    conv1d = pytorch_utils.Conv1D(2, 4)  # y = x·W + b with W stored (in=4, out=2)
    with torch.no_grad():
        conv1d.weight.copy_(W_HAND.t())
    prune_one_shot(nn.Sequential(conv1d), [X_HAND], "wanda", 0.5)
    assert conv1d.weight.t().tolist() == [[1.0, 0.0, 0.0, -4.0], [4.0, 3.0, 0.0, 0.0]]


# -- the study's models ---------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """One thread, as the benchmark: on a shared 2-core machine two threads that wait on each
    other for every small op make the same work ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_target(model: nn.Module, report: OneShotReport, target: float) -> None:
    stats = {layer.name: layer for layer in sb.sparsity_report(model).layers}
    for layer in report.layers:
        size = stats[layer.name].size
        assert stats[layer.name].nonzeros == size - int(target * size + 0.5), layer.name
    assert report.sparsity == pytest.approx(target, abs=1e-4)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_resnet50_small_is_pruned_to_its_target_in_seconds(method, one_thread):
    model = sb.models.create("resnet50-small", in_channels=1, num_classes=10)
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    started = time.perf_counter()
    report = prune_one_shot(model, batches, method, 0.5)
    assert time.perf_counter() - started < 60
    assert len(report.layers) == len(sb.select_layers(model))
    _check_target(model, report, 0.5)


@pytest.mark.parametrize(("method", "nm"), [("sparsegpt", None), ("wanda", (2, 4))])
def test_transformer_tiny_is_pruned_to_its_target_in_seconds(method, nm, one_thread):
    model = sb.models.create("transformer-tiny", vocab_size=500)
    batches = [(torch.randint(4, 500, (4, 12)), torch.randint(4, 500, (4, 10)))
               for _ in range(2)]
    started = time.perf_counter()
    report = prune_one_shot(model, batches, method, None if nm else 0.7, nm=nm)
    assert time.perf_counter() - started < 60
    _check_target(model, report, 0.5 if nm else 0.7)
    assert report.layers[0].name.startswith("encoder.0.")  # the order run: encoder first


# -- fine-tuning ----------------------------------------------------------------------------------
def test_fine_tuning_keeps_the_one_shot_mask_and_lowers_the_loss():
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model = copy.deepcopy(teacher)
    x = torch.randn(256, 8)
    y = teacher(x).detach()
    report = prune_one_shot(model, [x], "wanda", 0.75)

    def loss(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    losses = fine_tune(model, report.masks, [(x, y)], loss, steps=60, lr=1e-2)
    assert losses[-1] < losses[0]
    for name, keep in report.masks.items():
        weight = model.get_parameter(name)
        assert bool((weight[~keep] == 0).all())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
