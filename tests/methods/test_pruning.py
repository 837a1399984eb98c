"""Magnitude and random pruning: exact counts, ranking, schedule, gradient variants."""

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.schedules import exact_zero_count


def _zeros(mask: torch.Tensor) -> int:
    return int((~mask).sum())


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.95, 0.98])
def test_exact_per_layer_zero_counts(mlp, method, sparsity):
    sp = sb.sparsify(mlp, method, sparsity=sparsity)
    # round(s·n) zeros per layer, worked out independently of the library.
    sizes = {"0.weight": 20 * 64, "2.weight": 64 * 33, "4.weight": 33 * 5}
    for name, mask in sp.masks().items():
        assert _zeros(mask) == int(sparsity * sizes[name] + 0.5)


def test_magnitude_prunes_the_smallest_weights(mlp):
    weights = {n: p.detach().clone() for n, p in mlp.named_parameters() if n.endswith("weight")}
    sp = sb.sparsify(mlp, "magnitude", sparsity=0.6)
    for name, mask in sp.masks().items():
        magnitude = weights[name].abs()
        assert magnitude[~mask].max() <= magnitude[mask].min()


def test_ties_are_broken_by_position():
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    sp = sb.sparsify(nn.Sequential(layer), "magnitude", sparsity=0.5)
    mask = sp.masks()["0.weight"].flatten()
    assert mask.tolist() == [False] * 6 + [True] * 6


def test_random_masks_ignore_the_weights_and_follow_the_seed():
    a, b = nn.Sequential(nn.Linear(30, 30)), nn.Sequential(nn.Linear(30, 30))
    ma = sb.sparsify(a, "random", sparsity=0.5, seed=3).masks()["0.weight"]
    mb = sb.sparsify(b, "random", sparsity=0.5, seed=3).masks()["0.weight"]
    mc = sb.sparsify(nn.Sequential(nn.Linear(30, 30)), "random", sparsity=0.5,
                     seed=4).masks()["0.weight"]
    assert torch.equal(ma, mb)
    assert not torch.equal(ma, mc)


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_gradual_schedule_counts_and_update_steps(mlp, method):
    schedule = sb.GradualSchedule(begin_step=2, end_step=12, frequency=3)
    sp = sb.sparsify(mlp, method, sparsity=0.9, schedule=schedule)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    previous = sp.masks()
    for step in range(1, 16):
        mlp(torch.randn(8, 20)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sp.step()
        masks = sp.masks()
        # Update steps: 2, 5, 8, 11 on the grid, and 12, the end.
        last = max([t for t in (2, 5, 8, 11, 12) if t <= step], default=None)
        expected = 0.0 if last is None else 0.9 * (1 - (1 - (last - 2) / 10) ** 3)
        for name, mask in masks.items():
            assert _zeros(mask) == exact_zero_count(expected, mask.numel()), (step, name)
            if step not in (2, 5, 8, 11, 12):
                assert torch.equal(mask, previous[name])
        previous = masks
    assert sp.sparsity() == pytest.approx(0.9, abs=1e-3)


def test_masked_weights_get_gradient_and_regrow_by_default():
    model = nn.Sequential(nn.Linear(6, 4))
    sp = sb.sparsify(model, "magnitude", sparsity=0.5,
                     schedule=sb.GradualSchedule(begin_step=0, end_step=0, frequency=1))
    layer = sp.layers[0]
    mask = sp.masks()["0.weight"]
    x = torch.randn(3, 6)
    model(x).sum().backward()
    # d(sum y)/dW[o, i] = sum_b x[b, i] for every weight, masked or not (straight-through).
    expected = x.sum(0).expand(4, 6)
    assert torch.allclose(layer.original.grad, expected)
    # Grow one masked weight above every other: the next recomputation keeps it.
    masked = (~mask).nonzero()[0]
    with torch.no_grad():
        layer.original[tuple(masked)] = 100.0
    layer.module.parametrizations.weight[0].mask  # noqa: B018 - the buffer exists
    sp.technique.update_masks(sp.current_step)
    assert sp.masks()["0.weight"][tuple(masked)]


def test_keep_variant_gives_masked_weights_no_gradient_but_keeps_them():
    model = nn.Sequential(nn.Linear(6, 4))
    before = model[0].weight.detach().clone()
    sp = sb.sparsify(model, "magnitude", sparsity=0.5, pruned_weights="keep")
    mask = sp.masks()["0.weight"]
    model(torch.randn(3, 6)).sum().backward()
    grad = sp.layers[0].original.grad
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] != 0)
    assert torch.equal(sp.layers[0].original.detach(), before)


def test_drop_variant_zeroes_masked_weights_and_never_restores_them():
    model = nn.Sequential(nn.Linear(10, 10))
    schedule = sb.GradualSchedule(begin_step=1, end_step=3, frequency=1)
    sp = sb.sparsify(model, "magnitude", sparsity=0.8, schedule=schedule, pruned_weights="drop")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    pruned_so_far = torch.zeros(10, 10, dtype=torch.bool)
    for _ in range(4):
        model(torch.randn(4, 10)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        sp.step()
        mask = sp.masks()["0.weight"]
        assert not torch.any(mask & pruned_so_far), "a dropped weight came back"
        assert torch.all(sp.layers[0].original.detach()[~mask] == 0)
        pruned_so_far |= ~mask
        # Make a pruned weight's gradient large: it must still not come back.
    assert _zeros(mask) == 80


def test_layer_sparsity_overrides(tiny_resnet):
    sp = sb.sparsify(tiny_resnet, "magnitude", sparsity=0.8,
                     layer_sparsity={"conv1": 0.0, "fc": 0.5})
    achieved = sp.layer_sparsity()
    assert achieved["conv1.weight"] == 0.0
    assert achieved["fc.weight"] == pytest.approx(0.5)
    assert achieved["block_a.0.weight"] == pytest.approx(0.8, abs=1e-3)


def test_fill_distribution_reaches_overall_target(tiny_resnet):
    spec = sb.LayerSparsity(overrides={"conv1": 0.0, "fc": 0.8}, distribution="fill")
    sp = sb.sparsify(tiny_resnet, "magnitude", sparsity=0.9, layer_sparsity=spec)
    assert sp.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert sp.layer_sparsity()["conv1.weight"] == 0.0
