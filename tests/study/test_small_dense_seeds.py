"""The small-dense section's comparison over seeds (issue 27's large sparse against small dense
GRU): means, ranges, the verdict against the seed spread and the training-time ratio, on a
hand-made store of bits-per-character runs worked by hand."""

from __future__ import annotations

import csv

import pytest

from sparsebench.study.report import write_report
from sparsebench.study.store import Run, RunStore

MAGNITUDE_HP = {"begin": 0.1, "end": 0.6}


def _run(run_id: str, technique: str, bpc: float, seconds: float, level: float,
         replica: int, hp: dict | None = None, variant: str = "") -> Run:
    sparse = technique == "magnitude"
    return Run(id=run_id, technique=technique, sweep="wavernn", model_family="gru",
               metric_name="bpc", metric_value=bpc, higher_is_better=False,
               achieved_sparsity=level if sparse else 0.0,
               target_sparsity=level if sparse else None, status="finished",
               hyperparameters=dict(hp or MAGNITUDE_HP), variant=variant, replica=replica,
               seed=replica, train_seconds=seconds, run_dir=f"/nowhere/{run_id}",
               config={"model": {"name": "gru-lm", "options": {"hidden_size": 512}}})


def _small(run_id: str, bpc: float, seconds: float, level: float, matched: str,
           replica: int) -> Run:
    hp = {"hidden_size": 160, "parameters": 100_000, "matched_run": matched,
          "matched_nonzero": 99_000, "matched_sparsity": level}
    return _run(run_id, "small-dense", bpc, seconds, level, replica, hp, "hidden_size=160")


def test_seed_means_ranges_verdict_and_training_time(tmp_path):
    runs = [
        # 90%: sparse 2.50-2.54 (mean 2.52), small dense 2.60-2.65 (mean 2.6233): apart, and
        # lower is better, so the sparse model is ahead. Median seconds: 110 against 55: 2.00x.
        _run("m0", "magnitude", 2.50, 100, 0.9, 0), _run("m1", "magnitude", 2.52, 110, 0.9, 1),
        _run("m2", "magnitude", 2.54, 120, 0.9, 2),
        _small("d0", 2.60, 50, 0.9, "m1", 0), _small("d1", 2.62, 55, 0.9, "m1", 1),
        _small("d2", 2.65, 60, 0.9, "m1", 2),
        # 95%: 2.80-3.00 against 2.85-3.05: the ranges overlap. Seconds 100 and 100 -> 1.00x.
        _run("n0", "magnitude", 2.80, 100, 0.95, 0), _run("n1", "magnitude", 2.90, 100, 0.95, 1),
        _run("n2", "magnitude", 3.00, 100, 0.95, 2),
        _small("e0", 2.85, 100, 0.95, "n0", 0), _small("e1", 2.95, 100, 0.95, "n0", 1),
        _small("e2", 3.05, 100, 0.95, "n0", 2),
    ]
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report")
    with open(tmp_path / "report" / "ours_gru_small_dense_seeds.csv", newline="") as handle:
        rows = {row["sparsity %"]: row for row in csv.DictReader(handle)}
    assert rows["90"]["sparse mean"] == "2.52" and rows["90"]["dense mean"] == "2.62"
    assert rows["90"]["sparse range"] == "2.50–2.54"
    assert rows["90"]["training time sparse / dense"] == "2.00"
    assert rows["90"]["verdict"] == "the sparse model is ahead by more than the seed spread"
    assert rows["95"]["verdict"] == "within the seed spread of each other"
    assert rows["95"]["sparse seeds"] == "3" and rows["95"]["dense seeds"] == "3"
    text = index.read_text()
    assert ("At 90% (99,000 nonzero parameters), over 3 and 3 seeds: sparse 2.520 "
            "(2.500–2.540), small dense hidden_size=160 (100,000 parameters) 2.623 "
            "(2.600–2.650)") in text
    assert "(medians; 2.00×), so at equal training time the sparse model would have had fewer" \
        in text
    assert "(medians; 1.00×), so at equal training time the sparse model would have had at" \
        in text


def test_one_seed_a_side_keeps_the_sentence_per_pair(tmp_path):
    runs = [_run("m0", "magnitude", 2.50, 100, 0.9, 0), _small("d0", 2.60, 50, 0.9, "m0", 0)]
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report")
    assert not (tmp_path / "report" / "ours_gru_small_dense_seeds.csv").exists()
    assert "the sparse model is better." in index.read_text()


def test_the_figure_sets_blocks_and_the_full_dense_model_at_their_nonzeros(tmp_path,
                                                                            monkeypatch):
    from sparsebench.study.report import magnitude

    layers = lambda zeros: [{"name": "w", "size": 1_000, "nonzeros": 1_000 - zeros}]  # noqa: E731
    runs = [_run("m0", "magnitude", 2.50, 100, 0.9, 0), _run("m1", "magnitude", 2.54, 100, 0.9, 1),
            _small("d0", 2.60, 50, 0.9, "m1", 0), _small("d1", 2.70, 50, 0.9, "m1", 1),
            _run("full0", "dense", 2.10, 100, 0.0, 0), _run("full1", "dense", 2.20, 100, 0.0, 1)]
    runs[1].layers = layers(900)  # the matched run: 99,000 nonzeros with 900 zeros here
    for i, (bpc, zeros) in enumerate([(2.9, 910), (3.1, 930)]):  # 16x1 blocks, two seeds
        run = _run(f"b{i}", "magnitude", bpc, 100, 0.9, i,
                   {**MAGNITUDE_HP, "block": [16, 1]})
        run.layers = layers(zeros)
        runs.append(run)
    drawn = {}
    monkeypatch.setattr(magnitude, "small_dense_figure",
                        lambda series, path, **kw: drawn.update(series))
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        write_report(store, tmp_path / "report")
    assert drawn["sparse (magnitude pruning)"] == [pytest.approx((99_000, 2.52, 2.50, 2.54))]
    assert drawn["small dense"] == [pytest.approx((100_000, 2.65, 2.60, 2.70))]
    # Blocks: 99,000 + 900 - 910 and 99,000 + 900 - 930, mean 98,980; bpc mean 3.0.
    ((x, mean, low, high),) = drawn["sparse, 16x1 blocks"]
    assert (x, low, high) == (98_980, 2.9, 3.1) and abs(mean - 3.0) < 1e-12
    # The full model: the matched run's nonzeros plus its zeros.
    ((x, mean, low, high),) = drawn["dense (full size)"]
    assert (x, low, high) == (99_900, 2.1, 2.2) and abs(mean - 2.15) < 1e-12
