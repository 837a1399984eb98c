"""The budget sweep (issue 28): its sweep files reuse the image study's runs by id, the pruning
schedule scales with the budget, and ``import-runs --sweep`` copies only what a sweep plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsebench.cli import main
from sparsebench.study.store import Run, RunStore
from sparsebench.study.sweep import (
    load_sweep,
    parse_sweep,
    plan_phase1,
    plan_phase2,
    reusable_run_ids,
)
from sparsebench.train import build_config

REPO = Path(__file__).resolve().parents[2]
BUDGETS = (600, 1200, 2400)


def _budget(steps: int):
    return load_sweep(REPO / "sweeps" / f"fmnist-resnet-budget-{steps}.yaml")


def test_the_budget_files_differ_only_in_their_steps():
    specs = [_budget(steps) for steps in BUDGETS]
    assert [spec.steps for spec in specs] == list(BUDGETS)
    assert {spec.select_by for spec in specs} == {"valid.top1"}
    for spec in specs:
        assert spec.seeds == [0, 1, 2] and spec.dense_seeds == [0, 1, 2]
        assert spec.sparsities == (0.9,)
        assert sorted(spec.techniques) == ["magnitude", "random"]
        assert spec.retraining.kinds == ("scratch-e", "lottery")


def test_seed_zero_of_the_600_step_budget_is_the_image_study_run():
    """Reuse rests on the ids: every seed-0 point of the 600-step budget (dense, both magnitude
    settings, random end 0.4) must be a point the image study itself planned."""
    study = {p.run_id("fmnist-resnet") for p in
             plan_phase1(load_sweep(REPO / "sweeps" / "fmnist-resnet-study.yaml"))}
    budget = [p for p in plan_phase1(_budget(600)) if p.seed == 0]
    assert len(budget) == 4  # dense, magnitude end 0.4 and 0.6, random end 0.4
    assert {p.run_id("fmnist-resnet") for p in budget} <= study
    # ...and the 1,200-step probe of session 8 is seed 0 of the 1,200-step budget.
    probe = {p.run_id("fmnist-resnet") for p in
             plan_phase1(load_sweep(REPO / "sweeps" / "fmnist-resnet-budget.yaml"))}
    assert probe <= {p.run_id("fmnist-resnet") for p in plan_phase1(_budget(1200))}


@pytest.mark.parametrize("steps, begin, end", [(600, 60, 240), (1200, 120, 480),
                                                (2400, 240, 960)])
def test_the_pruning_schedule_is_a_fraction_of_the_budget(steps, begin, end):
    """begin 0.1 and end 0.4 of the run: 10% and 40% of its steps, worked by hand."""
    config = build_config("fmnist-resnet", method="magnitude", sparsity=0.9, steps=steps,
                          values={"sparsity": {"begin": 0.1, "end": 0.4,
                                               "pruned_weights": "keep"}})
    assert config.step_of(config.sparsity.begin) == begin
    assert config.step_of(config.sparsity.end) == end


TINY = {"task": "fmnist-lenet300", "steps": 20, "replicas": 2, "sparsities": [0.5, 0.9],
        "dense": True, "techniques": {"magnitude": {"grid": {"end": [0.4, 0.6]}}, "random": {}},
        "retraining": {"kinds": ["scratch-e", "lottery"], "sparsities": [0.9], "replicas": 2},
        "select_by": "valid.top1"}


def _tiny_spec():
    return parse_sweep(TINY)


def test_reusable_ids_hold_phase_two_from_whichever_magnitude_run_wins(tmp_path):
    spec = _tiny_spec()
    phase1 = plan_phase1(spec)
    reusable = reusable_run_ids(spec)
    assert {p.run_id(spec.task) for p in phase1} <= reusable
    sources = [p for p in phase1 if p.technique == "magnitude" and p.target == 0.9]
    assert len(sources) == 4  # 2 settings x 2 seeds
    # 2 + 2*2*2 + 2*2 phase 1 points, and 2 kinds x 2 replicas from each 90% source
    assert len(reusable) == len(phase1) + 4 * 2 * 2
    for winner in sources:
        with RunStore(tmp_path / f"{winner.seed}-{winner.hyperparameters['end']}.db") as store:
            store.upsert([Run(id=p.run_id(spec.task), technique="magnitude", target_sparsity=0.9,
                              status="finished", seed=p.seed, metric_value=0.5,
                              metrics={"valid": {"top1": 0.9 if p is winner else 0.1}})
                          for p in sources])
            phase2 = plan_phase2(spec, store, phase1)
        assert len(phase2) == 4 and {p.source for p in phase2} == {winner.run_id(spec.task)}
        assert {p.run_id(spec.task) for p in phase2} <= reusable


def test_import_runs_with_a_sweep_copies_only_its_runs(tmp_path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(TINY))
    planned = sorted(reusable_run_ids(load_sweep(sweep_file)))
    with RunStore(tmp_path / "study.db") as study:
        study.upsert([Run(id=i, technique=i.split("-s")[0].split("-r")[0], status="finished",
                          metric_value=0.8) for i in planned[:3]]
                     + [Run(id="magnitude-s90-r0-000000000000", technique="magnitude",
                            status="finished", metric_value=0.9),
                        Run(id=planned[3], technique="dense", status="failed", error="boom")])
    RunStore(tmp_path / "budget.db").close()
    assert main(["import-runs", "--from", str(tmp_path / "study.db"), "--into",
                 str(tmp_path / "budget.db"), "--sweep", str(sweep_file)]) == 0
    out = capsys.readouterr().out  # the failure elsewhere is counted, another run's is not
    assert "3 runs imported" in out and "1 that failed there" in out
    with RunStore(tmp_path / "budget.db") as budget:
        assert sorted(run.id for run in budget.runs()) == planned[:3]
