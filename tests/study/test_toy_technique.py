"""Adding a technique is one file and one catalogue entry (issue 24): a toy technique defined
here ("prune the weights with the smallest gradients"), registered, then trained, swept,
stored, reported and drawn with no other change to the package."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sparsebench as sb
from sparsebench.methods import catalogue
from sparsebench.methods.base import Layer
from sparsebench.methods.pruning import PruningConfig, PruningMethod

FMNIST = Path("/usr/share/datasets/fashion-mnist")
NAME = "smallest_gradient"
GREEN = "#00ff00"  # its colour in figures: no other series or text is drawn in it


@dataclass(frozen=True)
class SmallestGradientConfig(PruningConfig):
    """The shared pruning options; nothing of its own."""


class SmallestGradientPruning(PruningMethod):
    """Keeps the weights whose last gradient is largest in magnitude (before any backward
    pass, the largest weights)."""

    name = NAME
    config_class = SmallestGradientConfig

    def score(self, index: int, layer: Layer) -> torch.Tensor:
        original = layer.original
        if original.grad is None:
            return original.detach().abs()
        return original.grad.detach().abs()


@pytest.fixture
def toy_technique():
    technique = catalogue.register(catalogue.Technique(
        NAME, catalogue.SPARSIFIER, "smallest-gradient pruning", GREEN,
        method=SmallestGradientPruning, takes_target=True))
    yield technique
    catalogue.unregister(NAME)


def test_the_toy_technique_is_a_sparsify_method(toy_technique):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    # Masks made at step 1, after one backward pass: ranked by gradient, not by weight.
    sp = sb.sparsify(model, NAME, sparsity=0.75,
                     schedule=sb.GradualSchedule(begin_step=1, end_step=1, frequency=1))
    model(torch.randn(32, 8)).pow(2).sum().backward()
    grad = model[0].parametrizations.weight.original.grad.abs().clone()
    sp.step()
    sp.finalize()
    kept = model[0].weight != 0
    # 75% of 128 weights pruned: 32 kept, each with a gradient at least every pruned one's.
    assert int(kept.sum()) == 32
    assert grad[kept].min() >= grad[~kept].max()
    assert sb.sparsity_report(model).sparsity == pytest.approx(0.75, abs=1e-6)


def test_unknown_and_duplicate_names_are_refused_in_one_sentence(toy_technique):
    with pytest.raises(ValueError, match="already registered"):
        catalogue.register(toy_technique)
    with pytest.raises(ValueError, match=f"choose one of .*{NAME}"):
        sb.sparsify(torch.nn.Linear(2, 2), "no_such_technique", sparsity=0.5)


@pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
def test_the_toy_technique_is_trained_swept_stored_reported_and_drawn(tmp_path, toy_technique):
    from sparsebench.study.driver import run_sweep
    from sparsebench.study.executors import InProcessExecutor
    from sparsebench.study.report import write_report
    from sparsebench.study.store import RunStore
    from sparsebench.study.sweep import parse_sweep

    tiny = {"data.limit_train": 300, "data.valid_size": 500, "eval.batch_size": 2000,
            "run.threads": 1, "run.log_every": 1000}
    spec = parse_sweep({
        "name": "toy", "task": "fmnist-lenet300", "steps": 12, "sparsities": [0.5, 0.9],
        "overrides": tiny, "dense": True,
        "techniques": {"magnitude": {}, NAME: {"grid": {"end": [0.5]}}},
    })
    store = RunStore(tmp_path / "toy.db")
    outcome = run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=lambda _: None)
    assert outcome.failed == 0
    toy_runs = store.runs(sweep="toy", technique=NAME)
    assert [r.status for r in toy_runs] == ["finished", "finished"]
    for run in toy_runs:
        assert run.achieved_sparsity == pytest.approx(run.target_sparsity, abs=1e-3)

    out = tmp_path / "report"
    write_report(store, out)
    with open(out / "ours_lenet300_frontiers.csv") as f:
        rows = {row["sparsity %"]: row for row in csv.DictReader(f)}
    # Its column, by the catalogue's display name, with its one run at each target.
    assert rows["50"]["smallest-gradient pruning"].endswith("(1)")
    assert rows["90"]["smallest-gradient pruning"].endswith("(1)")
    assert "smallest-gradient pruning" in (out / "index.html").read_text()
    with Image.open(out / "ours_lenet300_frontiers.png") as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert int((pixels == (0, 255, 0)).all(axis=1).sum()) > 50  # drawn in its colour
    store.close()
