import pytest

from sparsebench.distributions import LayerSparsity, erk, fill, resolve_layer_sparsity, uniform

SHAPES = {"a": (10, 10), "b": (30, 10), "c": (60, 10)}  # 100, 300, 600 weights


def test_uniform_with_fixed_layers():
    assert uniform(SHAPES, 0.9, {"a": 0.0}) == {"a": 0.0, "b": 0.9, "c": 0.9}


def test_fill_reaches_the_overall_target():
    # 0.6 * 1000 = 600 zeros; a dense, c at 0.8 gives 480, so b needs 120 / 300 = 0.4.
    result = fill(SHAPES, 0.6, {"a": 0.0, "c": 0.8})
    assert result == pytest.approx({"a": 0.0, "b": 0.4, "c": 0.8})


def test_fill_refuses_an_unreachable_target():
    with pytest.raises(ValueError, match="would need sparsity 1.4000"):
        fill(SHAPES, 0.9, {"a": 0.0, "c": 0.8})


def test_erk_by_hand():
    # Densities ∝ (10+10)/100 = 0.2 and (100+100)/10000 = 0.02. At 50%: budget 5050 nonzeros,
    # scale 5050 / (20 + 200) ≈ 23 makes the small layer dense; the big one gets 4950 / 10000.
    result = erk({"small": (10, 10), "big": (100, 100)}, 0.5)
    assert result["small"] == 0.0
    assert result["big"] == pytest.approx(0.505)


def test_erk_overall_sparsity_is_the_target():
    shapes = {"conv": (16, 8, 3, 3), "fc1": (64, 256), "fc2": (10, 64)}
    result = erk(shapes, 0.9)
    sizes = {"conv": 1152, "fc1": 16384, "fc2": 640}
    zeros = sum(result[n] * sizes[n] for n in sizes)
    assert zeros / sum(sizes.values()) == pytest.approx(0.9)


def test_erk_refuses_a_target_the_fixed_layers_rule_out():
    # a dense keeps 100 weights where 10% of 200 allows 20: no sparsity of b can make up for it
    # (it was given 1.8 once, an impossible sparsity).
    with pytest.raises(ValueError, match="they alone keep more weights than it allows"):
        erk({"a": (10, 10), "b": (10, 10)}, 0.9, {"a": 0.0})
    # a at 95% already holds 95 zeros, 47.5% of the whole: 10% is out of reach even with b
    # dense (it was returned anyway once, 47.5% for a 10% target).
    with pytest.raises(ValueError, match="every other layer dense is still sparser"):
        erk({"a": (10, 10), "b": (10, 10)}, 0.1, {"a": 0.95})


def test_resolve_matches_patterns_on_aliases():
    layers = {"conv1.weight": ((8, 1, 3, 3), ("conv1.weight", "conv1")),
              "fc.weight": ((10, 8), ("fc.weight", "fc"))}
    spec = LayerSparsity.coerce({"conv1": 0.0})
    assert resolve_layer_sparsity(layers, 0.7, spec) == {"conv1.weight": 0.0, "fc.weight": 0.7}
    with pytest.raises(ValueError, match="'nope' matches no sparsified weight"):
        resolve_layer_sparsity(layers, 0.7, LayerSparsity.coerce({"nope": 0.5}))
    with pytest.raises(ValueError, match="Unknown layer distribution 'bogus'"):
        LayerSparsity.coerce("bogus")
    with pytest.raises(ValueError, match=r"layer_sparsity\['fc'\] must lie in \[0, 1\)"):
        LayerSparsity.coerce({"fc": 1.5})
