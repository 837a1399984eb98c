"""scripts/retrain_lost_runs.py: a stored run whose folder is gone is trained again, the same."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from sparsebench.rundir import MODEL_FILE
from sparsebench.study.store import RunStore
from sparsebench.train import build_config, train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "retrain_lost_runs.py"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _script():
    spec = importlib.util.spec_from_file_location("retrain_lost_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the Fashion-MNIST Debian package")
def test_a_lost_run_is_found_and_retrained_to_the_stored_metric(tmp_path):
    config = build_config("fmnist-lenet300", method="dense", steps=6, overrides=[
        "data.limit_train=256", "data.valid_size=64", "run.threads=1"])
    original = tmp_path / "dense-r0"
    result = train(config, original, progress=False)
    script = _script()
    with RunStore(tmp_path / "runs.db") as store:
        store.record_result("dense-r0", result, original)
        assert script.lost_runs(store, ["dense"]) == []  # its model is on disk
        shutil.rmtree(original)  # the folder lost with a machine
        (lost,) = script.lost_runs(store, ["dense"])
        assert lost.id == "dense-r0" and script.lost_runs(store, ["magnitude"]) == []
        retrained = script.retrain(lost)
        # Same config, seed and data order on one thread: the same model, the same metric.
        assert retrained == pytest.approx(lost.metric_value, abs=1e-9)
        assert (original / MODEL_FILE).is_file() and script.lost_runs(store, ["dense"]) == []
