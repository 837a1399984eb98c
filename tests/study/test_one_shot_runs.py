"""One-shot pruning of a store's trained dense runs, stored as runs of the study (issue 25): a
real dense LeNet-300-100 trained a few steps, pruned by Wanda and one-shot magnitude."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsebench.study.one_shot import one_shot_run_id, one_shot_runs
from sparsebench.study.store import RunStore
from sparsebench.train import build_config, train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"no Fashion-MNIST at {FMNIST}")
TINY = ["data.limit_train=300", "data.valid_size=500", "eval.batch_size=2000",
        "eval.max_valid=500", "run.threads=1", "run.log_every=1000"]


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-shot")
    config = build_config("fmnist-lenet300", steps=20, seed=0, overrides=TINY)
    run_dir = root / "runs" / "dense-r0"
    train(config, run_dir, progress=False)
    store = RunStore(root / "store.db")
    store.record_result("dense-r0", json.loads((run_dir / "result.json").read_text()), run_dir,
                        sweep="tiny")
    yield store
    store.close()


def test_each_dense_run_is_pruned_evaluated_and_stored_once(dense_store):
    said = []
    counts = one_shot_runs(dense_store, methods=["wanda", "omp"], sparsities=[0.5, 0.9],
                           calibration_batches=2, say=said.append)
    assert (counts.stored, counts.present, counts.no_model) == (4, 0, 0)
    rows = [r for r in dense_store.runs(sweep="one-shot")]
    assert sorted((r.technique, r.target_sparsity) for r in rows) == [
        ("one-shot-magnitude", 0.5), ("one-shot-magnitude", 0.9), ("wanda", 0.5), ("wanda", 0.9)]
    dense = dense_store.get("dense-r0")
    for row in rows:
        assert row.status == "finished" and row.hyperparameters["source"] == "dense-r0"
        # Every selected layer holds round(s·n) zeros: the achieved sparsity is the target.
        assert row.achieved_sparsity == pytest.approx(row.target_sparsity, abs=1e-3)
        assert 0 <= row.metric_value <= 1 and set(row.metrics) == {"valid", "test"}
        assert row.metrics["test"]["top1"] == row.metric_value
        assert row.id == one_shot_run_id("dense-r0", row.technique, row.target_sparsity, 2, 0)
    # Pruning half the weights of a trained model costs less accuracy than pruning 90%.
    by = {(r.technique, r.target_sparsity): r.metric_value for r in rows}
    assert by[("wanda", 0.5)] >= by[("wanda", 0.9)] - 0.02
    assert by[("wanda", 0.5)] <= dense.metric_value + 0.05
    again = one_shot_runs(dense_store, methods=["wanda"], sparsities=[0.5, 0.9],
                          calibration_batches=2, say=said.append)
    assert (again.stored, again.present) == (0, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods=["magnitude"], sparsities=[0.5]), "Unknown sparsification method"),
    (dict(methods=["wanda"], sparsities=[1.0]), r"sparsities must be in \(0, 1\)"),
    (dict(methods=["wanda"], sparsities=[0.5], calibration_batches=0), "calibration_batches"),
])
def test_bad_requests_get_one_sentence(dense_store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        one_shot_runs(dense_store, **kwargs)


def test_a_row_does_not_depend_on_the_rows_before_it(dense_store, tmp_path):
    """Fine-tuning draws training batches: the row for 90% is the same whether 50% ran before
    it in the same call or not (an interrupted command resumes to the same numbers)."""
    from sparsebench.study.store import RunStore

    both = one_shot_runs(dense_store, methods=["wanda"], sparsities=[0.5, 0.9],
                         calibration_batches=2, fine_tune_steps=2, say=lambda _: None)
    assert both.stored == 2
    alone_store = RunStore(tmp_path / "alone.db")
    alone_store.upsert([dense_store.get("dense-r0")])
    one_shot_runs(alone_store, methods=["wanda"], sparsities=[0.9], calibration_batches=2,
                  fine_tune_steps=2, say=lambda _: None)
    row_id = one_shot_run_id("dense-r0", "wanda", 0.9, 2, 2)
    assert alone_store.get(row_id).metrics == dense_store.get(row_id).metrics
    alone_store.close()



def _magnitude_row(run_id: str, task: str, include, exclude=None, technique="magnitude"):
    from sparsebench.study.store import Run

    return Run(id=run_id, technique=technique, task=task, status="finished", source="ours",
               target_sparsity=0.5, achieved_sparsity=0.5,
               config={"sparsity": {"include": include, "exclude": exclude}})


def test_rows_prune_the_weights_the_task_joint_runs_prune(dense_store, tmp_path):
    """A one-shot row and a joint run at one level must hold as many nonzeros: the row prunes
    the weights the store's magnitude runs of its task prune (here fc1 only), and says so."""
    dense = dense_store.get("dense-r0")
    store = RunStore(tmp_path / "joint.db")
    store.upsert([dense, _magnitude_row("mp", dense.task, ["fc1"]),
                  _magnitude_row("elsewhere", "another-task", ["*"])])
    one_shot_runs(store, methods=["omp"], sparsities=[0.5], calibration_batches=2,
                  say=lambda _: None)
    (row,) = store.runs(sweep="one-shot")
    assert row.id == one_shot_run_id("dense-r0", "one-shot-magnitude", 0.5, 2, 0, (["fc1"], None))
    assert row.id != one_shot_run_id("dense-r0", "one-shot-magnitude", 0.5, 2, 0)
    assert row.hyperparameters["include"] == ["fc1"]
    layers = {layer["name"]: layer for layer in row.layers}
    fc1 = layers["fc1.weight"]
    assert fc1["size"] - fc1["nonzeros"] == round(0.5 * fc1["size"])
    assert layers["fc2.weight"]["nonzeros"] == layers["fc2.weight"]["size"]  # left dense
    assert row.achieved_sparsity == pytest.approx(0.5, abs=1e-6)  # over fc1, as the joint runs
    # Asked for explicitly, another selection wins.
    one_shot_runs(store, methods=["omp"], sparsities=[0.5], calibration_batches=2,
                  include=["fc2"], say=lambda _: None)
    row = store.get(one_shot_run_id("dense-r0", "one-shot-magnitude", 0.5, 2, 0, (["fc2"], None)))
    layers = {layer["name"]: layer for layer in row.layers}
    assert layers["fc1.weight"]["nonzeros"] == layers["fc1.weight"]["size"]
    store.close()


def test_joint_runs_that_prune_different_weights_are_refused(tmp_path):
    from sparsebench.study.one_shot import joint_selection

    with RunStore(tmp_path / "s.db") as store:
        assert joint_selection(store, "t") == (None, None)  # no joint run: the default
        store.upsert([_magnitude_row("a", "t", ["*"])])
        assert joint_selection(store, "t") == (["*"], None)
        store.upsert([_magnitude_row("c", "t", ["*"], technique="variational_dropout")])
        assert joint_selection(store, "t") == (["*"], None)  # every joint technique agrees
        store.upsert([_magnitude_row("b", "t", None, technique="random")])
        with pytest.raises(ValueError, match=r"The t runs in this store that prune while they "
                                             r"train prune different weights"):
            joint_selection(store, "t")


def test_default_selection_keeps_the_ids_rows_were_stored_under():
    """Rows stored before the selection entered the id (results/study/fmnist-resnet-one-shot.db)
    are found again, not pruned twice."""
    assert one_shot_run_id("dense-r1-5798dab409b9", "one-shot-magnitude", 0.5, 2, 0) == \
        "one-shot-magnitude-s50-161026ebb68c"


# -- several processes on one store --------------------------------------------------------------

def _own_store(dense_store, path) -> RunStore:
    """A store of its own holding only the trained dense run (its model stays where it is)."""
    store = RunStore(path)
    store.upsert([dense_store.get("dense-r0")])
    return store


def _hold(store: RunStore, run_id: str, worker: str, seconds_ago: float) -> None:
    """Writes ``run_id`` as claimed by ``worker``, last heard of ``seconds_ago`` seconds ago."""
    import time

    from sparsebench.study.store import Run

    store.add_pending(Run(id=run_id, technique="wanda", sweep="one-shot", target_sparsity=0.5))
    with store.transaction() as db:
        db.execute("UPDATE runs SET status='running', worker=?, heartbeat=? WHERE id=?",
                   (worker, time.time() - seconds_ago, run_id))


def _gone_pid() -> int:
    """Returns the pid of a process of this host that has exited."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("holder, seconds_ago, taken", [
    ("alive here", 1.0, False),          # a live process of this host: left to it
    ("gone here", 1.0, True),            # its process was killed outright: taken at once
    ("other host", 60.0, False),         # another host, heartbeat recent: left to it
    ("other host", 700.0, True),         # another host, silent past stale_after: taken
])
def test_a_claimed_row_is_left_to_a_live_holder_and_taken_from_a_dead_one(
        dense_store, tmp_path, holder, seconds_ago, taken):
    import os
    import socket

    host = socket.gethostname()
    worker = {"alive here": f"{host}:{os.getpid()}:other",
              "gone here": f"{host}:{_gone_pid()}:killed",
              "other host": "elsewhere.example:12345:abcdef"}[holder]
    store = _own_store(dense_store, tmp_path / "claims.db")
    held = one_shot_run_id("dense-r0", "wanda", 0.5, 2, 0)
    _hold(store, held, worker, seconds_ago)
    said: list[str] = []
    counts = one_shot_runs(store, methods=["wanda"], sparsities=[0.5, 0.9],
                           calibration_batches=2, say=said.append, stale_after=600.0)
    assert (counts.stored, counts.elsewhere) == ((2, 0) if taken else (1, 1))
    row = store.get(held)
    if taken:
        assert row.status == "finished" and row.worker is None and row.metric_value is not None
    else:  # untouched: still the other process's
        assert (row.status, row.worker) == ("running", worker)
    assert any("taking over" in line for line in said) == (holder == "gone here")
    assert store.get(one_shot_run_id("dense-r0", "wanda", 0.9, 2, 0)).status == "finished"
    store.close()


def test_an_interrupted_call_keeps_its_finished_rows_and_leaves_no_claim(
        dense_store, tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM in the second row: the first is stored, the second leaves no row
    behind (neither "running" nor "pending"), and the next call prunes only the second."""
    from sparsebench.study import one_shot

    store = _own_store(dense_store, tmp_path / "stop.db")
    prune = one_shot._Source.prune
    calls = []

    def stop_in_second_row(self, *args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return prune(self, *args, **kwargs)

    monkeypatch.setattr(one_shot._Source, "prune", stop_in_second_row)
    with pytest.raises(KeyboardInterrupt):
        one_shot_runs(store, methods=["omp"], sparsities=[0.5, 0.9], calibration_batches=2,
                      say=lambda _: None)
    rows = store.runs(sweep="one-shot")
    assert [(r.target_sparsity, r.status) for r in rows] == [(0.5, "finished")]
    monkeypatch.setattr(one_shot._Source, "prune", prune)
    again = one_shot_runs(store, methods=["omp"], sparsities=[0.5, 0.9], calibration_batches=2,
                          say=lambda _: None)
    assert (again.stored, again.present, again.elsewhere) == (1, 1, 0)
    store.close()


def test_two_processes_on_one_store_prune_each_row_once(dense_store, tmp_path):
    """Two workers started together on one store (threads here, each with its own connection,
    as two processes would have) share the rows out: every row is stored once, by one of
    them, and together they stored all."""
    import threading

    path = tmp_path / "shared.db"
    _own_store(dense_store, path).close()
    counts, said = [], []

    def worker() -> None:
        with RunStore(path) as store:
            counts.append(one_shot_runs(store, methods=["omp", "wanda"],
                                        sparsities=[0.5, 0.7, 0.9], calibration_batches=2,
                                        say=said.append))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(c.stored for c in counts) == 6 == len(said)  # no row pruned twice
    with RunStore(path) as store:
        rows = store.runs(sweep="one-shot")
        assert len(rows) == 6 and {r.status for r in rows} == {"finished"}


def test_the_command_says_what_it_stored_and_what_another_process_holds(dense_store, tmp_path,
                                                                          capsys):
    import os
    import socket

    from sparsebench.cli import main

    store = _own_store(dense_store, tmp_path / "cli.db")
    _hold(store, one_shot_run_id("dense-r0", "wanda", 0.9, 2, 0),
          f"{socket.gethostname()}:{os.getpid()}:other", 1.0)
    store.close()
    argv = ["one-shot", "--store", str(tmp_path / "cli.db"), "--method", "wanda",
            "--sparsity", "0.5", "0.9", "--calibration-batches", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"{tmp_path / 'cli.db'}: 1 one-shot runs stored, 0 already there, 0 dense runs without "
        "their model file, 1 being pruned by another process")
    assert main(["one-shot", "--store", str(tmp_path / "none.db"), "--method", "wanda"]) == 2
    assert "no run store at" in capsys.readouterr().err
