"""Iterative magnitude pruning with rewinding, against hand-worked cases and invariants: round
sparsities and exact counts, masks that only shrink, the rewind bit for bit, layer against
global ranking, the rounds' restart of optimizer and learning rate in the runner, bad inputs."""

from pathlib import Path

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.methods import catalogue
from sparsebench.methods.imp import imp_prune_fraction, round_sparsity
from sparsebench.train.loop import round_bounds

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(),
                                  reason="Fashion-MNIST missing: apt-get install "
                                         "dataset-fashion-mnist")

# -- helpers ---------------------------------------------------------------------------------


def _two_layers() -> nn.Sequential:
    # 70 and 21 weights: counts that round differently.
    return nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))


def _with_batch_norm() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train_step(model, sp, optimizer, inputs, outputs) -> None:
    loss = nn.functional.cross_entropy(model(inputs), outputs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sp.step()


def _data(features: int):
    return torch.randn(32, features), torch.randint(0, 3, (32,))


# -- round sparsities ------------------------------------------------------------------------


def test_round_sparsities_by_hand():
    # rounds = 3, final 0.875: p = 1 − 0.125^(1/3) = 0.5, so 0.5, 0.75, 0.875.
    assert imp_prune_fraction(0.875, 3) == pytest.approx(0.5)
    assert [round_sparsity(0.875, r, 3) for r in range(4)] == pytest.approx(
        [0.0, 0.5, 0.75, 0.875])
    assert round_sparsity(0.9, 2, 2) == 0.9  # the last round is the target itself
    assert round_sparsity(0.9, 1, 1) == 0.9 and round_sparsity(0.9, 0, 1) == 0.0


def test_each_round_holds_exact_per_layer_counts_and_masks_only_shrink():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(),
                          nn.Linear(7, 3))  # 100, 70 and 21 weights
    sp = sb.sparsify(model, "imp", sparsity=0.875, rounds=3)
    # 8 steps: 4 trainings of 2 (dense, then one per round).
    starts = sp.plan_rounds(8)
    assert starts == (2, 4, 6)
    inputs, outputs = _data(10)
    # round(s_r·n), half up: 100 weights 50, 75, 88 (87.5); 70 weights 35, 53 (52.5), 61
    # (61.25); 21 weights 11 (10.5), 16 (15.75), 18 (18.375).
    expected = {2: (50, 35, 11), 4: (75, 53, 16), 6: (88, 61, 18)}
    before = sp.masks()
    assert all(bool(m.all()) for m in before.values())  # the first training is dense
    for step in range(1, 9):
        if step - 1 in (0, *starts):  # each round with a fresh optimizer, as plan_rounds says
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _train_step(model, sp, optimizer, inputs, outputs)
        masks = sp.masks()
        for name, mask in masks.items():
            assert not (mask & ~before[name]).any(), (step, name)  # nothing comes back
        zeros = tuple(int((~m).sum()) for m in masks.values())
        if step in expected:
            assert zeros == expected[step], step
        for layer in sp.layers:  # pruned weights are zero and stay zero while training
            assert not layer.original[~layer.parametrization.mask].any()
        before = masks
    assert zeros == (88, 61, 18)
    finalized = sp.finalize()
    assert int((finalized[0].weight == 0).sum()) == 88


def test_a_pruned_weight_is_never_pruned_again_in_a_later_round():
    # Round 2 ranks only the weights round 1 kept (a weight pruned in round 1 is zero, but
    # zero must not count as "smallest" twice): exactly the new share leaves.
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    sp = sb.sparsify(model, "imp", sparsity=0.75, rounds=2)
    sp.plan_rounds(3)
    with torch.no_grad():
        sp.layers[0].original.copy_(torch.arange(1.0, 17.0).view(4, 4))
    sp.step()  # round 1 (0.5): |w| 1…8 pruned, and the rewind sets the init back
    first = sp.masks()["0.weight"].clone()
    assert int((~first).sum()) == 8
    sp.step()  # round 2 (0.75): 12 zeros, the 8 of round 1 among them
    second = sp.masks()["0.weight"]
    assert int((~second).sum()) == 12 and not (second & ~first).any()


# -- rewinding -------------------------------------------------------------------------------


@pytest.mark.parametrize("rewind_step", [0, 1])
def test_the_rewind_restores_every_parameter_and_buffer_bit_for_bit(rewind_step):
    model = _with_batch_norm()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    sp = sb.sparsify(model, "imp", sparsity=0.6, rounds=2, rewind_step=rewind_step)
    assert sp.plan_rounds(9) == (3, 6)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs, outputs = _data(6)
    # Keys of the sparsified model: the weights live under parametrizations.
    point = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".mask")}
    for step in range(1, 8):
        _train_step(model, sp, optimizer, inputs, outputs)
        if step == rewind_step:
            point = {k: v.clone() for k, v in model.state_dict().items()
                     if not k.endswith(".mask")}
        if step in (2, 5):  # trained away from the rewind point (BN statistics too)
            state = model.state_dict()
            assert not torch.equal(state["1.running_mean"], point["1.running_mean"])
            assert not torch.equal(state["3.bias"], point["3.bias"])
        if step in (3, 6):
            state = model.state_dict()
            for key, value in point.items():
                if key.endswith(".original"):
                    mask = state[key.replace(".original", ".0.mask")]
                    assert torch.equal(state[key], value * mask), (step, key)
                    assert not mask.all()
                else:
                    assert torch.equal(state[key], value), (step, key)
    if rewind_step == 0:  # the lottery ticket: the initialization itself
        assert torch.equal(point["1.running_var"], initial["1.running_var"])
        assert torch.equal(point["0.parametrizations.weight.original"], initial["0.weight"])


def test_rewinding_to_the_end_of_the_dense_training_keeps_its_weights():
    # k = the dense training's length: the rewind keeps the trained weights (fine-tuning).
    model = _with_batch_norm()
    sp = sb.sparsify(model, "imp", sparsity=0.5, rounds=1, rewind_step=2)
    assert sp.plan_rounds(4) == (2,)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, outputs = _data(6)
    _train_step(model, sp, optimizer, inputs, outputs)
    # The prune, rewind and all happen in sp.step() after the second optimizer step, so the
    # state there is read around it with the step's own optimizer update.
    loss = nn.functional.cross_entropy(model(inputs), outputs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    trained = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".mask")}
    sp.step()
    state = model.state_dict()
    for key, value in trained.items():
        if key.endswith(".original"):
            value = value * state[key.replace(".original", ".0.mask")]
        assert torch.equal(state[key], value), key


def test_the_rewind_point_is_in_the_sparsifier_state_and_loads_back(tmp_path):
    torch.manual_seed(1)
    model = _with_batch_norm()
    sp = sb.sparsify(model, "imp", sparsity=0.6, rounds=2, rewind_step=1)
    sp.plan_rounds(9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, outputs = _data(6)
    for _ in range(2):
        _train_step(model, sp, optimizer, inputs, outputs)
    state = sp.state_dict()
    rewind = {k for k in state if k.startswith("technique/rewind.")}
    assert "technique/rewind.1.running_mean" in rewind
    assert "technique/rewind.0.parametrizations.weight.original" in rewind
    assert not any(k.endswith(".mask") for k in rewind)
    sp.save(tmp_path / "sparsifier.safetensors")
    torch.manual_seed(1)
    again = sb.sparsify(_with_batch_norm(), "imp", sparsity=0.6, rounds=2, rewind_step=1)
    again.plan_rounds(9)
    assert not torch.equal(again.state_dict()["technique/rewind.1.weight"],
                           state["technique/rewind.1.weight"])  # init there, step 1 here
    again.load(tmp_path / "sparsifier.safetensors")
    loaded = again.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


# -- ranking ---------------------------------------------------------------------------------


def _ranked_by_hand(ranking: str) -> dict[str, list[list[bool]]]:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.2], [0.3, 0.4]]))
        model[1].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -0.05], [0.25, 5.0]]))
    sp = sb.sparsify(model, "imp", sparsity=0.5, rounds=1, ranking=ranking)
    assert sp.plan_rounds(2) == (1,)
    sp.step()  # the end of the dense training: prune by |w| as it stands
    return {name: mask.tolist() for name, mask in sp.masks().items()}


def test_layer_ranking_by_hand():
    # Each layer its own half: 2 of 4 (0.1, 0.2) and 3 of 6 (0.05, 0.25, 1.0).
    assert _ranked_by_hand("layer") == {
        "0.weight": [[False, False], [True, True]],
        "1.weight": [[False, True], [True, False], [False, True]],
    }


def test_global_ranking_by_hand():
    # One ranking over 10 weights, 5 pruned: 0.05, 0.1, 0.2, 0.25, 0.3.
    assert _ranked_by_hand("global") == {
        "0.weight": [[False, False], [False, True]],
        "1.weight": [[True, True], [True, False], [False, True]],
    }


def test_global_ranking_leaves_a_dense_layer_dense_and_hits_the_total():
    model = _two_layers()
    sp = sb.sparsify(model, "imp", sparsity=0.8, rounds=2, ranking="global",
                     layer_sparsity={"2": 0.0})
    sp.plan_rounds(3)
    sp.step()
    sp.step()
    masks = sp.masks()
    assert bool(masks["2.weight"].all())
    assert int((~masks["0.weight"]).sum()) == 56  # 0.8 · 70


# -- the rounds in the runner ----------------------------------------------------------------


def test_round_bounds_by_hand():
    assert round_bounds(5, (), 12) == (0, 12)  # one round: the run's own schedule
    assert [round_bounds(s, (4, 8), 12) for s in (0, 3, 4, 7, 8, 11)] == [
        (0, 4), (0, 4), (4, 8), (4, 8), (8, 12), (8, 12)]


def test_techniques_that_train_in_one_piece_plan_no_rounds():
    assert sb.sparsify(_two_layers(), "magnitude", sparsity=0.5).plan_rounds(100) == ()
    assert sb.sparsify(_two_layers(), "vd").plan_rounds(100) == ()


@needs_fmnist
def test_each_round_restarts_the_optimizer_and_the_learning_rate(tmp_path, monkeypatch):
    from sparsebench.train import build_config, loop, train

    built, seen = [], []
    original = loop._build_optimizer

    def recording(optim, model):
        optimizer = original(optim, model)
        built.append(optimizer)
        optimizer.register_step_pre_hook(lambda o, args, kwargs: seen.append(
            (o.param_groups[0]["lr"], len(o.state), len(built))))
        return optimizer

    monkeypatch.setattr(loop, "_build_optimizer", recording)
    config = build_config("fmnist-lenet300", method="imp", sparsity=0.75, steps=12, overrides=[
        "data.limit_train=500", "data.valid_size=100", "eval.batch_size=500",
        "optim.name=sgd", "optim.momentum=0.9", "optim.schedule=cosine",
        "optim.warmup_steps=2", "sparsity.rounds=2", "sparsity.rewind_step=1"])
    train(config, tmp_path / "run", progress=False)
    lrs = [lr for lr, _, _ in seen]
    assert len(lrs) == 12
    # Three trainings of 4 steps, each with warm-up then cosine over its own 4 steps.
    assert lrs[0:4] == lrs[4:8] == lrs[8:12]
    assert lrs[0] == pytest.approx(0.5 * config.optim.lr) and lrs[1] == config.optim.lr
    assert lrs[2] > lrs[3] > 0
    # A fresh optimizer at steps 0, 4 and 8 (no momentum carried over), used to its round's
    # end: empty state at a round's first step, a momentum buffer per parameter after it.
    parameters = len(built[0].param_groups[0]["params"])
    assert [(state, n) for _, state, n in seen] == [
        (0 if step % 4 == 0 else parameters, step // 4 + 1) for step in range(12)]


@needs_fmnist
def test_a_rewind_step_beyond_the_dense_training_fails_before_anything_is_written(tmp_path):
    from sparsebench.train import build_config, train

    config = build_config("fmnist-lenet300", method="imp", sparsity=0.75, steps=12, overrides=[
        "data.limit_train=500", "data.valid_size=100", "sparsity.rounds=2",
        "sparsity.rewind_step=5"])
    with pytest.raises(ValueError, match="rewind_step = 5 is beyond the first"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# -- the catalogue and bad inputs ------------------------------------------------------------


def test_the_catalogue_entry():
    from sparsebench.study.figures import _EXTRA

    technique = catalogue.get("imp")
    assert technique.name in catalogue.sparsifiers() and technique.takes_target
    assert catalogue.display("imp") == "iterative magnitude pruning"
    others = [t.colour for t in catalogue.entries() if t.name != "imp"]
    assert technique.colour not in others and technique.colour not in _EXTRA
    assert catalogue.canonical("iterative_magnitude_pruning") == "imp"


@pytest.mark.parametrize("hparams, message", [
    (dict(rounds=0), r"IMPConfig.rounds = 0 is invalid: it must be an integer >= 1"),
    (dict(rewind_step=-1), r"IMPConfig.rewind_step = -1 is invalid"),
    (dict(prune_fraction=1.5), r"IMPConfig.prune_fraction = 1.5 is invalid: it must be a "
                               r"fraction in \(0, 1\)"),
    (dict(prune_fraction=0.0), r"IMPConfig.prune_fraction = 0.0 is invalid"),
    (dict(ranking="random"), r"IMPConfig.ranking = 'random' is invalid: it must be one of "
                             r"\['layer', 'global'\]"),
    (dict(pruned_weights="update"), r"IMPConfig.pruned_weights = 'update' is invalid"),
    (dict(block=(2, 2)), r"IMPConfig.block = \(2, 2\) is invalid"),
    (dict(prune_fraction=0.3), r"prune_fraction = 0.3 over 3 rounds reaches sparsity 0.657, "
                               r"but the target of 0.weight is 0.875 \(p = 0.5\)"),
])
def test_bad_options_get_one_sentence(hparams, message):
    with pytest.raises(ValueError, match=message):
        sb.sparsify(_two_layers(), "imp", sparsity=0.875, rounds=hparams.pop("rounds", 3),
                    **hparams)


def test_a_prune_fraction_that_reaches_the_target_is_accepted():
    sp = sb.sparsify(_two_layers(), "imp", sparsity=0.875, rounds=3, prune_fraction=0.5)
    sp.plan_rounds(4)
    for _ in range(4):
        sp.step()
    assert int((~sp.masks()["0.weight"]).sum()) == 61  # round(0.875 · 70)


@pytest.mark.parametrize("steps, rewind_step, message", [
    (8, 3, r"IMPConfig.rewind_step = 3 is beyond the first \(dense\) training, which has 2 of "
           r"the run's 8 steps \(4 trainings\); it must be at most 2\."),
    (3, 0, r"IMP with rounds = 3 trains 4 times \(dense, then once per round\), so the run "
           r"needs at least 4 steps; it has 3\."),
])
def test_options_that_do_not_fit_the_run_get_one_sentence(steps, rewind_step, message):
    sp = sb.sparsify(_two_layers(), "imp", sparsity=0.875, rounds=3, rewind_step=rewind_step)
    with pytest.raises(ValueError, match=message):
        sp.plan_rounds(steps)


def test_stepping_without_a_plan_says_what_to_call():
    sp = sb.sparsify(_two_layers(), "imp", sparsity=0.5)
    with pytest.raises(RuntimeError, match=r"call Sparsifier.plan_rounds\(total_steps\)"):
        sp.step()


def test_the_runner_refuses_bad_rounds_in_the_config():
    from sparsebench.train import build_config

    with pytest.raises(ValueError, match="IMPConfig.rounds = 0 is invalid"):
        build_config("fmnist-lenet300", method="imp", sparsity=0.9,
                     overrides=["sparsity.rounds=0"])
