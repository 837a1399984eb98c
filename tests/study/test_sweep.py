"""Sweep files: validation (one sentence per error), stable ids, random search, MP v2 layer
targets by hand, augmented-init statistics by Monte Carlo, and the example sweep files."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.init import rescale_for_sparse_fan_in
from sparsebench.study.sweep import (
    SweepError,
    coarse_to_fine,
    load_sweep,
    mp_v2_layer_targets,
    parse_sweep,
    plan_phase1,
    width_for_parameters,
)

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "task": "fmnist-lenet300",
    "steps": 20,
    "sparsities": [0.5, 0.9],
    "techniques": {"magnitude": {}, "variational_dropout": {"grid": {"kl_weight": [1e-5]}}},
}


def _with(**changes):
    values = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


@pytest.mark.parametrize("values, message", [
    (_with(task="cifar"), "task: 'cifar' is not a task"),
    (_with(steps=0), "steps: must be an integer >= 1, got 0"),
    (_with(steps=None), "steps: is required"),
    (_with(sparsities=[50, 90]), "write 0.5 for 50%"),
    (_with(sparsities=[]), "sparsities: must be a non-empty list"),
    (_with(sparsities=[0.5, 0.5]), "lists a sparsity twice"),
    (_with(colour="red"), "unknown field(s) ['colour']"),
    (_with(techniques={"pruning": {}}), "'pruning' is not a technique"),
    (_with(techniques={"magnitude": {"grid": {"kl_weight": [1]}}}),
     "'kl_weight' is not a hyperparameter of magnitude"),
    (_with(techniques={"magnitude": {"grid": {"end": 0.5}}}),
     "techniques.magnitude.grid.end: must be a non-empty list"),
    (_with(techniques={"l0": {"grid": {"l0_weight": [1]}, "random": {}}}),
     "has both grid and random"),
    (_with(techniques={"l0": {"random": {"samples": 2, "space": {
        "l0_weight": {"log_uniform": [0, 1]}}}}}), "log_uniform needs positive bounds"),
    (_with(techniques={"l0": {"random": {"samples": 2, "space": {
        "l0_weight": {"normal": [0, 1]}}}}}), "must be one of {uniform, log_uniform"),
    (_with(techniques={"variational_dropout": {"grid": {"kl_weight": [-1.0]}}}),
     "techniques.variational_dropout: VariationalDropoutConfig.kl_weight = -1.0 is invalid"),
    (_with(overrides={"optim.lr": -1}), "overrides: optim.lr = -1.0 is invalid"),
    (_with(overrides={"lr": 0.1}), "must be a dotted config key"),
    (_with(overrides={"optimizer.lr": 0.1}), "names no config section"),
    (_with(retraining={"kinds": ["scratch-c"], "sparsities": [0.9]}),
     "retraining.kinds: must list some of"),
    (_with(retraining={"sparsities": [0.8]}), "[0.8] are not among the sweep's sparsities"),
    (_with(techniques={"random": {}}, retraining={"sparsities": [0.9]}),
     "techniques must include magnitude"),
    (_with(mp_v2={"sparsities": [0.9]}), "mp_v2.sparsities: 0.9 is unreachable on lenet300"),
    (_with(mp_v2={"sparsities": [0.9], "first": "conv9"}),
     "mp_v2.first: 'conv9' is not a sparsified weight"),
    (_with(small_dense={"sparsities": [0.9], "option": "depth"}),
     "small_dense.option: model lenet300 has no option 'depth'"),
    (_with(resources={"cpus": 0}), "resources: cpus must be > 0"),
    (_with(dense={"seeds": 3}), "dense: unknown key(s) ['seeds']; it has replicas"),
    (_with(dense={"replicas": 0}), "dense.replicas: must be an integer >= 1"),
    (_with(dense="yes"), "dense: must be true, false or {replicas: N}"),
    (_with(mp_v2={"sparsities": [0.9], "grid": {"kl_weight": [1e-5]}}),
     "mp_v2.grid: 'kl_weight' is not a hyperparameter of magnitude"),
    (_with(variant="(4x steps)"), "variant: must be a short label of plain words"),
    (_with(variant=4), "variant: must be a short label of plain words"),
    (_with(variant=" "), "variant: must be a short label of plain words"),
])
def test_validation_is_one_sentence(values, message):
    with pytest.raises(SweepError) as info:
        parse_sweep(values)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and "Traceback" not in text


def test_load_sweep_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: fmnist-lenet300\nsteps: [1\n")
    with pytest.raises(SweepError, match=r"bad.yaml: not valid YAML"):
        load_sweep(path)
    with pytest.raises(SweepError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")


def test_points_and_stable_ids():
    spec = parse_sweep(_with(replicas=2, techniques={
        "magnitude": {"grid": {"begin": [0.1, 0.2], "end": [0.6]}},
        "variational_dropout": {"grid": {"kl_weight": [1e-5, 3e-5]}},
    }), name="a")
    points = plan_phase1(spec)
    # dense 2 replicas + magnitude 2 settings x 2 targets x 2 seeds + VD 2 settings x 2 seeds.
    assert len(points) == 2 + 8 + 4
    ids = [p.run_id(spec.task) for p in points]
    assert len(set(ids)) == len(ids)
    assert all(p.target is None for p in points if p.technique == "variational_dropout")
    # The sweep's name is not part of a point: another file with the same point shares it.
    again = plan_phase1(parse_sweep(_with(replicas=2, techniques={
        "magnitude": {"grid": {"begin": [0.1, 0.2], "end": [0.6]}},
        "variational_dropout": {"grid": {"kl_weight": [1e-5, 3e-5]}},
    }), name="b"))
    assert [p.run_id(spec.task) for p in again] == ids
    changed = plan_phase1(parse_sweep(_with(steps=21, replicas=2, techniques={
        "magnitude": {"grid": {"begin": [0.1, 0.2], "end": [0.6]}},
        "variational_dropout": {"grid": {"kl_weight": [1e-5, 3e-5]}},
    })))
    assert not set(p.run_id(spec.task) for p in changed) & set(ids)
    mp = next(p for p in points if p.technique == "magnitude" and p.target == 0.9)
    config = mp.config(spec.task)
    assert (config.sparsity.method, config.sparsity.sparsity, config.run.steps) == \
        ("magnitude", 0.9, 20)


def test_a_variant_keeps_its_runs_apart_and_leaves_other_sweeps_ids_alone():
    from sparsebench.study.store import Run

    plain = plan_phase1(parse_sweep(_with()))
    marked = plan_phase1(parse_sweep(_with(variant="4x steps")))
    assert [p.technique for p in marked] == [p.technique for p in plain]
    assert {p.variant for p in marked} == {"4x steps"} and {p.variant for p in plain} == {""}
    # Its own runs, never the study's: no id in common with the same points unmarked.
    assert not {p.run_id("t") for p in marked} & {p.run_id("t") for p in plain}
    # The label tables and figures draw the series under.
    point = next(p for p in marked if p.technique == "magnitude")
    run = Run(id=point.run_id("t"), train_id=point.run_id("t"), technique=point.technique,
              variant=point.variant, created="", updated="")
    assert run.label == "magnitude (4x steps)"
    # A sweep file without the field plans what it planned before the field existed: the
    # identity of a point with variant "" is unchanged, so finished runs are found again.
    assert plain[0].identity("t")["variant"] == ""


def test_the_committed_studys_finished_sweep_still_plans_its_stored_runs(tmp_path):
    # A change to what defines a point would silently plan the whole study again.
    import shutil

    from sparsebench.study.store import RunStore

    spec = load_sweep(REPO / "sweeps" / "fmnist-resnet-new-techniques.yaml")
    copy = tmp_path / "fmnist-resnet.db"  # opening a store may write to it; not the committed one
    shutil.copyfile(REPO / "results" / "study" / "fmnist-resnet.db", copy)
    with RunStore(copy) as store:
        stored = {run.id for run in store.runs(source="ours", status="finished")}
    planned = {p.run_id(spec.task) for p in plan_phase1(spec)}
    assert len(planned) == 28 and planned <= stored


def test_dense_replicas_apart_from_the_techniques():
    spec = parse_sweep(_with(replicas=1, dense={"replicas": 3}))
    points = plan_phase1(spec)
    assert [p.seed for p in points if p.technique == "dense"] == [0, 1, 2]
    assert {p.seed for p in points if p.technique != "dense"} == {0}
    # The same dense seed-0 point as a plain ``dense: true`` sweep: adding seeds keeps it.
    plain = plan_phase1(parse_sweep(_with(replicas=1)))
    assert points[0].run_id(spec.task) == plain[0].run_id(spec.task)
    assert not [p for p in plan_phase1(parse_sweep(_with(dense=False))) if p.technique == "dense"]


def test_coarse_to_fine_order_by_hand():
    assert coarse_to_fine([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]) == \
        [0.8, 0.5, 0.98, 0.6, 0.9, 0.7, 0.95]
    assert coarse_to_fine([0.95, 0.7, 0.9]) == [0.9, 0.7, 0.95]
    assert coarse_to_fine([0.9]) == [0.9]
    values = [i / 20 for i in range(1, 20)]
    assert sorted(coarse_to_fine(values)) == values  # a permutation, nothing lost


def test_plan_interleaves_techniques_coarse_to_fine():
    spec = parse_sweep(_with(sparsities=[0.5, 0.7, 0.9], techniques={
        "magnitude": {"grid": {"end": [0.5, 0.6]}},
        "random": {},
        "variational_dropout": {"grid": {"kl_weight": [1e-5, 3e-5]}},
    }))
    order = [(p.technique, p.target, p.hyperparameters.get("end") or
              p.hyperparameters.get("kl_weight")) for p in plan_phase1(spec)]
    assert order == [
        ("dense", None, None),
        ("magnitude", 0.7, 0.5), ("random", 0.7, None), ("variational_dropout", None, 1e-5),
        ("magnitude", 0.7, 0.6), ("random", 0.5, None), ("variational_dropout", None, 3e-5),
        ("magnitude", 0.5, 0.5), ("random", 0.9, None),
        ("magnitude", 0.5, 0.6),
        ("magnitude", 0.9, 0.5),
        ("magnitude", 0.9, 0.6),
    ]


def test_mp_v2_grid_narrows_the_magnitude_settings():
    values = _with(sparsities=[0.5, 0.9], techniques={
        "magnitude": {"grid": {"end": [0.5, 0.6, 0.7]}, "fixed": {"begin": 0.2}}})
    values["mp_v2"] = {"sparsities": [0.5], "first": "fc2.weight", "grid": {"end": [0.6]},
                       "steps_factor": 2}
    mp_v2 = [p for p in plan_phase1(parse_sweep(values)) if p.technique == "mp-v2"]
    assert [p.hyperparameters for p in mp_v2] == [{"begin": 0.2, "end": 0.6}]
    assert mp_v2[0].steps == 40
    del values["mp_v2"]["grid"]
    assert len([p for p in plan_phase1(parse_sweep(values)) if p.technique == "mp-v2"]) == 3


def test_random_search_is_seeded_and_in_bounds():
    values = _with(techniques={"l0": {"random": {"samples": 20, "seed": 3, "space": {
        "l0_weight": {"log_uniform": [1e-5, 1e-3]},
        "init_log_alpha": {"choice": [0.0, 1.0]},
    }}, "fixed": {"warmup_end": 0.5}}})
    first = [p.hyperparameters for p in plan_phase1(parse_sweep(values)) if p.technique == "l0"]
    second = [p.hyperparameters for p in plan_phase1(parse_sweep(values)) if p.technique == "l0"]
    assert first == second and len(first) == 20
    weights = [h["l0_weight"] for h in first]
    assert all(1e-5 <= w <= 1e-3 for w in weights)
    # Log-uniform: about half the draws below the geometric mean 1e-4, not 1/20 of them.
    assert 4 <= sum(w < 1e-4 for w in weights) <= 16
    assert {h["init_log_alpha"] for h in first} <= {0.0, 1.0}
    assert all(h["warmup_end"] == 0.5 for h in first)


def test_mp_v2_layer_targets_by_hand():
    spec = parse_sweep({"task": "fmnist-lenet5", "steps": 20, "sparsities": [0.9],
                        "techniques": {"magnitude": {}},
                        "mp_v2": {"sparsities": [0.9, 0.95]}})
    assert mp_v2_layer_targets(spec, 0.9) == {"conv1.weight": 0.0, "fc2.weight": 0.8}
    points = [p for p in plan_phase1(spec) if p.technique == "mp-v2"]
    assert {p.target for p in points} == {0.9, 0.95}
    assert all(p.steps == 30 for p in points)  # 1.5 x 20
    config = points[0].config(spec.task)
    assert config.sparsity.distribution == "fill"
    assert config.sparsity.layer_sparsity == {"conv1.weight": 0.0, "fc2.weight": 0.8}


def test_width_for_parameters_is_the_nearest(tmp_path):
    options = {"num_classes": 10, "in_channels": 1, "width": 16, "stem": "cifar",
               "layers": (1, 1, 1), "zero_init_residual": False}

    def count(width):
        from sparsebench import models
        return sum(p.numel() for p in models.create("resnet20", **{**options, "width": width})
                   .parameters())

    target = (count(5) + count(6)) // 2 + 1  # nearer 6 than 5
    width, params = width_for_parameters("resnet20", options, "width", target)
    assert width == 6 and params == count(6)
    assert width_for_parameters("resnet20", options, "width", 10)[0] == 1
    assert width_for_parameters("resnet20", options, "width", 10**9)[0] == 16


@pytest.mark.parametrize("layer", [nn.Linear(1000, 400), nn.Conv2d(40, 300, 5)])
def test_augmented_init_restores_the_dense_pre_activation_variance(layer):
    torch.manual_seed(0)
    weight = layer.weight.detach().clone()
    fan_in = weight[0].numel()
    # Each output unit keeps its own fraction of inputs, from 5% to 50%.
    density = torch.linspace(0.05, 0.5, weight.shape[0]).view(-1, *[1] * (weight.dim() - 1))
    mask = torch.rand_like(weight) < density
    model = nn.Sequential(copy.deepcopy(layer))
    rescale_for_sparse_fan_in(model, {"0.weight": mask})
    rescaled = model[0].weight.detach() * mask
    # Pre-activations of unit-variance inputs: w . x over the unit's inputs.
    x = torch.randn(4000, fan_in)
    dense_var = (x @ weight.reshape(len(weight), -1).T).var(dim=0)
    sparse_var = (x @ rescaled.reshape(len(weight), -1).T).var(dim=0)
    masked_var = (x @ (weight * mask).reshape(len(weight), -1).T).var(dim=0)
    # The default init (kaiming_uniform, a=sqrt(5)) draws U(-b, b), b = 1/sqrt(fan_in):
    # each dense pre-activation has variance fan_in * b^2 / 3 = 1/3.
    assert dense_var.mean().item() == pytest.approx(1 / 3, rel=0.05)
    assert sparse_var.mean().item() == pytest.approx(1 / 3, rel=0.05)
    # Per unit, whatever its density (the sparsest and the densest quarters alike).
    quarter = len(weight) // 4
    assert sparse_var[:quarter].mean().item() == pytest.approx(1 / 3, rel=0.08)
    assert sparse_var[-quarter:].mean().item() == pytest.approx(1 / 3, rel=0.08)
    # Without the rescaling the variance shrinks with the kept fraction.
    expected = (density.flatten() / 3).mean().item()
    assert masked_var.mean().item() == pytest.approx(expected, rel=0.08)
    assert not math.isclose(masked_var.mean().item(), 1 / 3, rel_tol=0.3)


def test_example_sweep_files_are_valid():
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert files, "sweeps/ holds the example sweep files"
    for path in files:
        spec = load_sweep(path)
        assert plan_phase1(spec)


def test_demo_sweep_matches_the_sweeps_file():
    import yaml

    from sparsebench.demo import DEMO_SWEEP

    shipped = yaml.safe_load((REPO / "sweeps" / "fmnist-lenet300-demo.yaml").read_text())
    assert yaml.safe_load(DEMO_SWEEP) == shipped
    spec = parse_sweep(shipped)
    techniques = {p.technique for p in plan_phase1(spec)}
    assert techniques == {"dense", "magnitude", "random", "variational_dropout", "l0"}
    assert len(spec.sparsities) >= 3 and spec.retraining is not None


def test_small_dense_sizing_finds_its_source_under_the_runs_folder(tmp_path):
    """On another machine the store's run_dir of a source that finished here does not exist;
    the sweep's own runs folder holds the copy of its result.json that travelled."""
    import json

    from sparsebench.study.store import Run
    from sparsebench.study.sweep import _read_parameters

    source = Run(id="magnitude-s90-r0-abc", technique="magnitude",
                 run_dir=str(tmp_path / "elsewhere" / "magnitude-s90-r0-abc"))
    assert _read_parameters(source) is None
    moved = tmp_path / "runs" / source.id
    moved.mkdir(parents=True)
    (moved / "result.json").write_text(json.dumps({"parameters": {"nonzero": 148390}}))
    assert _read_parameters(source) is None  # the store's path alone: still nothing
    assert _read_parameters(source, tmp_path / "runs") == 148390


def test_small_dense_sizing_without_result_json_counts_the_stores_layers():
    """A fresh checkout has the store but no run folders: the nonzeros are the dense model's
    parameters less the zeros of the recorded layers (worked by hand: 1,000 parameters, two
    layers of 600 and 300 weights keeping 60 and 30, so 810 zeros and 190 nonzero, the 100
    parameters outside them counted as kept)."""
    from sparsebench.study.store import Run
    from sparsebench.study.sweep import _read_parameters

    layers = [{"name": "a.weight", "size": 600, "nonzeros": 60},
              {"name": "b.weight", "size": 300, "nonzeros": 30}]
    source = Run(id="magnitude-s90-r0-abc", technique="magnitude", run_dir="/nowhere",
                 layers=layers)
    assert _read_parameters(source) is None  # without the dense count, still nothing
    assert _read_parameters(source, total=lambda: 1000) == 190
    assert _read_parameters(Run(id="x", technique="magnitude"), total=lambda: 1000) is None


def test_small_dense_gru_is_sized_with_the_vocabulary_its_source_trained_with():
    """The GRU preset says 256 characters, the Shakespeare data has 85 and the source run's
    stored config records 85: the small dense model must match the source's nonzeros with 85
    (a model sized with 256 spends its parameters on rows the data never uses)."""
    from sparsebench import models
    from sparsebench.study.store import Run
    from sparsebench.study.sweep import load_sweep
    from sparsebench.study.sweep.plan import plan_phase2_from_runs

    spec = load_sweep(REPO / "sweeps" / "shakespeare-gru-wavernn.yaml")
    phase1 = plan_phase1(spec)
    options = {"vocab_size": 85, "embed_dim": 64, "hidden_size": 512}

    def gru_parameters(hidden: int) -> int:
        model = models.create("gru-lm", **{**options, "hidden_size": hidden})
        return sum(p.numel() for p in model.parameters())

    nonzero = 27162  # a 98% run's count (result.json of magnitude-s98-r1)
    dense = gru_parameters(512)
    # One recorded layer holding all the zeros, so that the store alone gives `nonzero`.
    layers = [{"name": "cells.0.hh.weight", "size": dense - nonzero + 10, "nonzeros": 10}]
    runs = [Run(id=p.run_id(spec.task), technique="magnitude", target_sparsity=p.target,
                status="finished", metric_name="bpc", metric_value=3.0, higher_is_better=False,
                metrics={"valid": {"bpc": 3.0}}, layers=layers,
                config={"model": {"name": "gru-lm", "options": options}})
            for p in phase1 if p.technique == "magnitude" and p.target == 0.98]
    points = [p for p in plan_phase2_from_runs(spec, runs, phase1) if p.target is None]
    assert len(points) == 3  # three seeds of one small dense model
    hidden = points[0].hyperparameters["hidden_size"]
    assert points[0].hyperparameters["matched_nonzero"] == nonzero
    assert points[0].hyperparameters["parameters"] == gru_parameters(hidden)
    # The nearest width: one unit either way is further from the source's nonzeros.
    gap = abs(gru_parameters(hidden) - nonzero)
    assert gap <= abs(gru_parameters(hidden - 1) - nonzero)
    assert gap <= abs(gru_parameters(hidden + 1) - nonzero)
    assert hidden > 20  # what the preset's 256 characters gave


def test_select_by_picks_phase_two_sources_by_the_named_measure(tmp_path):
    """Two finished magnitude runs at 90%: the first has the better headline metric (BLEU-like,
    higher), the second the lower validation loss. Without select_by the first is the source;
    with select_by: valid.loss the second; a run lacking the measure is an error."""
    from sparsebench.study.store import Run, RunStore
    from sparsebench.study.sweep import best_magnitude_runs

    values = _with(techniques={"magnitude": {"grid": {"end": [0.4, 0.6]}}})
    plain, by_loss = parse_sweep(values), parse_sweep({**values, "select_by": "valid.loss"})
    phase1 = plan_phase1(plain)
    # What picks phase 2's sources is no part of a phase-1 run's identity.
    assert [p.run_id(plain.task) for p in phase1] == [
        p.run_id(by_loss.task) for p in plan_phase1(by_loss)]
    ids = [p.run_id(plain.task) for p in phase1 if p.technique == "magnitude" and p.target == 0.9]
    assert len(ids) == 2
    scores = {ids[0]: (4.0, 5.5), ids[1]: (3.0, 5.2)}  # (headline metric, valid loss)
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([Run(id=i, technique="magnitude", target_sparsity=0.9, status="finished",
                          metric_name="bleu", metric_value=m, higher_is_better=True,
                          metrics={"valid": {"loss": loss}, "test": {"bleu": m}})
                      for i, (m, loss) in scores.items()])
        assert best_magnitude_runs(store, plain, phase1)[0.9].id == ids[0]
        assert best_magnitude_runs(store, by_loss, phase1)[0.9].id == ids[1]
        store.set_metrics(ids[0], {"test": {"bleu": 4.0}})  # its validation loss is gone
        with pytest.raises(ValueError, match="has no valid.loss"):
            best_magnitude_runs(store, by_loss, phase1)


def test_select_by_a_lower_is_better_headline_picks_the_lowest(tmp_path):
    """Bits per character, the language model's headline, is lower-better: of two magnitude
    runs at 90% with validation bpc 1.9 and 1.7, select_by: valid.bpc picks the second."""
    from sparsebench.study.store import Run, RunStore
    from sparsebench.study.sweep import best_magnitude_runs

    spec = parse_sweep({**_with(techniques={"magnitude": {"grid": {"end": [0.4, 0.6]}}}),
                        "task": "shakespeare-gru", "select_by": "valid.bpc"})
    phase1 = plan_phase1(spec)
    ids = [p.run_id(spec.task) for p in phase1 if p.technique == "magnitude" and p.target == 0.9]
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([Run(id=i, technique="magnitude", target_sparsity=0.9, status="finished",
                          metric_name="bpc", metric_value=bpc, higher_is_better=False,
                          metrics={"valid": {"bpc": bpc}, "test": {"bpc": bpc}})
                      for i, bpc in zip(ids, (1.9, 1.7), strict=True)])
        assert best_magnitude_runs(store, spec, phase1)[0.9].id == ids[1]


@pytest.mark.parametrize("select_by, message", [
    ("loss", "select_by: must be <split>.<measure>"),
    ("train.loss", "select_by: must be <split>.<measure>"),
    ("valid.", "select_by: must be <split>.<measure>"),
    ("valid.bleu", "'bleu' is not measured on task fmnist-lenet300; it has ['top1', 'top5', "
                   "'loss']"),
])
def test_select_by_must_name_a_split_and_a_measure_of_the_task(select_by, message):
    with pytest.raises(SweepError) as info:
        parse_sweep({**BASE, "select_by": select_by})
    assert message in str(info.value)
