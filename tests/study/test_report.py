"""Figures, the HTML report and the commands; the published report rendered in Chromium."""

from __future__ import annotations

import csv
import html
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sparsebench.cli import main
from sparsebench.study import figures
from sparsebench.study import pareto as P
from sparsebench.study.published import DATA_ROOT
from sparsebench.study.report import write_report
from sparsebench.study.store import InferenceResult, Run, RunStore
from sparsebench.study.sweep import save_sweep_text


def _ours(store: RunStore) -> None:
    """A hand-made study of ours on lenet5 (top-1 fractions) and a published lenet5 table."""
    runs = [Run(id=f"dense{i}", technique="dense", model_family="lenet5", metric_name="top1",
                metric_value=v, achieved_sparsity=0.0, status="finished")
            for i, v in enumerate((0.90, 0.92))]
    table = {  # technique -> [(sparsity, top-1)]
        "magnitude": [(0.5, 0.90), (0.9, 0.86), (0.95, 0.80)],
        "variational_dropout": [(0.503, 0.89), (0.897, 0.87), (0.93, 0.85)],
        "random": [(0.5, 0.88), (0.9, 0.70), (0.95, 0.60)],
    }
    for technique, cells in table.items():
        for k, (s, v) in enumerate(cells):
            runs.append(Run(id=f"{technique}{k}", technique=technique, model_family="lenet5",
                            metric_name="top1", metric_value=v, achieved_sparsity=s,
                            target_sparsity=None if technique == "variational_dropout" else s,
                            status="finished"))
    for k, v in enumerate((0.80, 0.82, 0.84)):
        runs.append(Run(id=f"lottery{k}", technique="lottery", model_family="lenet5",
                        metric_name="top1", metric_value=v, achieved_sparsity=0.9,
                        target_sparsity=0.9, status="finished", replica=k))
    runs.append(Run(id="failed", technique="l0", model_family="lenet5", status="failed",
                    error="boom"))
    # The "published" lenet5 frontier: MP 45 and 40 (dense 50), so relative 0.9 and 0.8.
    runs += [Run(id="p-dense", technique="dense", model_family="lenet5", metric_name="top1",
                 metric_value=0.5, achieved_sparsity=0.0, status="finished", source="published"),
             Run(id="p-mp90", technique="magnitude", model_family="lenet5", metric_name="top1",
                 metric_value=0.45, achieved_sparsity=0.9, status="finished",
                 source="published"),
             Run(id="p-vd90", technique="variational_dropout", model_family="lenet5",
                 metric_name="top1", metric_value=0.40, achieved_sparsity=0.9, status="finished",
                 source="published")]
    store.upsert(runs)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_figures_write_pngs(tmp_path):
    pts = [P.Point("magnitude", 0.5, 20.0, "a"), P.Point("magnitude", 0.9, 15.0, "b"),
           P.Point("l0", 0.5, 21.0, "c"), P.Point("l0", 0.9, 0.0, "d")]
    table = P.frontiers(pts)
    base = P.summarise([25.0, 26.0])
    out = figures.frontier_figure(table, pts, tmp_path / "f.png", metric_name="bleu",
                                  baseline=base)
    assert _png_size(out)[0] > 400
    reps = {"scratch-e": {0.5: P.summarise([18.0, 19.0, 0.0])}}
    out = figures.retraining_figure(reps, table["magnitude"], tmp_path / "r.png",
                                    metric_name="bleu", baseline=base)
    assert _png_size(out)[0] > 400
    out = figures.relative_frontiers_figure(table, base, table, P.summarise([30.0]),
                                            tmp_path / "c.png")
    assert _png_size(out)[0] > 400
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_collapsed_runs_sit_on_the_loss_axis_edge(tmp_path):
    # Dense 0.4: the axis shows losses up to 5 x 0.4 = 2.0, so it ends at the worst loss
    # under that (1.0), and the collapsed 270 is drawn at the edge.
    assert figures.loss_axis_cap([0.4, 0.5, 1.0, 270.0], 0.4) == 1.0
    assert figures.loss_axis_cap([0.4, 0.5, 1.9], 0.4) is None  # everything fits
    # No baseline: five times the lower median (2 -> 10); of two runs, the sound one sets it.
    assert figures.loss_axis_cap([1.0, 2.0, 3.0, 100.0], None) == 3.0
    assert figures.loss_axis_cap([1.0, 2.0, 30.0, 100.0], None) == 2.0
    assert figures.loss_axis_cap([0.5, 270.0], None) == 0.5
    # A cap never falls under the reference itself, and NaN / inf are no values to fit.
    assert figures.loss_axis_cap([0.4, 2.5, float("nan"), float("inf")], 0.4) == 0.4
    assert figures.loss_axis_cap([float("nan")], 0.4) is None
    pts = [P.Point("magnitude", 0.5, 0.41, "a"), P.Point("magnitude", 0.98, 1.06, "b"),
           P.Point("random", 0.5, 0.40, "c"), P.Point("random", 0.98, 4.3e16, "d")]
    out = figures.loss_frontier_figure(P.frontiers(pts, higher_is_better=False), pts,
                                       tmp_path / "l.png", baseline=P.summarise([0.40, 0.41]))
    assert _png_size(out)[0] > 400


def test_retraining_not_yet_run_is_said_not_drawn(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([
            Run(id="mp", technique="magnitude", model_family="lenet5", metric_name="top1",
                metric_value=0.86, achieved_sparsity=0.9, target_sparsity=0.9,
                status="finished"),
            *[Run(id=f"se{i}", technique="scratch-e", model_family="lenet5",
                  target_sparsity=0.9, status="pending") for i in range(3)]])
        index = write_report(store, tmp_path / "report", source="ours")
    text = html.unescape(index.read_text())
    assert "training the sparse architecture from scratch" in text
    assert "No retraining run has a result yet (3 in the store)." in text
    assert not list((tmp_path / "report").glob("*retraining*"))
    # Once the runs finish, the next report draws them; when they are gone again (a store
    # rebuilt), the figure and table it wrote go too, and a file of the user's stays.
    with RunStore(tmp_path / "s.db") as store:
        store.upsert([Run(id=f"se{i}", technique="scratch-e", model_family="lenet5",
                          metric_name="top1", metric_value=0.8, achieved_sparsity=0.9,
                          target_sparsity=0.9, status="finished") for i in range(3)])
        write_report(store, tmp_path / "report", source="ours")
        assert (tmp_path / "report" / "ours_lenet5_retraining.png").is_file()
        assert "ours_lenet5_retraining.csv" in (tmp_path / "report" / "report_files.txt"
                                                ).read_text().split()
        (tmp_path / "report" / "notes.txt").write_text("mine")
        store.delete(technique="scratch-e")
        write_report(store, tmp_path / "report", source="ours")
    assert not list((tmp_path / "report").glob("*retraining*"))
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"


def test_report_on_a_hand_made_study(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        _ours(store)
        index = write_report(store, tmp_path / "report", source="ours")
        text = html.unescape(index.read_text())
        # Dense 0.90 and 0.92: mean 91.00%. At 90 %: VD 87% (0.897 is in the bin) beats MP 86%.
        assert "The dense baseline reaches 91.00% (mean of 2 runs, 90.00% to 92.00%)." in text
        assert ("At 90% sparsity, variational dropout has the best frontier point: 87.00%, "
                "vs magnitude pruning 86.00%, random pruning 70.00%.") in text
        # VD's 0.93 point is more than 1 pp from every level.
        assert "variational dropout 1." in text
        # Lottery best 84% vs MP 86% at 90 %.
        assert ("At 90%, the best retrained run is lottery (84.00%, best of 3), 2.00 points "
                "below the magnitude pruning frontier (86.00%).") in text
        # Relative to dense: ours MP 0.86/0.91 = 0.945, published MP 0.45/0.5 = 0.900.
        rows = list(csv.reader((index.parent / "ours_lenet5_relative.csv").open()))
        assert ["magnitude pruning", "90", "0.945", "0.900"] in rows
        assert "At 90%, variational dropout leads in our runs and magnitude pruning in the " \
               "study's: the findings differ." in text
        for name in ("ours_lenet5_frontiers.png", "ours_lenet5_retraining.png",
                     "ours_lenet5_relative.png"):
            assert f'src="{name}"' in text and _png_size(index.parent / name)[0] > 400
        frontier = list(csv.reader((index.parent / "ours_lenet5_frontiers.csv").open()))
        assert frontier[0] == ["sparsity %", "magnitude pruning", "variational dropout",
                               "random pruning", "best"]
        assert frontier[5] == ["90", "86.00 (1)", "87.00 (1)", "70.00 (1)",
                               "variational dropout"]
        assert "matplotlib" in (index.parent / "versions.csv").read_text()
        with pytest.raises(ValueError, match="no runs"):
            write_report(store, tmp_path / "none", model_family="gpt")


def test_training_cost_compares_runs_of_one_layout_only(tmp_path):
    # NCHW runs (no flag: from before run.memory_format) at 1.0 s/step for magnitude and 2.0
    # for VD; channels-last runs at 0.5 for magnitude and 1.5 for VD. Pooled, the medians
    # would mix speeds; by layout, VD is 2.00x (NCHW) and 3.00x (channels-last).
    def run(i, technique, seconds, layout=None):
        return Run(id=f"{technique}{i}", technique=technique, model_family="lenet5",
                   metric_name="top1", metric_value=0.8, achieved_sparsity=0.9,
                   status="finished", seconds_per_step=seconds, train_seconds=100 * seconds,
                   flags={"memory_format": layout} if layout else {})
    runs = [run(0, "magnitude", 1.0), run(1, "variational_dropout", 2.0),
            run(2, "magnitude", 0.5, "channels_last"), run(3, "magnitude", 0.5, "channels_last"),
            run(4, "variational_dropout", 1.5, "channels_last")]
    # Runs continued on a GPU are a group of their own.
    gpu = [run(5, "magnitude", 0.03, "channels_last"), run(6, "variational_dropout", 0.09,
                                                           "channels_last")]
    for r in gpu:
        r.config = {"run": {"device": "cuda"}}
    runs += gpu
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report", source="ours")
    rows = list(csv.reader((index.parent / "ours_lenet5_cost.csv").open()))
    assert rows[0][:5] == ["technique", "layout", "runs", "ms per step", "per step / MP"]
    by = {(row[0], row[1]): row for row in rows[1:]}
    assert by["variational dropout", "channels-last"][2:5] == ["1", "1500.00", "3.00"]
    assert by["magnitude pruning", "channels-last"][2:5] == ["2", "500.00", "1.00"]
    assert by["variational dropout", "NCHW"][2:5] == ["1", "2000.00", "2.00"]
    assert by["variational dropout", "channels-last, cuda"][2:5] == ["1", "90.00", "3.00"]
    text = html.unescape(index.read_text())
    assert ("Variational dropout runs took 3.00x (channels-last runs, median of 1), 2.00x "
            "(NCHW runs, median of 1) and 3.00x (channels-last, cuda runs, median of 1) "
            "magnitude pruning's wall-clock time per step here") in text
    # What the times hold is said beside them: whole runs, start-up and others' load included.
    assert "whatever else ran on the machine at the time are included" in text


def test_training_cost_names_no_layout_for_a_model_without_convolutions(tmp_path):
    linear = [{"name": "fc.weight", "kind": "linear", "shape": [4, 4], "size": 16,
               "nonzeros": 2, "sparsity": 0.875}]
    runs = [Run(id=f"{t}{i}", technique=t, model_family="transformer", metric_name="bleu",
                metric_value=3.0, achieved_sparsity=0.9, status="finished",
                seconds_per_step=s, train_seconds=100 * s, layers=linear)
            for i, (t, s) in enumerate([("magnitude", 1.0), ("l0", 1.25)])]
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report", source="ours")
    rows = list(csv.reader((index.parent / "ours_transformer_cost.csv").open()))
    assert {row[1] for row in rows[1:]} == {"CPU"}
    assert "L0 regularization runs took 1.25x (CPU runs, median of 1)" in html.unescape(
        index.read_text())


def test_commands(tmp_path, capsys):
    root = tmp_path / "data"
    relative = "sparse_transformer/technique_comparison/transformer_baselines.csv"
    (root / relative).parent.mkdir(parents=True)
    shutil.copy(DATA_ROOT / relative, root / relative)
    store = tmp_path / "s.db"
    assert main(["import-published", "--store", str(store), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "transformer_baselines.csv" in out and "5 csv rows ->     5 runs" in out
    with RunStore(store) as s:
        _ours(s)
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"),
                 "--model-family", "lenet5"]) == 0
    assert f"report written to {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out
    assert main(["report", "--store", str(tmp_path / "missing.db"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "no run store" in capsys.readouterr().err


def test_report_reads_several_stores_and_the_published_runs(tmp_path, capsys):
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    with RunStore(first) as a, RunStore(second) as b:
        _ours(a)
        b.upsert([Run(id="t-dense", technique="dense", model_family="transformer",
                      metric_name="bleu", metric_value=7.5, achieved_sparsity=0.0,
                      status="finished", sweep="ding")])
        b.record_inference(InferenceResult("t-dense", 1, 1, 0.2, 0.2, 0, 4))
        save_sweep_text(b, "ding", "name: ding\n")
    out = tmp_path / "r"
    assert main(["report", "--store", str(first), str(second), "--published",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    with open(out / "run_counts.csv", newline="") as handle:
        counts = {(r["source"], r["model"], r["technique"]): int(r["runs"])
                  for r in csv.DictReader(handle)}
    # Our lenet5 runs, our Transformer run and the study's own runs, in one report.
    assert counts[("ours", "Transformer", "dense")] == 1
    assert counts[("ours", "LeNet-5", "magnitude")] == 3
    assert counts[("published", "ResNet-50", "dense")] > 0
    assert counts[("published", "Transformer", "magnitude")] > 0
    # runs.csv lists ours only: the published rows are the package's own CSV files.
    with open(out / "runs.csv", newline="") as handle:
        runs = list(csv.DictReader(handle))
    assert {r["source"] for r in runs} == {"ours"}
    assert "t-dense" in {r["id"] for r in runs}
    assert "and the published runs" in (out / "index.html").read_text()
    assert "name: ding" in (out / "index.html").read_text()  # the sweep file came along
    for path in (first, second):  # the stores themselves are only read
        with RunStore(path) as store:
            assert not store.runs(source="published", model_family=["transformer", "resnet50"])


def test_published_report_renders_in_chromium(published_store, tmp_path, render_in_chromium):
    index = write_report(published_store, tmp_path / "report", source="published")
    text = index.read_text()
    assert ("At 90% sparsity, magnitude pruning has the best frontier point: 23.26 BLEU, "
            "vs L0 regularization 22.97 BLEU, variational dropout 22.02 BLEU, "
            "random pruning 20.67 BLEU.") in text
    assert "At 95% sparsity, variational dropout has the best frontier point: 72.48%" in text
    assert "The dense baseline reaches 27.29 BLEU (mean of 5 runs" in text
    render_in_chromium(index)  # asserts a page with text and figures


def test_the_loss_section_ranks_by_test_loss_beside_bleu(tmp_path):
    # Three dense seeds far apart in BLEU (2, 5, 5) but not in loss (4.60-4.62); at 90%
    # random pruning has the better BLEU and magnitude pruning the lower loss.
    def run(name, technique, sparsity, bleu, loss):
        return Run(id=name, technique=technique, model_family="transformer", metric_name="bleu",
                   metric_value=bleu, achieved_sparsity=sparsity, status="finished",
                   metrics={"test": {"bleu": bleu, "loss": loss}, "valid": {"bleu": 0.1}})
    runs = [run("d0", "dense", 0.0, 2.0, 4.60), run("d1", "dense", 0.0, 5.0, 4.62),
            run("d2", "dense", 0.0, 5.0, 4.61),
            run("m1", "magnitude", 0.9, 3.0, 5.10), run("m2", "magnitude", 0.9, 2.0, 5.00),
            run("r1", "random", 0.9, 4.0, 5.30), run("m3", "magnitude", 0.5, 4.0, 4.80),
            Run(id="old", technique="random", model_family="transformer", metric_name="bleu",
                metric_value=9.0, achieved_sparsity=0.5, status="finished"),  # no loss
            Run(id="d3", technique="dense", model_family="transformer", metric_name="bleu",
                metric_value=0.5, achieved_sparsity=0.0, status="finished")]  # no loss
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report", source="ours")
    rows = list(csv.reader((index.parent / "ours_transformer_loss_frontiers.csv").open()))
    assert rows[0] == ["sparsity %", "magnitude pruning", "random pruning", "lowest loss",
                       "best BLEU"]
    # The random run at 50% has no loss: it is left out of both rankings, not only one.
    assert rows[1] == ["50", "4.800 (1)", "–", "magnitude pruning", "magnitude pruning"]
    assert rows[-1] == ["90", "5.000 (2)", "5.300 (1)", "magnitude pruning", "random pruning"]
    text = html.unescape(index.read_text())
    assert ("The 3 dense replicas span 2.00 BLEU to 5.00 BLEU (75.0% of their mean) and 4.600 "
            "to 4.620 nats per token of test loss (0.4% of theirs).") in text
    assert ("At 90%, magnitude pruning has the lowest test loss (5.000, 0.300 below random "
            "pruning), +0.390 from the dense mean; by BLEU, random pruning leads.") in text
    assert 'src="ours_transformer_loss_frontiers.png"' in text
    assert _png_size(index.parent / "ours_transformer_loss_frontiers.png")[0] > 400


def test_the_seed_section_sizes_each_repeated_setting_and_says_what_overlaps(tmp_path):
    def run(name, technique, target, seed, top1, loss, **hp):
        return Run(id=name, technique=technique, model_family="lenet5", metric_name="top1",
                   metric_value=top1, achieved_sparsity=target or 0.0, target_sparsity=target,
                   seed=seed, status="finished", hyperparameters=hp,
                   metrics={"test": {"top1": top1, "loss": loss}})
    keep = {"end": 0.4, "pruned_weights": "keep"}
    runs = [run(f"d{s}", "dense", None, s, 0.88 + s / 1000, 0.40) for s in range(3)]
    runs += [run(f"m{s}", "magnitude", 0.8, s, v, 0.50 + s / 100, **keep)
             for s, v in enumerate((0.80, 0.84, 0.82))]
    runs += [run(f"r{s}", "random", 0.8, s, v, 0.45, end=0.4)
             for s, v in enumerate((0.86, 0.85, 0.83))]
    # At 90% the two settings' seeds do not overlap.
    runs += [run(f"m9{s}", "magnitude", 0.9, s, v, 0.6, **keep) for s, v in enumerate((0.7, 0.72))]
    runs += [run(f"r9{s}", "random", 0.9, s, v, 0.7, end=0.4) for s, v in enumerate((0.6, 0.65))]
    runs += [run("once", "magnitude", 0.8, 0, 0.9, 0.3, end=0.6),  # one seed: not repeated
             run("again", "magnitude", 0.8, 0, 0.9, 0.3, end=0.6)]  # same seed twice: neither
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report", source="ours")
    rows = list(csv.reader((index.parent / "ours_lenet5_seeds.csv").open()))
    assert rows[0] == ["setting", "target %", "seeds", "mean", "min", "max", "loss mean",
                       "loss min", "loss max"]
    by = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert len(by) == 5
    assert by["dense", "–"] == ["3", "88.10", "88.00", "88.20", "0.400", "0.400", "0.400"]
    assert by["magnitude pruning (end 0.4, pruned_weights keep)", "80"] == [
        "3", "82.00", "80.00", "84.00", "0.510", "0.500", "0.520"]
    text = html.unescape(index.read_text())
    assert ("Magnitude pruning (end 0.4, pruned_weights keep) at 80%: 3 seeds span 80.00% to "
            "84.00% and 0.500 to 0.520 nats of test loss.") in text
    assert ("At 80%, random pruning (end 0.4) averages 84.67% and magnitude pruning (end 0.4, "
            "pruned_weights keep) 82.00%: their seeds' ranges overlap, so one seed each cannot "
            "rank them; in test loss (0.450 and 0.510 nats) they do not overlap.") in text
    assert ("At 90%, magnitude pruning (end 0.4, pruned_weights keep) averages 71.00% and "
            "random pruning (end 0.4) 62.50%: their seeds' ranges do not overlap; in test loss "
            "(0.600 and 0.700 nats) they do not overlap.") in text


def test_retraining_in_test_loss_beside_bleu(tmp_path):
    # At 90%: magnitude pruning reaches BLEU 3.0 and, at best, loss 5.00. In BLEU no retrained
    # run gets there (scratch-e 2.5, scratch-b 1.0); in loss scratch-b does (4.90 at best),
    # while scratch-e stays behind (5.20-5.30, mean 5.25).
    def run(name, technique, bleu, loss, sparsity=0.9):
        return Run(id=name, technique=technique, model_family="transformer", metric_name="bleu",
                   metric_value=bleu, achieved_sparsity=sparsity, target_sparsity=sparsity or None,
                   status="finished", metrics={"test": {"bleu": bleu, "loss": loss}})
    runs = [run("d0", "dense", 5.0, 4.6, 0.0), run("m1", "magnitude", 3.0, 5.10),
            run("m2", "magnitude", 2.0, 5.00),
            *[run(f"e{i}", "scratch-e", 2.5, v) for i, v in enumerate((5.20, 5.30, 5.25))],
            *[run(f"b{i}", "scratch-b", 1.0, v) for i, v in enumerate((4.90, 4.95, 5.00))]]
    with RunStore(tmp_path / "s.db") as store:
        store.upsert(runs)
        index = write_report(store, tmp_path / "report", source="ours")
    text = html.unescape(index.read_text())
    assert "Transformer (ours): retraining in test loss" in text
    assert "No retraining run reaches the magnitude pruning frontier at any level." in text
    assert "Retraining reaches the magnitude pruning frontier at 90%." in text
    assert ("At 90%, the best retrained run is scratch-b (4.900, best of 3), 0.100 nats better "
            "than the magnitude pruning frontier (5.000).") in text
    assert ("At 90%, scratch-e, with the pruning run's steps, averages 5.250 over 3: 0.250 "
            "nats worse than the frontier.") in text
    rows = list(csv.reader((index.parent / "ours_transformer_retraining_loss.csv").open()))
    assert ["scratch-e", "90", "5.200", "5.250", "5.300", "3"] in rows
    assert 'src="ours_transformer_retraining_loss.png"' in text
    assert _png_size(index.parent / "ours_transformer_retraining_loss.png")[0] > 400


def test_retraining_in_loss_is_drawn_better_up_with_a_collapsed_replica_off_the_edge(
        tmp_path, monkeypatch):
    # Dense 4.6, so losses past 5 x 4.6 = 23 are off the scale: the replica at 270 (and the
    # mean it drags to 93.5) fall outside, and the axis ends at the worst sound loss, 5.2,
    # plus 6%: 5.512. It begins 1% under the best value drawn, the dense 4.6: 4.554.
    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: drawn.append(fig) or Path(path))
    reps = {"scratch-e": {0.9: P.summarise([5.2, 5.3, 270.0])}}
    reference = {0.9: P.FrontierPoint(0.9, 5.0, 0.9, 1, "m")}
    figures.retraining_figure(reps, reference, tmp_path / "r.png", metric_name="loss",
                              baseline=P.summarise([4.6]), higher_is_better=False,
                              unit="nats per token")
    (ax,) = drawn[0].axes
    assert ax.yaxis_inverted()
    assert ax.get_ylim() == pytest.approx((5.512, 4.554))
    assert ax.get_ylabel() == "test loss (nats per token; lower is better, drawn upward)"


def test_sections_are_listed_once_in_reading_order():
    """The sections are one explicit list: the loss frontiers right after the headline ones,
    the seed spread after them, one-shot pruning against them, then the retraining and
    published comparison, then our own and the speed sections; each once."""
    from sparsebench.study import report
    from sparsebench.study.report import loss, one_shot, seeds

    order = list(report.SECTION_BUILDERS)
    assert len(order) == len(set(order))
    technique = order.index(report.technique_section)
    assert order[technique - 1] is report.dense_section
    assert order[technique + 1:technique + 7] == [
        loss.loss_section, seeds.seed_section, one_shot.one_shot_section,
        report.retraining_section,
        loss.retraining_loss_section, report.published_comparison_section]


@pytest.mark.parametrize("first", ["report.loss", "report.seeds", "report.one_shot",
                                   "report.magnitude",
                                   "report.speed", "report.shared", "report"])
def test_any_section_module_can_be_imported_first(first):
    """Whichever report module a program imports first, the report gets every section, in
    the same order (no import side effects decide it)."""
    import subprocess
    import sys

    code = (f"import sparsebench.study.{first}\n"
            "from sparsebench.study import report\n"
            "print(' '.join(b.__name__ for b in report.SECTION_BUILDERS))")
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names[:8] == ["dense_section", "technique_section", "loss_section", "seed_section",
                         "one_shot_section", "retraining_section", "retraining_loss_section",
                         "published_comparison_section"]
    assert names[-3:] == ["inference_section", "sampling_section", "block_section"]
    assert len(names) == 18


def test_collapsed_frontier_points_sit_on_the_edge_of_an_axis_that_spans_the_sound_ones(
        tmp_path, monkeypatch):
    # Dense 88%. Random pruning's 98% run collapsed (its test loss says so), so the axis
    # spans the others: the lowest, 59, less 5% of the 29 up to the dense mean, 57.55, is the
    # edge the collapsed point sits on; the axis reaches 4% of 88 - 57.55 further (56.332) and
    # up to the dense 88 + 2% (89.76), rather than down to the collapsed 10%.
    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: drawn.append(fig) or Path(path))
    pts = [P.Point("magnitude", s, v, f"m{s}") for s, v in ((0.5, 0.87), (0.9, 0.83),
                                                           (0.98, 0.59))]
    pts += [P.Point("random", s, v, f"r{s}") for s, v in ((0.5, 0.875), (0.9, 0.84),
                                                         (0.98, 0.10))]
    figures.frontier_figure(P.frontiers(pts), pts, tmp_path / "f.png", metric_name="top1",
                            baseline=P.summarise([0.88]), collapsed={"r0.98"})
    top, bottom = drawn[0].axes
    assert top.get_ylim() == pytest.approx((56.332, 89.76))
    random_line = next(line for line in top.get_lines() if line.get_label() == "random pruning")
    assert list(random_line.get_ydata()) == pytest.approx([87.5, 84.0, 57.55])
    assert [t.get_text() for t in top.texts] == ["10"]
    assert "1 collapsed frontier point" in top.get_xlabel()
    assert "1 collapsed at the bottom edge" in bottom.get_title()
    assert bottom.get_ylim()[0] > 50


def test_a_run_collapsed_when_its_test_loss_is_off_the_scale():
    # Dense loss 0.4: over 5 x 0.4 = 2.0 is collapsed, and so is a loss that is no number.
    losses = {"a": 0.4, "b": 1.9, "c": 270.0, "d": float("nan"), "e": float("inf")}
    assert figures.collapsed_runs(losses, 0.4) == {"c", "d", "e"}
    # No dense loss: five times the lower median of the finite ones (1, 2, 30, 100 -> 2).
    assert figures.collapsed_runs({"a": 1.0, "b": 2.0, "c": 30.0, "d": 100.0},
                                  None) == {"c", "d"}
    assert figures.collapsed_runs({}, 0.4) == set()


def test_the_best_point_is_set_against_the_dense_baseline_in_the_metrics_direction():
    from sparsebench.study.report.frontiers import _against_baseline

    # Accuracy: 0.90 of a 0.92 dense mean keeps 97.8% of it.
    assert _against_baseline(0.90, 0.92, "top1", True) == "keeps 97.8% of the dense baseline"
    # Bits per character: 2.655 against 2.163 is 22.7% worse, said as "above", never "keeps".
    said = _against_baseline(2.655, 2.163, "bpc", False)
    assert said.startswith("is 22.7% above the dense baseline's 2.16")
    assert _against_baseline(2.0, 2.5, "bpc", False).startswith("is 20.0% below")
