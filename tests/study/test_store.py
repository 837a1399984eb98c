"""The run store: schema checks, round trips, runner results, claims and two processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sqlite3

import pytest

from sparsebench.study.store import (
    SCHEMA_VERSION,
    InferenceResult,
    Run,
    RunStore,
    StoreError,
    StoreReplaced,
)


def _result(**overrides):
    """A result.json dict shaped as sparsebench.rundir documents it."""
    result = {
        "status": "finished",
        "task": "fashion-mnist",
        "method": "magnitude",
        "target_sparsity": 0.9,
        "sparsity": 0.8996,
        "layers": [],
        "metric": {"name": "top1", "test": 0.871, "valid": 0.88, "higher_is_better": True},
        "metrics": {"top1": 0.871},
        "steps": 1000,
        "train_seconds": 120.5,
        "seconds_per_step": 0.1205,
        "flops": {"dense": 10, "sparse": 2},
        "config": {"model": {"name": "resnet50-small", "options": {}}, "optim": {"lr": 0.1}},
        "seed": 3,
        "versions": {"torch": "2.13.0"},
    }
    result.update(overrides)
    return result


def test_round_trip_and_filters(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([
            Run(id="a", technique="magnitude", model_family="lenet5", achieved_sparsity=0.5,
                metric_value=0.9, hyperparameters={"begin": 0, "lr": 1e-3}, flags={"x": True}),
            Run(id="b", technique="vd", model_family="lenet5", source="published"),
            Run(id="c", technique="l0", model_family="resnet50"),
        ])
        a = store.get("a")
        assert a.hyperparameters == {"begin": 0, "lr": 1e-3} and a.flags == {"x": True}
        assert a.train_id == "a" and a.created and a.updated
        assert store.get("b").technique == "variational_dropout"  # registry alias resolved
        assert [r.id for r in store.runs(model_family="lenet5")] == ["a", "b"]
        assert [r.id for r in store.runs(technique=("l0", "magnitude"))] == ["a", "c"]
        assert store.count(source="published") == 1
        assert store.distinct("model_family") == ["lenet5", "resnet50"]
        assert store.query(id="c")[0]["technique"] == "l0"
        with pytest.raises(ValueError, match="unknown run field 'colour'"):
            store.runs(colour="red")


def test_invalid_values_are_one_sentence():
    with pytest.raises(ValueError, match="technique 'pruned'"):
        Run(id="x", technique="pruned")
    with pytest.raises(ValueError, match=r"achieved_sparsity=90"):
        Run(id="x", technique="magnitude", achieved_sparsity=90)
    with pytest.raises(ValueError, match="status 'done'"):
        Run(id="x", technique="magnitude", status="done")


def test_schema_version_checks(tmp_path):
    path = tmp_path / "s.db"
    RunStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == \
        str(SCHEMA_VERSION)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this sparsebench reads"):
        RunStore(path)

    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE things (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a sparsebench run store"):
        RunStore(other)


def test_record_result_from_runner(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        assert store.add_pending(Run(id="r1", technique="magnitude", sweep="demo",
                                     hyperparameters={"end": 800}))
        assert not store.add_pending(Run(id="r1", technique="magnitude"))  # kept, not reset
        run = store.record_result("r1", _result(), tmp_path / "runs" / "r1")
        assert run.status == "finished" and run.sweep == "demo"
        assert run.model_family == "resnet50" and run.task == "fashion-mnist"
        assert run.technique == "magnitude" and run.metric_name == "top1"
        assert run.metric_value == 0.871 and run.achieved_sparsity == 0.8996
        assert run.target_sparsity == 0.9 and run.seed == 3
        assert run.seconds_per_step == 0.1205 and run.train_seconds == 120.5
        assert run.config["optim"] == {"lr": 0.1} and run.hyperparameters == {"end": 800}
        assert run.run_dir.endswith("r1") and run.source == "ours"
        assert "memory_format" not in run.flags  # a result from before the option
        nhwc = store.record_result("r6", {**_result(), "memory_format": "channels_last"})
        assert nhwc.flags == {"memory_format": "channels_last"}

        diverged = store.record_result(
            "r2", _result(status="diverged", metric={"name": "bleu", "test": None, "valid": 0.0},
                          method="l0_regularization"),
            technique=None, replica=2,
        )
        assert diverged.status == "diverged" and diverged.metric_value == 0.0
        assert diverged.technique == "l0" and diverged.replica == 2

        # The runner's diverged result has no metric and no achieved sparsity.
        crashed = store.record_result("r5", {"schema": 1, "status": "diverged", "error": "nan loss",
                                             "task": "wmt", "method": "variational_dropout",
                                             "target_sparsity": 0.5, "seed": 1, "config": {}})
        assert crashed.status == "diverged" and crashed.error == "nan loss"
        assert crashed.metric_value is None and crashed.achieved_sparsity is None
        assert crashed.target_sparsity is None  # VD has no target: 0.5 is a config default

        retrained = store.record_result("r3", _result(), technique="scratch-e")
        assert retrained.technique == "scratch-e"
        with pytest.raises(ValueError, match="no 'status'"):
            store.record_result("r4", {"metric": {}})


def test_claim_release_failure_and_stale(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.add_pending(Run(id="p", technique="random"))
        assert store.claim("p", "w1")
        assert not store.claim("p", "w2")  # held and fresh
        assert store.heartbeat("p", "w1") and not store.heartbeat("p", "w2")
        assert store.release("p", "w1") and store.get("p").status == "pending"
        assert store.claim("p", "w2")
        # w2 "died": with a zero staleness window its claim is stale at once.
        assert store.claim("p", "w3", stale_after=0.0)
        assert store.get("p").worker == "w3"
        assert not store.heartbeat("p", "w2")
        store.mark_failed("p", "RuntimeError: out of memory")
        failed = store.get("p")
        assert failed.status == "failed" and "out of memory" in failed.error
        assert not store.claim("p", "w4", stale_after=0.0)  # failed runs are not re-claimed
        assert not store.claim("missing", "w1")
        with pytest.raises(KeyError):
            store.mark_failed("missing", "x")


def test_a_store_replaced_under_an_open_connection_refuses_to_write(tmp_path):
    # What `git stash`, `checkout` or `pull` does to a committed store under a running sweep:
    # a new file at the path. SQLite would go on writing into the old, deleted one.
    path = tmp_path / "s.db"
    with RunStore(path) as store:
        store.upsert([Run(id="a", technique="dense")])
        shutil.copy(path, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", path)
        with pytest.raises(StoreReplaced, match="was replaced or removed while this process"):
            store.upsert([Run(id="b", technique="dense")])
        path.unlink()
        with pytest.raises(StoreReplaced):
            store.claim("a", "w")
    with RunStore(path) as fresh:  # a new connection opens the new file and writes
        fresh.upsert([Run(id="c", technique="dense")])
        assert [r.id for r in fresh.runs()] == ["c"]


def test_to_csv(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([Run(id="a", technique="dense", metric_value=27.3, hyperparameters={"k": 1})])
        path = store.to_csv(tmp_path / "out" / "runs.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("id,technique,train_id,")
    assert len(lines) == 2 and '"{""k"": 1}"' in lines[1]


def _claim_all(path, worker, ids, queue, barrier):
    store = RunStore(path)
    barrier.wait(timeout=30)  # start together, so the claims really race
    queue.put([run_id for run_id in ids if store.claim(run_id, worker)])
    store.close()


def test_two_processes_never_claim_the_same_run(tmp_path):
    path = tmp_path / "s.db"
    ids = [f"run{i:03d}" for i in range(200)]
    with RunStore(path) as store:
        for run_id in ids:
            store.add_pending(Run(id=run_id, technique="magnitude"))
    # fork: each child opens its own connection (the parent closed its own before forking).
    context = mp.get_context("fork")
    queue, barrier = context.Queue(), context.Barrier(2)
    workers = [context.Process(target=_claim_all, args=(path, f"w{k}", ids, queue, barrier))
               for k in range(2)]
    for worker in workers:
        worker.start()
    claimed = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == ids  # every run claimed exactly once
    with RunStore(path) as store:
        assert store.count(status="running") == 200
        owners = {run.worker for run in store.runs()}
    assert owners <= {"w0", "w1"}


def test_schema_1_store_is_migrated_with_layers_from_result_json(tmp_path):
    path, run_dir = tmp_path / "old.db", tmp_path / "run"
    run_dir.mkdir()
    layers = [{"name": "fc.weight", "size": 10, "nonzeros": 1, "sparsity": 0.9}]
    (run_dir / "result.json").write_text(json.dumps({"layers": layers}))
    with RunStore(path) as store:
        store.upsert([Run(id="a", technique="magnitude", status="finished", run_dir=str(run_dir)),
                      Run(id="b", technique="magnitude", status="finished",
                          run_dir=str(tmp_path / "gone"))])
    # Turn it back into what a schema-1 sparsebench wrote.
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE runs DROP COLUMN layers")
    db.execute("ALTER TABLE runs DROP COLUMN metrics")
    db.execute("DROP TABLE inference")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION  # through 2 to the current one
        assert store.get("a").layers == layers
        assert store.get("b").layers == []  # its run directory is gone: nothing to fill in
        assert store.inference() == []


def test_schema_2_store_is_migrated_with_every_metric_from_result_json(tmp_path):
    path, run_dir = tmp_path / "old.db", tmp_path / "run"
    run_dir.mkdir()
    metrics = {"valid": {"bleu": 1.5, "chrf": 9.25, "sentences": 500},
               "test": {"bleu": 2.0, "chrf": 10.5, "sentences": 2734, "note": "text"}}
    (run_dir / "result.json").write_text(json.dumps({"metrics": metrics}))
    with RunStore(path) as store:
        store.upsert([Run(id="a", technique="magnitude", status="finished", run_dir=str(run_dir)),
                      Run(id="b", technique="magnitude", status="pending", run_dir=str(run_dir)),
                      Run(id="c", technique="dense", status="finished",
                          run_dir=str(tmp_path / "gone"))])
    db = sqlite3.connect(path)  # what a schema-2 sparsebench wrote
    db.execute("ALTER TABLE runs DROP COLUMN metrics")
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        # Numbers only: a text field of a result is no metric.
        assert store.get("a").metrics == {
            "valid": {"bleu": 1.5, "chrf": 9.25, "sentences": 500.0},
            "test": {"bleu": 2.0, "chrf": 10.5, "sentences": 2734.0}}
        assert store.get("b").metrics == {}  # not ended: its result is not its own yet
        assert store.get("c").metrics == {}
        # A result recorded from now on keeps its metrics in the row.
        store.record_result("b", {"status": "finished", "metric": {"name": "bleu", "test": 3.0},
                                  "metrics": {"test": {"bleu": 3.0, "loss": 4.5}}})
        assert store.get("b").metrics == {"test": {"bleu": 3.0, "loss": 4.5}}


def test_inference_results_round_trip_and_replace(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        first = InferenceResult("a", batch=1, threads=1, dense_seconds=0.004,
                                sparse_seconds=0.001, sparse_layers=3, layers=4,
                                workload="w", machine="m")
        store.record_inference(first)
        store.record_inference(InferenceResult("a", 128, 1, 0.3, 0.1, 4, 4))
        store.record_inference(InferenceResult("b", 1, 1, 0.002, 0.002, 0, 4))
        (got,) = [r for r in store.inference(["a"]) if r.batch == 1]
        assert got.speedup == pytest.approx(4.0)
        assert got.measured  # stamped when recorded
        store.record_inference(InferenceResult("a", 1, 1, 0.004, 0.002, 3, 4))  # measured again
        assert [(r.run_id, r.batch, r.speedup) for r in store.inference()] == [
            ("a", 1, pytest.approx(2.0)), ("a", 128, pytest.approx(3.0)),
            ("b", 1, pytest.approx(1.0))]


def test_import_runs_takes_what_ended_elsewhere_and_keeps_what_ended_here(tmp_path):
    # A copy of the store went on elsewhere (a GPU machine): "a" and "b" finished there, "c"
    # failed there; here "b" finished meanwhile too, "c" is still running and "d" pending.
    # A failure there (a CUDA error, say) must not mark the run failed here.
    with RunStore(tmp_path / "here.db") as here, RunStore(tmp_path / "there.db") as there:
        here.upsert([Run(id="a", technique="dense", status="pending"),
                     Run(id="b", technique="dense", status="finished", metric_value=0.5),
                     Run(id="c", technique="l0", status="running", worker="h:1:x",
                         heartbeat=1.0),
                     Run(id="d", technique="dense", status="pending")])
        there.upsert([Run(id="a", technique="dense", status="finished", metric_value=0.8,
                          run_dir="/gpu/runs/a", seconds_per_step=0.03),
                      Run(id="b", technique="dense", status="finished", metric_value=0.9),
                      Run(id="c", technique="l0", status="failed", error="boom"),
                      Run(id="d", technique="dense", status="pending"),
                      Run(id="p", technique="dense", status="finished", source="published")])
        counts = here.import_runs(there, tmp_path / "runs")
        assert counts == {"imported": 1, "kept": 1, "failed_there": 1}
        got = {run.id: run for run in here.runs()}
        assert got["a"].status == "finished" and got["a"].metric_value == 0.8
        assert got["a"].run_dir == str(tmp_path / "runs" / "a")
        assert got["a"].seconds_per_step == 0.03
        assert got["b"].metric_value == 0.5  # ended here first: kept
        assert got["c"].status == "running"  # failed there: still this machine's to run
        assert got["d"].status == "pending" and "p" not in got
