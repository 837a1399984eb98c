"""Real sweeps on Fashion-MNIST (tiny: a few hundred images, a few dozen steps): the in-process
sweep with a failing technique and retraining, MP v2's achieved layer sparsities, restart after
SIGKILL, two sweep processes on one store, and the Ray executor on a local instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparsebench.study.driver import _Driver, run_sweep
from sparsebench.study.executors import InProcessExecutor, make_executor
from sparsebench.study.report import write_report
from sparsebench.study.source_masks import pack_masks
from sparsebench.study.store import Run, RunStore
from sparsebench.study.sweep import load_sweep, parse_sweep

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST} "
                                "(Debian package dataset-fashion-mnist; `make data`)")

TINY = {"data.limit_train": 300, "data.valid_size": 500, "eval.batch_size": 2000,
        "run.threads": 1, "run.log_every": 1000, "optim.method_lr_scale": 10}


def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _quiet(_: str) -> None:
    pass


def _result(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "result.json").read_text())


def test_sweep_in_process_with_failure_retraining_and_report(tmp_path, render_in_chromium):
    spec = parse_sweep({
        "name": "tiny", "task": "fmnist-lenet300", "steps": 15, "sparsities": [0.9],
        "overrides": TINY,
        "techniques": {
            "magnitude": {"grid": {"end": [0.4, 0.6]}},
            # Points at data that do not exist: each of its runs fails, the sweep goes on.
            "random": {"overrides": {"data.root": str(tmp_path / "missing")}},
            "variational_dropout": {"grid": {"kl_weight": [1e-5]}},
            "l0": {"grid": {"l0_weight": [1e-4]}, "fixed": {"init_log_alpha": 0.0}},
        },
        "retraining": {"kinds": ["lottery", "scratch-b"], "sparsities": [0.9]},
    })
    store = RunStore(tmp_path / "r.db")
    first = run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=_quiet)
    assert (first.total, first.ran, first.failed) == (8, 8, 1)
    runs = {r.technique + (f":{r.id}" if r.technique == "magnitude" else ""): r
            for r in store.runs(sweep="tiny")}
    failed = runs["random"]
    assert failed.status == "failed" and "missing" in failed.error
    assert all(r.status == "finished" for k, r in runs.items() if k != "random")

    # The retraining source is the better of the two magnitude runs, by their own results.
    magnitude = [r for r in store.runs(sweep="tiny", technique="magnitude")]
    best = max(magnitude, key=lambda r: _result(r.run_dir)["metric"]["test"])
    lottery, scratch_b = runs["lottery"], runs["scratch-b"]
    assert lottery.hyperparameters == {"source": best.id}
    # Lottery: the pruning run's initial weights and final mask; scratch-b: twice the steps.
    source_init = load_file(str(Path(best.run_dir) / "init.safetensors"))
    lottery_init = load_file(str(Path(lottery.run_dir) / "init.safetensors"))
    assert all((source_init[k] == lottery_init[k]).all() for k in source_init)
    source_mask = load_file(str(Path(best.run_dir) / "mask.safetensors"))
    for run in (lottery, scratch_b):
        mask = load_file(str(Path(run.run_dir) / "mask.safetensors"))
        assert all((mask[k] == source_mask[k]).all() for k in source_mask)
    assert _result(scratch_b.run_dir)["steps"] == 30
    assert _result(lottery.run_dir)["steps"] == 15

    # Again: nothing is trained twice (the failed run stays failed unless asked).
    again = run_sweep(load_sweep(_write(tmp_path / "tiny.yaml", {**_spec_values(spec)})),
                      store, InProcessExecutor(), tmp_path / "runs", say=_quiet)
    assert again.ran == 0 and again.skipped == 8

    index = write_report(store, tmp_path / "report")
    page = index.read_text()
    for section in ("ours_lenet300-layers", "ours_lenet300-cost", "ours_lenet300-off-target",
                    "ours_lenet300-retraining", "ours_lenet300-sweeps"):
        assert f'id="{section}"' in page
    assert (tmp_path / "report" / "ours_lenet300_layers_90.png").stat().st_size > 1000
    render_in_chromium(index)  # our own study's report renders with its figures
    store.close()


def _spec_values(spec) -> dict:
    """The values that made ``spec`` (its name and fields), for writing it back as a file."""
    return {
        "name": spec.name, "task": spec.task, "steps": spec.steps,
        "sparsities": list(spec.sparsities), "overrides": TINY,
        "techniques": {
            "magnitude": {"grid": {"end": [0.4, 0.6]}},
            "random": {"overrides": {"data.root": spec.techniques["random"].overrides["data"]
                                     ["root"]}},
            "variational_dropout": {"grid": {"kl_weight": [1e-5]}},
            "l0": {"grid": {"l0_weight": [1e-4]}, "fixed": {"init_log_alpha": 0.0}},
        },
        "retraining": {"kinds": ["lottery", "scratch-b"], "sparsities": [0.9]},
    }


def test_mp_v2_reaches_exact_layer_targets(tmp_path):
    spec = parse_sweep({"task": "fmnist-lenet5", "steps": 10, "sparsities": [0.9],
                        "dense": False, "overrides": TINY, "techniques": {"magnitude": {}},
                        "mp_v2": {"sparsities": [0.9]}})
    spec = type(spec)(**{**spec.__dict__, "techniques": {}})  # only the MP v2 point
    store = RunStore(tmp_path / "r.db")
    run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=_quiet)
    (run,) = store.runs(technique="mp-v2")
    assert run.status == "finished"
    layers = {la["name"]: la for la in _result(run.run_dir)["layers"]}
    # LeNet-5 weights: conv1 20x1x5x5, conv2 50x20x5x5, fc1 500x800, fc2 10x500.
    sizes = {"conv1.weight": 500, "conv2.weight": 25_000, "fc1.weight": 400_000,
             "fc2.weight": 5_000}
    assert {n: layers[n]["size"] for n in sizes} == sizes
    total = sum(sizes.values())
    zeros_needed = 0.9 * total                       # 387,450
    rest = (zeros_needed - 0.8 * 5_000) / (25_000 + 400_000)  # the filled layers' sparsity
    assert layers["conv1.weight"]["nonzeros"] == 500             # dense
    assert layers["fc2.weight"]["nonzeros"] == 1_000             # 80% sparse
    for name in ("conv2.weight", "fc1.weight"):
        assert layers[name]["size"] - layers[name]["nonzeros"] == round(rest * sizes[name])
    zeros = sum(layers[n]["size"] - layers[n]["nonzeros"] for n in sizes)
    assert abs(zeros - zeros_needed) <= 2  # two layers rounded to whole weights
    assert run.achieved_sparsity == pytest.approx(0.9, abs=1e-5)
    assert _result(run.run_dir)["steps"] == 15  # 1.5 x 10
    store.close()


def _cli_sweep(sweep: Path, store: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sparsebench", "sweep", str(sweep), "--store", str(store),
         *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _small_sweep(tmp_path: Path, name: str, sparsities: list[float]) -> Path:
    return _write(tmp_path / f"{name}.yaml", {
        "name": name, "task": "fmnist-lenet300", "steps": 15, "sparsities": sparsities,
        "overrides": TINY, "techniques": {"magnitude": {}}})


def test_restart_after_sigkill(tmp_path):
    sweep = _small_sweep(tmp_path, "killed", [0.5, 0.6, 0.7, 0.8, 0.9])
    db = tmp_path / "r.db"
    process = _cli_sweep(sweep, db)
    deadline = time.monotonic() + 120
    finished: dict[str, float] = {}
    while time.monotonic() < deadline:
        if db.exists():
            with RunStore(db) as store:
                done = store.runs(status="finished")
                if len(done) >= 2:
                    break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with RunStore(db) as store:
        done = store.runs(status="finished")
        total = store.count(sweep="killed")
        assert 2 <= len(done) < total == 6, "killed mid-sweep"
        finished = {r.id: (Path(r.run_dir) / "result.json").stat().st_mtime_ns for r in done}
    second = _cli_sweep(sweep, db)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    started = set(re.findall(r"start (\S+)", output))
    assert not started & set(finished), "a finished run was trained again"
    with RunStore(db) as store:
        assert store.count(sweep="killed", status="finished") == 6
        for run_id, mtime in finished.items():
            assert (Path(store.get(run_id).run_dir) / "result.json").stat().st_mtime_ns == mtime


def test_two_sweep_processes_share_one_store(tmp_path):
    sweep = _small_sweep(tmp_path, "shared", [0.5, 0.6, 0.7, 0.8, 0.9])
    db = tmp_path / "r.db"
    RunStore(db).close()  # created once, before both open it
    first, second = _cli_sweep(sweep, db), _cli_sweep(sweep, db)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    started = [re.findall(r"start (\S+)", out) for out in outputs]
    everything = started[0] + started[1]
    assert len(everything) == len(set(everything)) == 6, started  # each point once, in all
    with RunStore(db) as store:
        assert store.count(sweep="shared", status="finished") == 6


def test_ray_executor_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray>=2.60')")
    spec = parse_sweep({
        "name": "ray", "task": "fmnist-lenet300", "steps": 10, "sparsities": [0.5, 0.9],
        "overrides": TINY,
        "techniques": {"magnitude": {},
                       "random": {"overrides": {"data.root": str(tmp_path / "missing")}}},
        "dense": False})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = make_executor("ray", workers=2)
        assert executor.slots == 2
        store = RunStore(tmp_path / "r.db")
        result = run_sweep(spec, store, executor, tmp_path / "runs", poll=0.2, say=_quiet)
        assert (result.total, result.finished, result.failed) == (4, 2, 2)
        for run in store.runs(technique="magnitude"):
            assert run.status == "finished"
            assert run.achieved_sparsity == pytest.approx(run.target_sparsity, abs=1e-4)
            assert _result(run.run_dir)["status"] == "finished"
        assert all("missing" in r.error for r in store.runs(technique="random"))
        store.close()
    finally:
        ray.shutdown()


def test_local_process_pool(tmp_path):
    spec = parse_sweep({"name": "pool", "task": "fmnist-lenet300", "steps": 10,
                        "sparsities": [0.5, 0.9], "overrides": TINY, "dense": False,
                        "techniques": {"magnitude": {}}})
    executor = make_executor("local", workers=2)
    assert executor.slots == 2
    with RunStore(tmp_path / "r.db") as store:
        result = run_sweep(spec, store, executor, tmp_path / "runs", poll=0.2, say=_quiet)
        assert (result.total, result.ran, result.finished) == (2, 2, 2)
        assert sorted(r.achieved_sparsity for r in store.runs()) == pytest.approx([0.5, 0.9])


@pytest.mark.slow
def test_small_dense_matches_the_sparse_models_nonzeros(tmp_path):
    spec = parse_sweep({
        "name": "small", "task": "fmnist-resnet", "steps": 4, "sparsities": [0.9],
        "dense": False, "techniques": {"magnitude": {}},
        "overrides": {**TINY, "data.limit_train": 256, "model.options.width": 4,
                      "model.options.layers": [1, 1, 1], "data.augment": False},
        "small_dense": {"option": "width", "sparsities": [0.9]}})
    with RunStore(tmp_path / "r.db") as store:
        run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=_quiet)
        (sparse,) = store.runs(technique="magnitude")
        (small,) = store.runs(technique="small-dense")
        assert small.status == "finished"
        nonzero = _result(sparse.run_dir)["parameters"]["nonzero"]
        params = _result(small.run_dir)["parameters"]["total"]
        width = small.hyperparameters["width"]
        assert width < 4 and small.variant == f"width={width}"
        assert small.hyperparameters["matched_nonzero"] == nonzero
        assert params == small.hyperparameters["parameters"]
        index = write_report(store, tmp_path / "report")
        assert 'id="ours_resnet50-small-dense"' in index.read_text()


def test_small_dense_in_a_fresh_checkout_sizes_from_the_store_alone(tmp_path):
    """Run folders are not committed: in a fresh checkout the small dense model is sized from
    the nonzeros the store records (the same width as from result.json), and its source is
    not trained again, since a small dense model never reads the source's folder."""
    spec = parse_sweep({
        "name": "fresh", "task": "fmnist-lenet300", "steps": 6, "sparsities": [0.9],
        "dense": False, "overrides": TINY, "techniques": {"magnitude": {}},
        "small_dense": {"option": "width", "sparsities": [0.9]}})
    with RunStore(tmp_path / "r.db") as store:
        run_sweep(spec, store, InProcessExecutor(), tmp_path / "a" / "runs", say=_quiet)
        (first,) = store.runs(technique="small-dense")
        (source,) = store.runs(technique="magnitude")
        store.delete(technique="small-dense")
        shutil.rmtree(tmp_path / "a")
        shutil.rmtree(tmp_path / "masks", ignore_errors=True)
        said: list[str] = []
        again = run_sweep(spec, store, InProcessExecutor(), tmp_path / "b" / "runs",
                          say=said.append)
        assert (again.ran, again.failed) == (1, 0)
        assert not any("training it again" in line for line in said)
        assert store.get(source.id).train_seconds == source.train_seconds  # not retrained
        (second,) = store.runs(technique="small-dense")
        assert second.status == "finished" and second.id == first.id
        assert second.hyperparameters == first.hyperparameters


def test_bench_runs_times_block_runs_into_the_store_and_report(tmp_path, capsys):
    from sparsebench.cli import main

    sweep = _write(tmp_path / "blocks.yaml", {
        "name": "blocks", "task": "fmnist-lenet300", "steps": 6, "sparsities": [0.9],
        "dense": True, "overrides": TINY,
        "techniques": {"magnitude": {"grid": {"block": [[1, 1], [4, 4]]}}}})
    store = tmp_path / "s.db"
    assert main(["sweep", str(sweep), "--store", str(store), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["bench-runs", "--store", str(store), "--batch", "1", "4", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 runs to time" in out  # the dense baseline and both block runs
    with RunStore(store) as s:
        timings = s.inference()
        assert {(t.batch, t.threads) for t in timings} == {(1, 1), (4, 1)}
        assert len(timings) == 6
        assert all(t.dense_seconds > 0 and t.sparse_seconds > 0 and t.layers == 3
                   and "forward of 1x28x28 images" in t.workload for t in timings)
        for t in timings:  # per layer: the plan's choice and the layer's own timings
            assert [row["name"] for row in t.plan] == ["fc1", "fc2", "fc3"]  # module names
            assert sum(row["sparse"] for row in t.plan) == t.sparse_layers
            assert all(row["dense_s"] > 0 and 0 <= row["break_even"] <= 1 for row in t.plan)
        # Timed already: a second call skips every run.
        assert main(["bench-runs", "--store", str(store), "--batch", "1"]) == 0
        assert "[1/3]" not in capsys.readouterr().out
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r")]) == 0
    with open(tmp_path / "r" / "ours_lenet300_blocks.csv") as handle:
        text = handle.read()
    assert "4x4" in text and "speed-up b4" in text


def test_retraining_finds_its_source_in_a_moved_checkout_or_says_what_is_missing(tmp_path):
    spec = parse_sweep({
        "name": "moved", "task": "fmnist-lenet300", "steps": 10, "sparsities": [0.9],
        "overrides": TINY, "techniques": {"magnitude": {}},
        "retraining": {"kinds": ["lottery"], "sparsities": [0.9], "replicas": 1},
    })
    store = RunStore(tmp_path / "r.db")
    assert run_sweep(spec, store, InProcessExecutor(), tmp_path / "a" / "runs",
                     say=_quiet).failed == 0
    source = store.runs(technique="magnitude")[0]
    # The checkout moves: the store still holds the old absolute paths.
    (tmp_path / "a").rename(tmp_path / "b")
    assert not Path(source.run_dir).exists()
    store.delete(technique="lottery")
    # ... and came without the source's initial weights (a run brought from a GPU machine):
    # the lottery ticket gets them back from the source's config, bit for bit.
    init = tmp_path / "b" / "runs" / source.id / "init.safetensors"
    original = load_file(init)
    init.unlink()
    again = run_sweep(spec, store, InProcessExecutor(), tmp_path / "b" / "runs", say=_quiet)
    assert (again.ran, again.failed) == (1, 0)
    assert store.runs(technique="lottery")[0].status == "finished"
    assert all(torch.equal(original[k], v) for k, v in load_file(init).items())
    # The first retraining run kept the source's mask beside the store, packed.
    kept = tmp_path / "masks" / f"{source.id}.safetensors"
    mask = load_file(tmp_path / "b" / "runs" / source.id / "mask.safetensors")
    assert kept.is_file() and kept.stat().st_size < sum(m.numel() for m in mask.values()) / 7
    # A fresh checkout: no run directories at all. The source's is rebuilt from the kept
    # mask and the store (its initial weights from its config), and the lottery ticket trains
    # from the very same mask and weights.
    store.delete(technique="lottery")
    (tmp_path / "b").rename(tmp_path / "c")
    fourth = run_sweep(spec, store, InProcessExecutor(), tmp_path / "d" / "runs", say=_quiet)
    assert (fourth.ran, fourth.failed) == (1, 0)
    rebuilt = tmp_path / "d" / "runs" / source.id
    assert mask.keys() == load_file(rebuilt / "mask.safetensors").keys()
    assert all(torch.equal(m, load_file(rebuilt / "mask.safetensors")[k])
               for k, m in mask.items())
    assert all(torch.equal(original[k], v)
               for k, v in load_file(rebuilt / "init.safetensors").items())
    assert not (rebuilt / "result.json").exists()  # not a finished run's directory
    # A kept mask that is not the source's (another run's, renamed) is refused.
    store.delete(technique="lottery")
    shutil.rmtree(rebuilt)
    other = {k: torch.ones_like(m) for k, m in mask.items()}
    kept.write_bytes(pack_masks(other))
    fifth = run_sweep(spec, store, InProcessExecutor(), tmp_path / "d" / "runs", say=_quiet)
    assert fifth.failed == 1
    assert "not that run's mask" in store.runs(technique="lottery")[0].error
    lottery_id = store.runs(technique="lottery")[0].id
    # Neither the directory nor the kept mask: a retraining run fails with the reason ...
    store.delete(technique="lottery")
    kept.unlink()
    driver = _Driver(spec, store, InProcessExecutor(), tmp_path / "e" / "runs", poll=0.1,
                     stale_after=600, retry_failed=False, say=_quiet)
    with pytest.raises(ValueError, match="neither its run directory") as refused:
        driver._source_dir(source.id)
    assert str(kept) in str(refused.value)
    # ... so the sweep trains the lost source again first (it is one of its own first-phase
    # points: same id, same seed), and a lottery run that had failed for want of it is retried.
    store.upsert([Run(id=lottery_id, technique="lottery", sweep="moved", status="failed",
                      error="retraining needs the mask ... neither its run directory",
                      hyperparameters={"source": source.id}, target_sparsity=0.9)])
    said: list[str] = []
    sixth = run_sweep(spec, store, InProcessExecutor(), tmp_path / "e" / "runs",
                      say=said.append)
    assert (sixth.ran, sixth.failed) == (2, 0)
    assert any("training it again" in line and source.id in line for line in said)
    assert store.get(lottery_id).status == "finished"
    again = store.get(source.id)
    assert again.status == "finished" and again.metric_value == source.metric_value
    retrained = load_file(tmp_path / "e" / "runs" / source.id / "mask.safetensors")
    assert all(torch.equal(m, retrained[k]) for k, m in mask.items())
    assert kept.is_file()  # kept beside the store again, for the next checkout
    store.close()


def test_device_reaches_every_run_without_changing_its_id(tmp_path):
    spec = parse_sweep({"name": "dev", "task": "fmnist-lenet300", "steps": 5,
                        "sparsities": [0.9], "overrides": TINY, "dense": False,
                        "techniques": {"magnitude": {}}})
    with RunStore(tmp_path / "r.db") as store:
        run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=_quiet,
                  device="cpu")
        (run,) = store.runs()
        assert run.status == "finished" and run.config["run"]["device"] == "cpu"
    # Without a GPU, "cuda" fails in the run itself: the device reached it, under the same id.
    with RunStore(tmp_path / "g.db") as store:
        if not torch.cuda.is_available():
            run_sweep(spec, store, InProcessExecutor(), tmp_path / "gruns", say=_quiet,
                      device="cuda")
            (failed,) = store.runs()
            assert failed.id == run.id and failed.status == "failed"
            assert "no GPU is available" in failed.error


def test_status_counts_runs_and_estimates_what_is_left(tmp_path, capsys):
    from sparsebench.cli import main
    from sparsebench.study.progress import study_progress

    values = {"name": "st", "task": "fmnist-lenet300", "steps": 6, "sparsities": [0.5, 0.9],
              "overrides": TINY, "dense": False, "techniques": {"magnitude": {}, "random": {}},
              "retraining": {"kinds": ["scratch-e", "scratch-b"], "sparsities": [0.9],
                             "replicas": 2}}
    spec = parse_sweep(values, name="st", text=yaml.safe_dump(values))  # as from a file
    with RunStore(tmp_path / "r.db") as store:
        # Stop after the first phase-1 run: the driver raises out of its say() callback.
        class Enough(Exception):
            pass

        def stop_after_first(text):
            if "finished" in text and text.startswith("["):
                raise Enough

        with pytest.raises(Enough):
            run_sweep(spec, store, InProcessExecutor(), tmp_path / "runs", say=stop_after_first)
        (done,) = store.runs(status="finished")
        assert done.technique == "magnitude"
        progress = study_progress(store)
        (sweep,) = progress.sweeps
        assert sweep.counts == {"finished": 1, "pending": 3}
        # 2 kinds x 1 sparsity x 2 replicas, not planned before phase 1 ends.
        assert sweep.unplanned == 4
        # Left: 3 phase-1 runs of 6 steps, 2 scratch-e of 6 and 2 scratch-b of 12, all timed
        # by the one magnitude run (random and the retraining kinds borrow its speed only
        # where they have none: random has none, and is not counted).
        speed = done.seconds_per_step
        assert progress.seconds_per_step == {"magnitude": pytest.approx(speed)}
        assert progress.unmeasured == ["random"]
        pending = [r.technique for r in store.runs(status="pending")]
        magnitude_left = 6 * pending.count("magnitude")
        assert progress.seconds_left == pytest.approx((magnitude_left + 2 * 6 + 2 * 12) * speed)
        # A run in progress that reported step 4 of 6: 2 steps left of it.
        claimed = store.runs(status="pending")[0]
        assert store.claim(claimed.id, "host:1:x")
        Path(claimed.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(claimed.run_dir) / "progress.json").write_text(
            json.dumps({"step": 4, "steps": 6, "steps_per_second": 2.0}))
        again = study_progress(store)
        assert again.running[0][:3] == (claimed.id, 4, 6)
        less = speed * 4 if claimed.technique == "magnitude" else 0.0
        assert again.seconds_left == pytest.approx(progress.seconds_left - less)
    assert main(["status", "--store", str(tmp_path / "r.db")]) == 0
    out = capsys.readouterr().out
    assert f"running: {claimed.id} (step 4 of 6, 2.00 step/s, heartbeat" in out
    assert "not in the estimate (no finished cpu run to time them by): random" in out
    assert re.search(r"st\s+1\s+1\s+2\s+0\s+0\s+4", out)


def test_status_times_the_estimate_by_runs_on_the_same_device(tmp_path):
    """Runs a study trained on a GPU machine are faster by far: the CPU's estimate ignores
    them, and ``--device cuda`` uses them alone."""
    from sparsebench.study.progress import study_progress

    def row(run_id, status, device=None, seconds_per_step=None):
        config = {"run": {"steps": 10, **({"device": device} if device else {})}}
        return Run(id=run_id, technique="magnitude", sweep="s", task="t", status=status,
                   config=config, seconds_per_step=seconds_per_step, train_seconds=1.0)

    with RunStore(tmp_path / "d.db") as store:
        store.upsert([row("cpu-a", "finished", None, 2.0), row("gpu-a", "finished", "cuda:0", 0.1),
                      row("gpu-b", "finished", "cuda", 0.3), row("open", "pending")])
        assert [r.device for r in store.runs()] == ["cpu", "cuda", "cuda", "cpu"]
        cpu = study_progress(store)
        assert cpu.seconds_per_step == {"magnitude": 2.0}
        assert cpu.seconds_left == pytest.approx(10 * 2.0)  # the store's usual budget: 10
        gpu = study_progress(store, device="cuda")
        assert gpu.seconds_per_step == {"magnitude": pytest.approx(0.2)}  # median of 0.1, 0.3
        assert gpu.seconds_left == pytest.approx(10 * 0.2)


def test_status_says_it_cannot_estimate_rather_than_zero():
    """A new store whose runs have not finished any technique yet has no speed to go by: the
    status says so instead of "about 0 min"."""
    from sparsebench.study.progress import StudyProgress, SweepProgress, format_progress

    sweep = SweepProgress("probe", {"running": 2}, unplanned=1,
                          open_steps=[("dense", 700), ("magnitude", 750), ("scratch-e", 1200)])
    text = format_progress(StudyProgress("p.db", [sweep], [], {}, 0.0,
                                         ["dense", "magnitude", "scratch-e"]))
    assert ("left: 3 runs, not estimated yet: no finished cpu run of dense, magnitude, "
            "scratch-e in this store to time them by") in text
    assert "about 0 min" not in text


def test_status_and_report_set_apart_retraining_runs_whose_source_is_no_longer_best(tmp_path):
    """A magnitude run trained again (or a new setting) can take over as the best at a
    sparsity: the retraining runs planned from the old one are not run by the sweep, so the
    status counts them apart and counts the new source's points as still to plan, and the
    report leaves them out."""
    from sparsebench.study.progress import format_progress, study_progress
    from sparsebench.study.report import ReportContext
    from sparsebench.study.sweep import (
        orphaned_phase2_runs,
        plan_phase1,
        save_sweep_definition,
    )

    values = {"name": "orph", "task": "fmnist-lenet300", "steps": 10, "sparsities": [0.9],
              "dense": False, "techniques": {"magnitude": {"grid": {"end": [0.4, 0.6]}}},
              "retraining": {"kinds": ["scratch-e"], "sparsities": [0.9], "replicas": 2}}
    spec = parse_sweep(values, name="orph", text=yaml.safe_dump(values))
    first, second = (p.run_id(spec.task) for p in plan_phase1(spec))

    def magnitude(run_id, accuracy):
        return Run(id=run_id, technique="magnitude", sweep="orph", task=spec.task,
                   target_sparsity=0.9, metric_value=accuracy, status="finished",
                   seconds_per_step=1.0, config={"run": {"steps": 10}})

    def scratch(replica, source, status):
        return Run(id=f"scratch-e-s90-r{replica}-{source[-4:]}", technique="scratch-e",
                   sweep="orph", task=spec.task, target_sparsity=0.9, status=status,
                   hyperparameters={"source": source}, config={"run": {"steps": 10}})

    with RunStore(tmp_path / "o.db") as store:
        store.upsert([magnitude(first, 0.95), magnitude(second, 0.90),
                      scratch(0, first, "finished"), scratch(1, first, "pending")])
        save_sweep_definition(store, spec)
        progress = study_progress(store)
        (sweep,) = [s for s in progress.sweeps if s.name == "orph"]
        assert (sweep.orphaned, sweep.unplanned) == (0, 0)
        assert [t for t, _ in sweep.open_steps] == ["scratch-e"]
        # The first run is trained again and comes out worse: the second is the best now.
        store.upsert([magnitude(first, 0.85)])
        progress = study_progress(store)
        (sweep,) = [s for s in progress.sweeps if s.name == "orph"]
        assert (sweep.orphaned, sweep.orphaned_open, sweep.unplanned) == (2, 1, 2)
        assert sorted(steps for _, steps in sweep.open_steps) == [10, 10]  # the 2 to plan
        assert ("orph: 2 retraining/small-dense runs derive from a magnitude run that is no "
                "longer the best at its sparsity (1 of them open: the sweep will not run them)"
                ) in format_progress(progress)
        # The report leaves both out, and says so.
        orphans = {f"scratch-e-s90-r0-{first[-4:]}", f"scratch-e-s90-r1-{first[-4:]}"}
        assert orphaned_phase2_runs(store, store.runs()) == orphans
        ctx = ReportContext(store, tmp_path / "report")
        assert {r.id for r in ctx.runs} == {first, second}
        write_report(store, tmp_path / "report")
        page = (tmp_path / "report" / "index.html").read_text()
        assert "Left out: 2 retraining or small-dense runs" in page
