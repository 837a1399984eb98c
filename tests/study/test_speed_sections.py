"""The report's block-sparsity, inference and pruned-weights sections on a hand-made store:
which runs they take, the numbers in their tables (worked by hand) and that block runs stay out
of the study's frontiers; and the choice of runs ``bench-runs`` times."""

from __future__ import annotations

import csv
from pathlib import Path

from sparsebench.study.report import write_report
from sparsebench.study.speed import block_of, runs_to_time
from sparsebench.study.store import InferenceResult, Run, RunStore


def _run(run_id: str, technique: str, value: float, sparsity: float, *, block=None,
         width: int = 16, target: float | None = None, layers=None) -> Run:
    hp = {"begin": 0.1, "end": 0.6} if technique != "dense" else {}
    if block is not None:
        hp["block"] = list(block)
    return Run(id=run_id, technique=technique, model_family="resnet50", metric_name="top1",
               metric_value=value, achieved_sparsity=sparsity,
               target_sparsity=target if target is not None else (
                   sparsity if technique == "magnitude" else None),
               status="finished", hyperparameters=hp, run_dir=f"/nowhere/{run_id}",
               config={"model": {"name": "resnet50-small", "options": {"width": width}}},
               layers=layers or [])


def _store(path: Path) -> RunStore:
    store = RunStore(path)
    store.upsert([
        _run("dense", "dense", 0.90, 0.0, layers=[{"name": "w", "size": 1000, "nonzeros": 1000}]),
        _run("mp90", "magnitude", 0.88, 0.9),
        _run("vd90", "variational_dropout", 0.87, 0.902),
        _run("b1", "magnitude", 0.885, 0.9, block=(1, 1)),
        _run("b4", "magnitude", 0.880, 0.9, block=(4, 4)),
        _run("b16", "magnitude", 0.860, 0.9, block=(16, 16),
             layers=[{"name": "a", "size": 256, "nonzeros": 0},
                     {"name": "b", "size": 2304, "nonzeros": 256},
                     {"name": "embed.weight", "size": 640, "nonzeros": 640}]),
        Run(id="b32", technique="magnitude", model_family="resnet50", status="diverged",
            target_sparsity=0.9, hyperparameters={"block": [32, 32]},
            error="the loss became nan at step 157"),
        _run("wide", "magnitude", 0.905, 0.75, block=(16, 16), width=32,
             layers=[{"name": "w", "size": 4000, "nonzeros": 1000}]),
    ])
    plan = [{"name": f"layer{i}.weight", "kind": "linear", "density": 0.1, "block": [1, 1],
             "break_even": be, "sparse": be > 0.1, "dense_s": 1e-3, "sparse_s": 5e-4}
            for i, be in enumerate((0.3, 0.05, 0.2))]
    store.record_inference(InferenceResult("mp90", 16, 1, 1.0, 0.5, 2, 3, plan=plan))
    for run_id, b1, b128 in (("b1", (4.0, 1.0), (40.0, 20.0)), ("b4", (4.0, 0.5), (40.0, 8.0)),
                             ("b16", (4.0, 0.4), (40.0, 5.0)), ("mp90", (4.0, 2.0), (40.0, 10.0)),
                             ("dense", (3.0, 3.0), (30.0, 30.0)), ("wide", (9.0, 1.5),
                                                                    (90.0, 12.0))):
        store.record_inference(InferenceResult(run_id, 1, 1, *b1, 3, 4, "forward", "cpu"))
        store.record_inference(InferenceResult(run_id, 128, 1, *b128, 3, 4, "forward", "cpu"))
    return store


def _table(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / f"{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_block_and_inference_sections_by_hand(tmp_path):
    with _store(tmp_path / "s.db") as store:
        index = write_report(store, tmp_path / "report")
    out = tmp_path / "report"
    blocks = {row["block"]: row for row in _table(out, "ours_resnet50_blocks")}
    assert list(blocks) == ["unstructured", "4x4", "16x16"]  # by block area
    # Quality against unstructured (88.5%): 4x4 -0.50 pp, 16x16 -2.50 pp.
    assert blocks["4x4"]["vs unstructured"] == "-0.50"
    assert blocks["16x16"]["vs unstructured"] == "-2.50"
    # Speed-up = dense / sparse of each model: 4x4 at batch 128 is 40 / 8 = 5.
    assert blocks["4x4"]["speed-up b128"] == "5.00"
    assert blocks["16x16"]["speed-up b1"] == "10.00"
    assert blocks["16x16"]["empty layers"] == "1/2"  # of the 2 pruned layers, not 3 reported
    assert blocks["4x4"]["empty layers"] == "–"  # no per-layer list stored
    (wide,) = _table(out, "ours_resnet50_wider")
    # The narrow dense model (30 ms at batch 128) against the wide sparse one (12 ms): 2.5.
    assert wide["narrow dense / wide sparse b128"] == "2.50"
    assert (wide["nonzero weights"], wide["dense model weights"]) == ("1000", "1000")
    text = index.read_text()
    assert "Worth it on this machine at 90%: 4x4 blocks" in text  # loses 0.5 <= 1 point
    assert "the wider sparse model is better" in text
    assert "32x32 blocks at 90% (b32) diverged: the loss became nan at step 157." in text
    assert "With 16x16 blocks at 90%, 1 of 2 layers lost every weight" in text
    assert "Left dense in these block runs (not in their pruned selection): embed.weight" in text
    # Block runs are their own experiment: not in the study's frontier table.
    frontier = _table(out, "ours_resnet50_frontiers")
    ninety = next(row for row in frontier if row["sparsity %"] == "90")
    assert ninety["magnitude pruning"].startswith("88.00 (1)")
    timed = {row["run"]: row for row in _table(out, "ours_resnet50_inference")
             if row["batch"] == "128"}
    assert set(timed) == {"mp90"}
    assert timed["mp90"]["speed-up"] == "4.00"
    # Two of the three layers sit under their break-even density at batch 16.
    assert "the sparse kernel was chosen for 2 of 3 at batch 16" in text
    assert (out / "ours_resnet50_break_even.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "ours_resnet50_blocks_90.png").stat().st_size > 10_000


def test_runs_to_time_takes_best_per_technique_and_every_block_run(tmp_path):
    with _store(tmp_path / "s.db") as store:
        store.upsert([_run("mp90b", "magnitude", 0.87, 0.9), _run("mp95", "magnitude", 0.8, 0.95),
                      _run("mp80", "magnitude", 0.89, 0.8),
                      _run("small", "small-dense", 0.84, 0.0)])  # every one is timed
        chosen = {r.id for r in runs_to_time(store)}
    assert chosen == {"dense", "mp90", "mp95", "vd90", "b1", "b4", "b16", "wide", "small"}
    assert block_of(_run("x", "magnitude", 0.5, 0.5)) == (1, 1)
    assert block_of(_run("y", "magnitude", 0.5, 0.5, block=(16, 1))) == (16, 1)


def test_pruned_weights_section_compares_the_modes(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        runs = [_run("dense", "dense", 0.9, 0.0)]
        for mode, values in (("update", (0.85, 0.46)), ("keep", (0.86, 0.83))):
            for level, value in zip((0.5, 0.9), values, strict=True):
                run = _run(f"{mode}{level}", "magnitude", value, level)
                run.hyperparameters["pruned_weights"] = mode
                runs.append(run)
        runs.append(_run("default90", "magnitude", 0.40, 0.9))  # no key: the default, update
        store.upsert(runs)
        index = write_report(store, tmp_path / "r")
    table = _table(tmp_path / "r", "ours_resnet50_pruned_weights")
    rows = {row["sparsity %"]: row for row in table}
    assert (rows["90"]["keep"], rows["90"]["update"]) == ("83.00", "46.00")
    assert (rows["50"]["keep"], rows["50"]["update"]) == ("86.00", "85.00")
    assert "At 90%: keep 83.00%, update 46.00%; best: keep." in index.read_text()


def test_bench_runs_prints_spread_and_one_warning_per_unreliable_run(tmp_path, monkeypatch):
    from sparsebench.inference import timing
    from sparsebench.inference.bench import BatchResult
    from sparsebench.study import speed

    monkeypatch.setattr(timing, "available_cores", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    rounds = {  # run id -> (dense, sparse) seconds of 5 rounds at batch 1
        # dense sorted 1 1 2 3 4: median 2, quartiles 1-3 (100% > 20%); sparse all 1: the
        # ratio 2/1 ranges from 1/1 to 3/1.
        "mp90": ([2.0, 1.0, 4.0, 1.0, 3.0], [1.0] * 5),
        # dense sorted 1.9 2 2 2 2.1: quartiles 2-2 (0%), sparse all 1: 2.00x [2.00-2.00].
        "vd90": ([2.0, 2.1, 2.0, 1.9, 2.0], [1.0] * 5),
    }

    def measure(run, batches, *, threads, **_kwargs):
        comparison = timing.Comparison.of(*rounds[run.id])
        result = BatchResult(1, comparison.baseline.median, comparison.candidate.median, [],
                             comparison=comparison)
        return [(InferenceResult(run.id, 1, threads, result.dense_s, result.sparse_s, 0, 0),
                 result)]

    monkeypatch.setattr(speed, "_measure_run", measure)
    said: list[str] = []
    with _store(tmp_path / "s.db") as store:
        runs = [r for r in store.runs() if r.id in rounds]
        assert speed.time_runs(store, runs, [1], threads=1, force=True, say=said.append) == 2
        assert {(t.run_id, t.dense_seconds) for t in store.inference() if t.batch == 1
                and t.run_id in rounds} == {("mp90", 2.0), ("vd90", 2.0)}
    assert said[0] == "threads: 1 (as requested; 2 cores, load average 0.20 leaves 2 idle)"
    mp90 = next(i for i, line in enumerate(said) if " mp90 " in line)
    assert "b1 2.00x [1.00-3.00] ! (0/0 sparse)" in said[mp90]
    assert said[mp90 + 1].startswith(f"[{mp90}/2] WARNING: unreliable ratios")
    assert "batch 1: dense rounds spread 100.0% of their median" in said[mp90 + 1]
    vd90 = next(i for i, line in enumerate(said) if " vd90 " in line)
    assert "b1 2.00x [2.00-2.00] (0/0 sparse)" in said[vd90]
    assert not any("WARNING" in line and "vd90" in line for line in said)
    assert sum("WARNING" in line for line in said) == 1


def test_blocks_set_against_the_unstructured_seeds_of_another_sweep_in_bpc(tmp_path):
    def gru(run_id, technique, bpc, sparsity, block=None):
        run = _run(run_id, technique, bpc, sparsity, block=block)
        run.model_family, run.metric_name, run.higher_is_better = "gru", "bpc", False
        run.config = {"model": {"name": "gru", "options": {"hidden_size": 512}}}
        return run

    with RunStore(tmp_path / "s.db") as store:
        store.upsert([gru("dense", "dense", 2.0, 0.0),
                      # the main sweep's unstructured seeds: mean 2.60
                      gru("u0", "magnitude", 2.58, 0.9), gru("u1", "magnitude", 2.62, 0.9),
                      gru("k0", "magnitude", 2.64, 0.9, block=(16, 1)),
                      gru("k1", "magnitude", 2.80, 0.9, block=(16, 1))])
        for run_id in ("k0", "k1"):
            store.record_inference(InferenceResult(run_id, 1, 1, 4.0, 1.0, 3, 4, "forward",
                                                   "cpu"))
        index = write_report(store, tmp_path / "report")
    rows = {row["run"]: row for row in _table(tmp_path / "report", "ours_gru_blocks")}
    # bpc, lower is better: 2.64 - 2.60 = +0.040 (worse), 2.80 - 2.60 = +0.200.
    assert rows["k0"]["vs unstructured"] == "+0.040"
    assert rows["k1"]["vs unstructured"] == "+0.200"
    text = index.read_text()
    assert ("16x1 blocks cost 0.040 bpc against unstructured pruning (mean of 2 seeds, "
            "2.600)") in text
    # Worth it: within 2% of 2.60 (0.052 bpc), so k0 (0.040) is and k1 (0.200) is not.
    assert "Worth it on this machine at 90%: 16x1 blocks" in text
