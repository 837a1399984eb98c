"""Dynamic sparse training: SET, RigL and dynamic network surgery, against hand-worked cases
and invariants (exact per-layer counts, what is dropped, what is grown, what trains)."""

import math
import warnings

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.methods.dns import splice, splice_thresholds, surgery_probability
from sparsebench.methods.rigl import rigl_drop_fraction
from sparsebench.methods.sparse_evolutionary import drop_and_grow
from sparsebench.schedules import exact_zero_count

# -- helpers ---------------------------------------------------------------------------------


def _backward_with_gradient(model: nn.Sequential, gradient: torch.Tensor) -> None:
    """A backward pass whose gradient with respect to the first layer's (effective, masked)
    weight is exactly ``gradient``: d/dW sum(W ⊙ G) = G."""
    (model[0].weight * gradient).sum().backward()


def _one_layer(rows: int, cols: int, values=None) -> nn.Sequential:
    layer = nn.Linear(cols, rows, bias=False)
    if values is not None:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(values, dtype=torch.float32).view(rows, cols))
    return nn.Sequential(layer)


def _set_mask_and_weights(sp, mask, weights) -> None:
    layer = sp.layers[0]
    with torch.no_grad():
        layer.parametrization.mask.copy_(torch.tensor(mask).view(layer.shape))
        layer.original.copy_(torch.tensor(weights, dtype=torch.float32).view(layer.shape))


def _train(model, sp, steps, inputs, outputs, lr=0.01):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sp.step()


# -- the shared drop-and-grow step -----------------------------------------------------------


def test_drop_and_grow_by_hand():
    mask = torch.tensor([True, True, True, False, False, False])
    weight = torch.tensor([0.5, -0.1, 0.3, 9.0, 9.0, 9.0])
    grow = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.7, 0.4])
    # Drop the 2 smallest active |w| (positions 1 and 2), grow the 2 highest scores among the
    # inactive after the drop (positions 4 and 5).
    new = drop_and_grow(mask, weight, grow, 2)
    assert new.tolist() == [True, False, False, False, True, True]


def test_a_weight_just_dropped_may_grow_straight_back():
    # RigL's Algorithm 1 grows among i ∉ θ \ I_drop: position 1, dropped, has the top score.
    mask = torch.tensor([True, True, False, False])
    weight = torch.tensor([0.5, -0.1, 0.0, 0.0])
    grow = torch.tensor([0.0, 0.9, 0.3, 0.1])
    assert drop_and_grow(mask, weight, grow, 1).tolist() == [True, True, False, False]


# -- RigL ------------------------------------------------------------------------------------


def test_rigl_drop_fraction_follows_the_cosine_by_hand():
    # f(t) = α/2 (1 + cos(π t / T_end)), α = 0.3, T_end = 100.
    assert rigl_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert rigl_drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))
    assert rigl_drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert rigl_drop_fraction(75, 0.3, 100) == pytest.approx(0.15 * (1 - math.sqrt(0.5)))
    assert rigl_drop_fraction(100, 0.3, 100) == 0.0
    assert rigl_drop_fraction(130, 0.3, 100) == 0.0


def test_rigl_drops_smallest_weights_and_grows_largest_gradients_by_hand():
    model = _one_layer(4, 4)
    sp = sb.sparsify(model, "rigl", sparsity=0.5, drop_fraction=0.4,
                     schedule=sb.GradualSchedule(begin_step=1, end_step=10, frequency=5))
    # Rows 0-1 active; rows 2-3 inactive and holding stale values (kept, never used).
    _set_mask_and_weights(sp, [True] * 8 + [False] * 8,
                          [0.8, -0.1, 0.5, 0.05, -0.7, 0.3, -0.02, 0.9] + [5.0] * 8)
    gradient = torch.tensor([0.0, 0.0, 0.0, 0.0,
                             0.0, 0.0, 0.0, 0.0,
                             0.1, -0.9, 0.2, 0.05,
                             0.6, -0.3, 0.01, 0.7]).view(4, 4)
    _backward_with_gradient(model, gradient)
    sp.step()  # step 1: f(1) = 0.2 (1 + cos(π/10)) = 0.390; floor(0.390 · 8) = 3 move
    # Dropped: |w| 0.02, 0.05, 0.1 (positions 6, 3, 1). Grown: |g| 0.9, 0.7, 0.6 (9, 15, 12).
    mask = sp.masks()["0.weight"].flatten()
    assert torch.nonzero(mask).flatten().tolist() == [0, 2, 4, 5, 7, 9, 12, 15]
    weight = sp.layers[0].original.detach().flatten()
    assert weight[[9, 12, 15]].tolist() == [0.0, 0.0, 0.0]  # grown connections start at zero
    assert weight[[8, 10, 11, 13, 14]].tolist() == [5.0] * 5  # untouched inactive weights


def test_rigl_moves_the_scheduled_count_and_stops_after_end_step():
    torch.manual_seed(1)
    model = _one_layer(20, 10)
    sp = sb.sparsify(model, "rigl", sparsity=0.5, drop_fraction=0.3,
                     schedule=sb.GradualSchedule(begin_step=0, end_step=100, frequency=25))
    layer = sp.layers[0]
    moved = {}
    for step in range(1, 121):
        before = layer.parametrization.mask.clone()
        # Inactive positions carry the larger gradients, so nothing dropped grows back and
        # the mask moves by exactly the scheduled count.
        _backward_with_gradient(model, (~before).float() * (1 + torch.rand(20, 10)))
        sp.step()
        after = layer.parametrization.mask
        assert int(after.sum()) == 100  # exact at every step
        if not torch.equal(before, after):
            moved[step] = int((before & ~after).sum())
    # 100 active: floor(100 f(t)) with f(25) = 0.2561, f(50) = 0.15, f(75) = 0.0439, f(100) = 0.
    assert moved == {25: 25, 50: 15, 75: 4}


def test_rigl_records_the_dense_gradient_and_trains_only_active_weights():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    sp = sb.sparsify(model, "rigl", sparsity=0.5,
                     schedule=sb.GradualSchedule(begin_step=0, end_step=50, frequency=10))
    inputs, outputs = torch.randn(16, 6), torch.randint(0, 3, (16,))
    # The dense gradient: the same network with plain weights W ⊙ m, differentiated at W.
    dense = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for i in (0, 2):
            dense[i].weight.copy_(model[i].weight)
            dense[i].bias.copy_(model[i].bias)
    nn.functional.cross_entropy(dense(inputs), outputs).backward()
    originals = {layer.name: layer.original.detach().clone() for layer in sp.layers}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(inputs), outputs).backward()
    for layer, index in zip(sp.layers, (0, 2), strict=True):
        mask = layer.parametrization.mask
        assert torch.allclose(layer.parametrization.dense_grad, dense[index].weight.grad)
        assert (dense[index].weight.grad[~mask] != 0).any()  # inactive positions too
        assert torch.equal(layer.original.grad[~mask], torch.zeros(int((~mask).sum())))
    optimizer.step()
    sp.step()
    for layer in sp.layers:
        mask = layer.parametrization.mask
        assert torch.equal(layer.original.detach()[~mask], originals[layer.name][~mask])
        assert layer.parametrization.dense_grad is None  # dropped after every step


# -- SET -------------------------------------------------------------------------------------


def test_set_keeps_counts_drops_smallest_and_grows_zeros_among_inactive(mlp):
    sp = sb.sparsify(mlp, "set", sparsity=0.8, drop_fraction=0.3,
                     schedule=sb.GradualSchedule(begin_step=0, end_step=30, frequency=5))
    expected = {layer.name: layer.numel - exact_zero_count(0.8, layer.numel)
                for layer in sp.layers}
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    inputs, outputs = torch.randn(32, 20), torch.randint(0, 5, (32,))
    updates = 0
    for step in range(1, 36):
        nn.functional.cross_entropy(mlp(inputs), outputs).backward()
        optimizer.step()
        optimizer.zero_grad()
        before = {layer.name: (layer.parametrization.mask.clone(),
                               layer.original.detach().clone()) for layer in sp.layers}
        sp.step()
        for layer in sp.layers:
            old_mask, old_weight = before[layer.name]
            new_mask, new_weight = layer.parametrization.mask, layer.original.detach()
            assert int(new_mask.sum()) == expected[layer.name]
            dropped, grown = old_mask & ~new_mask, new_mask & ~old_mask
            assert int(dropped.sum()) == int(grown.sum())
            if step % 5 or step > 30:
                assert not dropped.any()
                continue
            updates += 1
            # The k = floor(0.3 · active) smallest active |w| (ties by position) all go; the
            # few that random growth picks straight back stay active.
            k = int(0.3 * expected[layer.name])
            magnitude = old_weight.abs().flatten().tolist()
            active = torch.nonzero(old_mask.flatten()).flatten().tolist()
            smallest = set(sorted(active, key=lambda i: (magnitude[i], i))[:k])
            flat_dropped = set(torch.nonzero(dropped.flatten()).flatten().tolist())
            assert flat_dropped and flat_dropped <= smallest
            assert all(new_mask.flatten()[i] for i in smallest - flat_dropped)
            assert not old_mask[grown].any()  # grown where nothing was active
            assert torch.equal(new_weight[grown], torch.zeros(int(grown.sum())))
    assert updates == 6 * 3


def test_set_growth_follows_its_seed():
    def masks(seed):
        torch.manual_seed(0)
        model = _one_layer(30, 30)
        sp = sb.sparsify(model, "set", sparsity=0.9, seed=seed,
                         schedule=sb.GradualSchedule(begin_step=0, end_step=10, frequency=2))
        for _ in range(10):
            sp.step()
        return sp.masks()["0.weight"]

    assert torch.equal(masks(3), masks(3))
    assert not torch.equal(masks(3), masks(4))


# -- dynamic network surgery -----------------------------------------------------------------


def test_dns_thresholds_and_probability_by_hand():
    # |w| = 1, 2, 3, 4: μ = 2.5, σ = sqrt(1.25); t = μ + σ = 3.6180; a = 0.9 t, b = 1.1 t.
    a, b = splice_thresholds(torch.tensor([1.0, -2.0, 3.0, -4.0]), 1.0, 0.9, 1.1).tolist()
    assert (a, b) == (pytest.approx(3.2562306), pytest.approx(3.9798374))
    assert splice_thresholds(torch.tensor([1.0, 2.0]), -10.0, 0.9, 1.1).tolist() == [0.0, 0.0]
    # σ(t) = (1 + γ t)^(-power)
    assert surgery_probability(0, 1e-4, 1.0) == 1.0
    assert surgery_probability(10_000, 1e-4, 1.0) == pytest.approx(0.5)
    assert surgery_probability(30_000, 1e-4, 2.0) == pytest.approx(1 / 16)


def test_splice_keeps_a_weight_between_the_thresholds_in_its_state():
    mask = torch.tensor([True, True, False, False])
    magnitude = torch.tensor([0.3, 0.5, 0.5, 0.7])
    assert splice(mask, magnitude, 0.4, 0.6).tolist() == [False, True, False, True]


def test_dns_prunes_below_a_and_revives_above_b_by_hand():
    weights = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -1.2]
    model = _one_layer(2, 4, weights)
    sp = sb.sparsify(model, "dns", c_rate=0.0, gamma=0.0)  # t = μ; surgery at every step
    # Attach: μ = 4.0 / 8 = 0.5, a = 0.45, b = 0.55; the four smallest are pruned.
    layer = sp.layers[0]
    assert layer.parametrization.thresholds.tolist() == pytest.approx([0.45, 0.55])
    assert sp.masks()["0.weight"].flatten().tolist() == [False] * 4 + [True] * 4
    with torch.no_grad():
        layer.original.view(-1)[3] = -0.9  # pruned, rises above b: spliced back
        layer.original.view(-1)[5] = 0.05  # active, falls below a: pruned
        layer.original.view(-1)[2] = 0.5   # pruned, between a and b: stays pruned
    sp.step()
    # Now |w| sums to 4.15: μ = 0.51875, a = 0.466875, b = 0.570625; |w| = 0.5 at position 4
    # (active, above a) stays.
    assert layer.parametrization.thresholds.tolist() == pytest.approx([0.466875, 0.570625])
    assert sp.masks()["0.weight"].flatten().tolist() == [False, False, False, True,
                                                         True, False, True, True]


def test_dns_fixed_statistics_keep_the_first_thresholds_and_end_step_stops_surgery():
    model = _one_layer(2, 4, [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -1.2])
    sp = sb.sparsify(model, "dns", c_rate=0.0, gamma=0.0, fixed_statistics=True, end_step=1)
    layer = sp.layers[0]
    with torch.no_grad():
        layer.original.mul_(2.0)  # |w| = 0.2 … 2.4: only 0.2 stays below a = 0.45
    sp.step()
    assert layer.parametrization.thresholds.tolist() == pytest.approx([0.45, 0.55])
    assert sp.masks()["0.weight"].flatten().tolist() == [False, False] + [True] * 6
    with torch.no_grad():
        layer.original.mul_(0.0)
    sp.step()  # step 2 > end_step: no surgery
    assert sp.masks()["0.weight"].flatten().tolist() == [False, False] + [True] * 6


def test_dns_surgery_becomes_rare_as_its_probability_decays():
    model = _one_layer(2, 4, [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -1.2])
    sp = sb.sparsify(model, "dns", c_rate=0.0, gamma=1e9)  # σ(1) ≈ 1e-9
    with torch.no_grad():
        sp.layers[0].original.mul_(0.0)
    sp.step()
    assert sp.masks()["0.weight"].flatten().tolist() == [False] * 4 + [True] * 4


def test_dns_masked_weights_keep_training():
    model = _one_layer(2, 4, [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -1.2])
    sp = sb.sparsify(model, "dns", c_rate=0.0)
    layer = sp.layers[0]
    pruned = ~layer.parametrization.mask
    before = layer.original.detach().clone()
    assert torch.equal(model[0].weight.detach()[pruned], torch.zeros(4))  # masked in forward
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Row 0 is pruned whole, so its output is 0; the loss still has a gradient there.
    (model(torch.randn(8, 4)) - 1.0).pow(2).sum().backward()
    optimizer.step()
    assert (layer.original.detach()[pruned] != before[pruned]).all()


# -- training and finalize -------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [
    ("set", dict(sparsity=0.8)),
    ("rigl", dict(sparsity=0.8)),
    ("dns", dict()),
])
def test_each_trains_and_finalizes_to_exact_zeros(method, options):
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(),
                          nn.Linear(16, 4))
    if "sparsity" in options:
        options = {**options, "schedule": sb.GradualSchedule(begin_step=0, end_step=20,
                                                             frequency=4)}
    sp = sb.sparsify(model, method, **options)
    inputs, outputs = torch.randn(64, 20), torch.randint(0, 4, (64,))
    first = nn.functional.cross_entropy(model(inputs), outputs).item()
    _train(model, sp, 30, inputs, outputs)
    assert nn.functional.cross_entropy(model(inputs), outputs).item() < first
    masks, achieved = sp.masks(), sp.sparsity()
    targets = dict(sp.technique.targets)  # RigL: ERK's per-layer targets, the others uniform
    last_grads = {layer.name: layer.original.grad.clone() for layer in sp.layers}
    plain = sp.finalize()
    zeros = 0
    for name, mask in masks.items():
        weight = dict(plain.named_parameters())[name].detach()
        assert not weight[~mask].any()  # every pruned weight is an exact zero
        zeros += int((weight == 0).sum())
        if method != "dns":
            assert int((~mask).sum()) == exact_zero_count(targets[name], mask.numel())
        if method == "set":
            # SET grows at random: a connection grown into a unit left with no active outgoing
            # weight gets no gradient and keeps its initial zero, so the weights may hold more
            # zeros than the mask (the runner reports the sparsity counted on the weights).
            assert not last_grads[name][mask & (weight == 0)].any()
        else:
            assert torch.equal(weight != 0, mask)  # and no kept weight is
    measured = zeros / sum(m.numel() for m in masks.values())
    assert measured == pytest.approx(achieved) if method != "set" else measured >= achieved
    assert 0 < achieved < 1


def test_rigl_trains_a_channels_last_conv_net(tiny_resnet):
    model = tiny_resnet.to(memory_format=torch.channels_last)
    sp = sb.sparsify(model, "rigl", sparsity=0.7, layer_sparsity="erk",
                     schedule=sb.GradualSchedule(begin_step=0, end_step=4, frequency=2))
    targets = sp.targets()
    inputs, outputs = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    _train(model, sp, 6, inputs.to(memory_format=torch.channels_last), outputs)
    for name, mask in sp.masks().items():
        assert int((~mask).sum()) == exact_zero_count(targets[name], mask.numel())


# -- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, options, message", [
    ("rigl", dict(drop_fraction=0.0), r"drop_fraction = 0.0 is invalid: it must be a "
                                      r"fraction in \(0, 1\)"),
    ("set", dict(drop_fraction=1.0), r"drop_fraction = 1.0 is invalid"),
    ("set", dict(pruned_weights="update"), r"pruned_weights = 'update' is invalid"),
    ("rigl", dict(block=(2, 2)), r"block = \(2, 2\) is invalid"),
])
def test_bad_dynamic_sparse_options_get_one_sentence(mlp, method, options, message):
    with pytest.raises(ValueError, match=message):
        sb.sparsify(mlp, method, sparsity=0.9, schedule=sb.GradualSchedule(0, 10, 2),
                    **options)


def test_set_and_rigl_need_a_schedule_and_a_positive_interval(mlp):
    with pytest.raises(ValueError, match=r"rigl needs schedule=GradualSchedule"):
        sb.sparsify(mlp, "rigl", sparsity=0.9)
    with pytest.raises(ValueError, match=r"frequency must be positive, got 0"):
        sb.sparsify(mlp, "set", sparsity=0.9, schedule=sb.GradualSchedule(0, 10, 0))
    with pytest.raises(ValueError, match=r"initial_sparsity must be 0"):
        sb.sparsify(mlp, "set", sparsity=0.9,
                    schedule=sb.GradualSchedule(0, 10, 2, initial_sparsity=0.5))


def test_rigl_refuses_a_model_too_small_for_its_targets():
    # One 4x4 layer at 90% (ERK gives a single layer the overall target): 2 weights stay, and
    # floor(0.3 · 2) = 0 would move none of them.
    with pytest.raises(ValueError, match=r"Layer 0.weight keeps 2 of 16 weights at sparsity "
                                         r"0.9, so a drop fraction of 0.3 moves none"):
        sb.sparsify(_one_layer(4, 4), "rigl", sparsity=0.9, layer_sparsity="erk",
                    schedule=sb.GradualSchedule(0, 10, 2))


@pytest.mark.parametrize("options, message", [
    (dict(prune_factor=1.2, splice_factor=1.1), r"splice_factor = 1.1 is invalid: it must be "
                                                r"above prune_factor \(1.2\)"),
    (dict(prune_factor=0.0), r"prune_factor = 0.0 is invalid"),
    (dict(gamma=-1.0), r"gamma = -1.0 is invalid"),
    (dict(end_step=-3), r"end_step = -3 is invalid"),
    (dict(c_rate=float("nan")), r"c_rate = nan is invalid"),
])
def test_bad_dns_options_get_one_sentence(mlp, options, message):
    with pytest.raises(ValueError, match=message):
        sb.sparsify(mlp, "dns", **options)


def test_dns_takes_no_target(mlp):
    with pytest.raises(ValueError, match="dns takes no sparsity"):
        sb.sparsify(mlp, "dns", sparsity=0.9)


def test_rigl_shares_its_target_by_erk_unless_told_otherwise():
    """ERK (Evci et al. 2020, eq. in Sec. 3) keeps a layer's density proportional to
    (fan_in + fan_out) / (fan_in · fan_out): a 64x64 layer beside a 64x8 one at 80% overall
    gets 1 - ε·128/4096 and 1 - ε·72/512 with ε solving 0.2·4608 = ε·(128 + 72)."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    schedule = sb.GradualSchedule(0, 10, 2)
    sp = sb.sparsify(model, "rigl", sparsity=0.8, schedule=schedule)
    eps = 0.2 * (64 * 64 + 64 * 8) / (128 + 72)
    expected = {"0.weight": 1 - eps * 128 / 4096, "2.weight": 1 - eps * 72 / 512}
    for name, value in sp.technique.targets.items():
        assert value == pytest.approx(expected[name], abs=1e-6)
    sp.finalize()
    uniform = sb.sparsify(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)),
                          "rigl", sparsity=0.8, schedule=schedule, layer_sparsity="uniform")
    assert set(uniform.technique.targets.values()) == {0.8}


def test_dns_warns_when_a_surgery_prunes_a_layer_whole():
    # |w| = 0.1 … 0.8 evenly: μ = 0.45, σ = sqrt(0.0525) = 0.2291; at c = 2.5, t = 1.0228 and
    # a = 0.9205, above the largest magnitude 0.8: every weight is pruned at the first surgery.
    weights = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]
    with pytest.warns(UserWarning, match=r"pruned every weight of 0\.weight.*c_rate=2\.5"):
        sp = sb.sparsify(_one_layer(2, 4, weights), "dns", c_rate=2.5, gamma=0.0)
    assert not sp.masks()["0.weight"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp.step()  # still empty: warned once only
        sb.sparsify(_one_layer(2, 4, weights), "dns", c_rate=1.0, gamma=0.0)  # a = 0.6112
