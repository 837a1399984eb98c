"""The report's sampling-speed section on a hand-made store of character language models:
characters per second and the per-series line worked by hand, only sampling timings taken."""

from __future__ import annotations

import csv

import pytest

from sparsebench.study.report import write_report
from sparsebench.study.report.sampling import fit
from sparsebench.study.store import InferenceResult, Run, RunStore

WORKLOAD = "sampling 200 characters at batch 1 (GRUSampler)"


def _run(run_id: str, technique: str, nonzeros: int, sparsity: float, block=None) -> Run:
    hp = {"block": list(block)} if block else {}
    return Run(id=run_id, technique=technique, model_family="gru", metric_name="bpc",
               metric_value=2.0 + sparsity, higher_is_better=False, achieved_sparsity=sparsity,
               target_sparsity=sparsity if technique == "magnitude" else None,
               status="finished", hyperparameters=hp, run_dir=f"/nowhere/{run_id}",
               config={"model": {"name": "gru-lm", "options": {"hidden_size": 64}}},
               layers=[{"name": "cells.0.hh.weight", "size": 100_000, "nonzeros": nonzeros}])


def test_characters_per_second_and_the_line_through_each_series(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([_run("dense", "dense", 100_000, 0.0),
                      _run("s90", "magnitude", 10_000, 0.9, block=(16, 1)),
                      _run("s95", "magnitude", 5_000, 0.95, block=(16, 1)),
                      _run("small", "small-dense", 10_000, 0.0)])
        # Seconds per call of 200 characters: dense as trained, then compiled.
        # The 16x1 series: 2 us + 0.2 ns x nonzeros per character, worked by hand:
        # 10,000 -> 4 us (0.8 ms a call), 5,000 -> 3 us (0.6 ms a call).
        for run_id, dense_s, sparse_s in (("dense", 0.004, 0.004), ("s90", 0.002, 0.0008),
                                          ("s95", 0.002, 0.0006), ("small", 0.0005, 0.0005)):
            store.record_inference(InferenceResult(run_id, 1, 1, dense_s, sparse_s, 1, 3,
                                                   WORKLOAD, "cpu"))
        store.record_inference(InferenceResult("s90", 16, 1, 1.0, 1.0, 1, 3, "forward", "cpu"))
        index = write_report(store, tmp_path / "report")
    with open(tmp_path / "report" / "ours_gru_sampling.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"dense", "s90", "s95", "small"}
    assert rows["s90"]["characters/s"] == "250,000"       # 200 / 0.0008 s
    assert rows["s95"]["compiled µs/char"] == "3.0"
    assert rows["dense"]["characters/s"] == "50,000"      # the model as trained: 200 / 0.004
    assert rows["s90"]["ns per nonzero"] == "0.400"       # 4 us / 10,000
    assert rows["s90"]["nonzero weights"] == "10000"
    text = index.read_text()
    assert "time per character = 2.0 µs + 0.200 ns × nonzeros over 2 models" in text
    assert "not proportional to the nonzeros" in text      # the constant is 50% and 67%
    assert (tmp_path / "report" / "ours_gru_sampling.png").stat().st_size > 10_000


def test_line_through_points_by_hand():
    assert fit([(1, 3.0), (3, 7.0)]) == pytest.approx((1.0, 2.0))
    assert fit([(5, 1.0), (5, 2.0)]) is None  # one nonzero count: no line
