"""Importing the study's published CSV files: row counts from the reference README, every quirk,
idempotence, and malformed or unknown files refused with file and line."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sparsebench.study.published import DATA_ROOT, FILES, PublishedDataError, import_published
from sparsebench.study.store import RunStore

REFERENCE = Path("/work/shared/reference/state_of_sparsity")

# Data rows per file, from the table in the reference README; then the store rows they become
# (Run 1..9 columns: 9 rows each; the wide VD file: 11 thresholds each).
README_ROWS = {
    "rn50_baselines.csv": 3,
    "rn50_magnitude_pruning.csv": 236,
    "rn50_random_pruning.csv": 288,
    "rn50_variational_dropout.csv": 161,
    "rn50_l0_regularization.csv": 323,
    "rn50_lottery_ticket.csv": 48,
    "rn50_scratch_lr_scaled.csv": 20,
    "rn50_scratch_lr_constant_final.csv": 10,
    "rn50_scratch_lr_constant_decay.csv": 12,
    "rn50_scratch_lr_continual_decay.csv": 12,
    "transformer_baselines.csv": 5,
    "transformer_magnitude_pruning.csv": 504,
    "transformer_random_pruning.csv": 630,
    "transformer_variational_dropout.csv": 372,
    "transformer_l0_regularization.csv": 930,
    "transformer_scratche.csv": 175,
    "transformer_scratchb.csv": 175,
    "transformer_scratche_augmented_init.csv": 175,
    "transformer_scratchb_augmented_init.csv": 175,
    "transformer_lottery_ticket.csv": 175,
}
STORE_ROWS = {**README_ROWS, "rn50_scratch_lr_scaled.csv": 20 * 9,
              "rn50_scratch_lr_constant_final.csv": 10 * 9,
              "transformer_variational_dropout.csv": 372 * 11}


def test_row_counts_per_file(published_store):
    assert {name: rows for name, (rows, _) in published_store.import_counts.items()} == README_ROWS
    assert {name: n for name, (_, n) in published_store.import_counts.items()} == STORE_ROWS
    assert published_store.count(source="published") == sum(STORE_ROWS.values()) == 8389


def test_package_copy_is_byte_for_byte():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference folder {REFERENCE} is not on this machine")
    for spec in FILES:
        ours, theirs = DATA_ROOT / spec.path, REFERENCE / spec.path
        assert hashlib.sha256(ours.read_bytes()).digest() == \
            hashlib.sha256(theirs.read_bytes()).digest(), spec.path
    note = (DATA_ROOT / "README.md").read_text()
    assert "Apache License" in note and "google-research/google-research" in note


def test_units_are_one_per_metric(published_runs):
    rn50 = [r for r in published_runs if r.model_family == "resnet50"]
    assert all(r.metric_name == "top1" and 0.0 <= r.metric_value <= 1.0 for r in rn50)
    dense = sorted(r.metric_value for r in rn50 if r.technique == "dense")
    assert dense == pytest.approx([0.7659, 0.7667, 0.7680])  # 76.67 / 76.8 in the file: percent
    transformer = [r for r in published_runs if r.model_family == "transformer"]
    assert all(r.metric_name == "bleu" and 0.0 <= r.metric_value <= 100.0 for r in transformer)
    assert sorted(r.metric_value for r in transformer if r.technique == "dense")[-1] == 27.52


def test_wide_vd_file_is_one_row_per_threshold(published_store):
    rows = published_store.runs(sweep="transformer_variational_dropout")
    by_model = {}
    for row in rows:
        by_model.setdefault(row.train_id, []).append(row)
    assert len(by_model) == 372 and {len(v) for v in by_model.values()} == {11}
    line2 = "published:sparse_transformer/technique_comparison/transformer_variational_dropout:2"
    first = sorted(by_model[line2], key=lambda r: r.hyperparameters["log_alpha_threshold"])
    # Line 2 of the file: (0.17 BLEU, 0.9863 sparsity) at t=0.0 ... (15.34, 0.7866) at t=5.0.
    assert [r.hyperparameters["log_alpha_threshold"] for r in first] == \
        [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert (first[0].metric_value, first[0].achieved_sparsity) == (0.17, 0.986346125603)
    assert (first[-1].metric_value, first[-1].achieved_sparsity) == (15.34, 0.786605417728)
    assert first[0].hyperparameters["dkl_weight"] == 2.22222222222e-7


def test_header_spellings_and_empty_header(published_store):
    # "HParams" (lottery), "Tensor2Tensor HParams" (others) and "Tensor2Tensor Hparams" (VD).
    for sweep in ("transformer_lottery_ticket", "transformer_scratche",
                  "transformer_variational_dropout"):
        assert "hparams_set" in published_store.runs(sweep=sweep)[0].hyperparameters
    decay = published_store.runs(sweep="rn50_scratch_lr_constant_decay")
    assert {r.hyperparameters["init_method"] for r in decay} == {"baseline", "sparse"}
    assert {r.technique for r in decay} == {"scratch-b", "augmented"}  # time multiplier 2


def test_replica_columns(published_store):
    rows = published_store.runs(sweep="rn50_scratch_lr_scaled")
    assert sorted({r.replica for r in rows}) == list(range(1, 10))
    # First data row: 0.5, 1, baseline, Run 1 = 0.746280014515, Run 9 = 0.746439993382.
    first = [r for r in rows if r.id.split(":")[-1].startswith("2/")]
    assert len(first) == 9 and {r.technique for r in first} == {"scratch-e"}
    assert {r.replica: r.metric_value for r in first}[9] == 0.746439993382
    assert first[0].variant == "lr_scaled" and first[0].achieved_sparsity == 0.5


def test_failed_runs_kept_and_flagged(published_runs):
    failed = [r for r in published_runs if r.flags.get("failed_bleu_zero")]
    assert failed and all(r.metric_value == 0.0 for r in failed)
    # README anomaly 5: one BLEU-0 replica of scratch-e at 80 %, two of scratch-e augmented.
    assert sum(r.sweep == "transformer_scratche" for r in failed) == 1
    aug = [r for r in failed if r.sweep == "transformer_scratche_augmented_init"]
    assert sorted(r.target_sparsity for r in aug) == [0.8, 0.98]
    # ... and the magnitude-pruning run at 50 % with schedule 0, 300000, 1000, none.
    assert any(r.sweep == "transformer_magnitude_pruning" and r.target_sparsity == 0.5
               and r.hyperparameters["begin_pruning_step"] == 0
               and r.hyperparameters["end_pruning_step"] == 300000
               and r.hyperparameters["regularization"] == "none" for r in failed)


def test_scientific_notation_and_quirk_flags(published_store):
    l0 = published_store.runs(sweep="rn50_l0_regularization")
    assert min(r.achieved_sparsity for r in l0 if r.achieved_sparsity > 0) < 1e-5  # 2.43E-06
    assert sum(r.achieved_sparsity == 0.0 for r in l0) == 31  # README anomaly 4
    assert all(r.flags["columns_possibly_swapped"] for r in l0)
    assert max(r.metric_value for r in l0) == pytest.approx(0.405, abs=5e-4)
    mp = published_store.runs(sweep="transformer_magnitude_pruning")
    assert {r.target_sparsity for r in mp} == {0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98}


def test_import_is_idempotent(tmp_path):
    root = tmp_path / "data"
    spec = FILES[0]  # rn50_baselines.csv
    (root / spec.path).parent.mkdir(parents=True)
    shutil.copy(DATA_ROOT / spec.path, root / spec.path)
    with RunStore(tmp_path / "s.db") as store:
        import_published(store, root)
        first = {r.id: r.metric_value for r in store.runs()}
        import_published(store, root)
        assert {r.id: r.metric_value for r in store.runs()} == first and len(first) == 3


def _write(root: Path, relative: str, text: str) -> None:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(text)


@pytest.mark.parametrize(
    ("relative", "text", "message"),
    [
        ("sparse_rn50/technique_comparison/rn50_magnitude_pruning.csv",
         "Sparsity,begin,end,freq,label smoothing,accuracy\n0.5,0,1,2,0,0.75\n0.7,0,1,2,0,0.7,9\n",
         r"rn50_magnitude_pruning.csv, line 3: 7 fields where the header has 6"),
        ("sparse_rn50/technique_comparison/rn50_magnitude_pruning.csv",
         "Sparsity,begin,end,freq,label smoothing,accuracy\n0.5,0,1,2,0,75.3\n",
         r"line 2: 'metric' = 75.3 is outside"),  # a percent in a fraction file
        ("sparse_transformer/technique_comparison/transformer_l0_regularization.csv",
         "MOSES BLEU,Sparsity,l0_norm_weight\n24.1,0.75,1e-7\n24.2,n/a,1e-7\n",
         r"line 3: column 'sparsity' holds 'n/a'"),
        ("sparse_transformer/technique_comparison/transformer_l0_regularization.csv",
         "BLEU score,Sparsity\n24.1,0.75\n",
         r"line 1: no column for \['metric'\]"),
        ("sparse_rn50/technique_comparison/rn50_variational_dropout.csv",
         "DKL loss coeff,,global sparsity,Accuracy\n0.1,x,0.9,0.7\n",
         r"line 1: column 2 has an empty header"),
        ("sparse_rn50/technique_comparison/rn50_resnet_mystery.csv", "a,b\n1,2\n",
         r"rn50_resnet_mystery.csv, line 1: unknown published file"),
    ],
)
def test_malformed_files_are_refused_with_file_and_line(tmp_path, relative, text, message):
    _write(tmp_path / "data", relative, text)
    with RunStore(tmp_path / "s.db") as store, pytest.raises(PublishedDataError, match=message):
        import_published(store, tmp_path / "data")
    with RunStore(tmp_path / "s.db") as store:
        assert store.count() == 0  # nothing half-imported
