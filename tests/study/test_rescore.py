"""Rescoring: a run that finished before its task reported a metric gets it, equal to what the
runner computes for a new run, and nothing it already had changes."""

from __future__ import annotations

import json

import pytest

from sparsebench.data.ding import DING_DICT_PATH
from sparsebench.study.rescore import missing_metrics, rescore_runs
from sparsebench.study.store import Run, RunStore
from sparsebench.train import build_config, train


def test_missing_metrics_per_split():
    result = {"metrics": {"valid": {"bleu": 1.0, "chrf": 2.0},
                          "test": {"bleu": 1.0, "chrf": 2.0, "loss": 3.0},
                          "train": {}}}
    # An empty split was never evaluated (no such split in the data): nothing to add there.
    assert missing_metrics(result, ("bleu", "chrf", "loss")) == {"valid": ["loss"]}
    assert missing_metrics({}, ("loss",)) == {}
    # A metric whose definition changed is asked for again where it exists.
    assert missing_metrics(result, ("bleu", "chrf", "loss"), recompute=["loss"]) == {
        "valid": ["loss"], "test": ["loss"]}


def test_the_headline_metric_is_never_evaluated_again(tmp_path):
    with RunStore(tmp_path / "s.db") as store, pytest.raises(ValueError, match="ranked by"):
        rescore_runs(store, recompute=["loss", "bleu"])


@pytest.mark.skipif(not DING_DICT_PATH.is_file(),
                    reason="Ding dictionary not installed (apt-get install dict-freedict-eng-deu)")
def test_rescore_adds_the_loss_the_runner_computes_and_keeps_the_rest(tmp_path):
    config = build_config("ding-transformer", method="magnitude", sparsity=0.5, steps=3,
                          overrides=["data.limit_train=300", "eval.max_valid=16",
                                     "eval.max_test=24", "eval.beam_size=1",
                                     "run.checkpoint_every=3"])
    run_dir = tmp_path / "runs" / "a"
    result = train(config, run_dir, progress=False)
    truth = {split: result["metrics"][split]["loss"] for split in ("valid", "test")}
    # Make it a run from before the task reported its loss.
    for values in result["metrics"].values():
        del values["loss"]
    (run_dir / "result.json").write_text(json.dumps(result))
    said: list[str] = []
    with RunStore(tmp_path / "s.db") as store:
        store.record_result("a", result, run_dir)
        broken = tmp_path / "runs" / "broken"
        broken.mkdir()
        (broken / "result.json").write_text(json.dumps({"status": "finished", "metrics": {
            "test": {"bleu": 1.0}}, "config": {"model": {"name": "no-such-model"}}}))
        store.upsert([Run(id="gone", technique="dense", status="finished",
                          run_dir=str(tmp_path / "runs" / "gone")),
                      Run(id="broken", technique="dense", status="finished",
                          run_dir=str(broken))])
        counts = rescore_runs(store, say=said.append)
        assert (counts.rescored, counts.complete, counts.no_files, counts.unreadable) == (
            1, 0, 1, 1)
        assert any("broken: left as it is" in line for line in said)
        said = [line for line in said if "broken" not in line]
        row = store.get("a")
        for split in ("valid", "test"):
            # The finalized weights evaluated again: the runner's own number.
            assert row.metrics[split]["loss"] == pytest.approx(truth[split], rel=1e-6)
            assert row.metrics[split]["bleu"] == result["metrics"][split]["bleu"]
        assert row.metric_value == result["metric"]["test"]  # the headline is untouched
        on_disk = json.loads((run_dir / "result.json").read_text())
        assert on_disk["metrics"]["test"]["loss"] == row.metrics["test"]["loss"]
        assert "a: valid loss" in said[0]
        # A second pass finds it complete and evaluates nothing.
        again = rescore_runs(store, say=said.append)
        assert (again.rescored, again.complete) == (0, 1)
        assert len([line for line in said if "broken" not in line]) == 1
        # Asked to, it evaluates the loss again (same weights: same numbers), BLEU untouched.
        forced = rescore_runs(store, recompute=["loss"], say=said.append)
        assert forced.rescored == 1
        assert store.get("a").metrics == row.metrics
