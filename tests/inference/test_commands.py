"""The export and bench-inference subcommands on hand-built run directories."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from sparsebench import cli, models
from sparsebench.inference import PerformanceModel, SparseConv2d, SparseLinear, load_sparse
from sparsebench.inference.bench import workload_for


def _run_dir(tmp_path, name: str, options: dict, sparsity: float = 0.9):
    torch.manual_seed(0)
    model = models.create(name, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # one-shot magnitude pruning of every weight matrix
                k = int(sparsity * p.numel())
                p[p.abs() <= p.abs().flatten().kthvalue(max(k, 1)).values] = 0
    run = tmp_path / name
    run.mkdir()
    save_file(model.state_dict(), str(run / "model.safetensors"))
    result = {"status": "finished", "config": {"model": {"name": name, "options": options}}}
    (run / "result.json").write_text(json.dumps(result))
    return run, model.eval()


@pytest.fixture(autouse=True)
def _private_calibrations(tmp_path, monkeypatch):
    """Keep the tests' quick, rough calibrations out of this machine's calibration cache."""
    path = tmp_path / "calibration.json"
    monkeypatch.setattr(PerformanceModel, "default_cache_path", classmethod(lambda cls: path))


def test_export_writes_a_smaller_file_that_loads(tmp_path, capsys):
    run, model = _run_dir(tmp_path, "lenet5", {})
    out = tmp_path / "m.safetensors"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MB on disk vs" in printed and "smaller" in printed
    loaded = load_sparse(out)  # no skeleton: the file names the registry model
    assert isinstance(loaded.conv2, SparseConv2d) and isinstance(loaded.fc1, SparseLinear)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert ((loaded(x) - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_bench_inference_prints_ratios_and_layers(tmp_path, capsys):
    run, _ = _run_dir(tmp_path, "lenet300", {})
    argv = ["bench-inference", str(run), "--batch", "1", "3", "--repeats", "3"]
    assert cli.main([*argv, "--calibration-s", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "dense/sparse" in printed and "per layer at batch 3" in printed
    assert "fc1" in printed and "loadavg" in printed
    # Every ratio, end to end and per layer, comes with its range: "1.23x [1.10-1.40]".
    rows = ("    1 |", "    3 |", "  fc")
    ratios = [line for line in printed.splitlines() if line.startswith(rows)]
    assert len(ratios) == 2 + 2 * 3 and all(re.search(r"\d+\.\d\dx \[\d", r) for r in ratios)


@pytest.mark.slow
def test_bench_inference_transformer_decodes(tmp_path, capsys):
    options = {
        "vocab_size": 64,
        "d_model": 16,
        "n_heads": 2,
        "d_ff": 32,
        "n_encoder_layers": 1,
        "n_decoder_layers": 1,
    }
    run, model = _run_dir(tmp_path, "transformer-tiny", options)
    work = workload_for(model, options, src_len=6, max_len=4)
    assert "greedy decoding" in work.describe and work.batch_hint(2) == [2, 12]
    argv = ["bench-inference", str(run), "--batch", "2", "--repeats", "2", "--no-layers"]
    assert cli.main([*argv, "--src-len", "6", "--max-len", "4", "--calibration-s", "0.01"]) == 0
    assert "greedy decoding" in capsys.readouterr().out


def test_bad_run_dir_and_arguments(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not a directory" in capsys.readouterr().err
    run, _ = _run_dir(tmp_path, "lenet300", {})
    assert cli.main(["bench-inference", str(run), "--batch", "0"]) == 2
    assert "--batch must be positive" in capsys.readouterr().err


def _fake_rounds(monkeypatch, per_batch: list[tuple[list[float], list[float]]]) -> None:
    """Make bench-inference's end-to-end rounds return these (dense, sparse) milliseconds, one
    pair per batch in order, instead of timing the models."""
    from sparsebench.inference import bench

    queue = iter(per_batch)

    def rounds(candidates, **_kwargs):
        dense, sparse = next(queue)
        return {"dense": [v / 1e3 for v in dense], "sparse": [v / 1e3 for v in sparse]}

    monkeypatch.setattr(bench, "interleaved_rounds", rounds)


def _machine(monkeypatch, cores: int, load: float) -> None:
    from sparsebench.inference import timing

    monkeypatch.setattr(timing, "available_cores", lambda: cores)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (load, load, load))


def _row(printed: str, batch: int) -> list[str]:
    """Return the cells of the table row of ``batch``: dense ms and spread, sparse ms and
    spread, ratio and quartiles."""
    line = next(line for line in printed.splitlines() if line.startswith(f"{batch:5d} |"))
    return [" ".join(cell.split()) for cell in line.split("|")[1:4]]


def test_bench_inference_on_a_loaded_machine_warns_and_uses_one_thread(tmp_path, capsys,
                                                                       monkeypatch):
    run, _ = _run_dir(tmp_path, "lenet300", {})
    _machine(monkeypatch, cores=2, load=5.0)  # issue 22: load average 5 on 2 cores
    _fake_rounds(monkeypatch, [
        # batch 1: dense sorted .10 .11 .12 .30 .50 -> median .12, quartiles .11-.30 (158%);
        # sparse all .10; ratio .12/.10 = 1.20, ranging from .11/.10 = 1.10 to .30/.10 = 3.00.
        ([0.10, 0.30, 0.11, 0.12, 0.50], [0.10] * 5),
        # batch 16: dense sorted .21 35.1 35.7 38.0 40.2 -> median 35.7, quartiles 35.1-38.0
        # (8%); sparse sorted .24 .25 .25 .26 .27 -> .25, .25-.26 (4%); 35.7/.25 = 142.80,
        # ranging from 35.1/.26 = 135.00 to 38.0/.25 = 152.00.
        ([35.7, 0.21, 38.0, 35.1, 40.2], [0.26, 0.25, 0.24, 0.27, 0.25]),
    ])
    before = torch.get_num_threads()
    argv = ["bench-inference", str(run), "--batch", "1", "16", "--repeats", "5", "--no-layers"]
    assert cli.main([*argv, "--calibration-s", "0.01"]) == 0
    assert torch.get_num_threads() == before  # the command gives torch its threads back
    printed = capsys.readouterr().out
    assert ("threads: 1 (chosen: never more than the idle cores, at least 1; 2 cores, load "
            "average 5.00 leaves 0 idle; pass --threads N to choose)") in printed
    assert _row(printed, 1) == ["0.120 158%", "0.100 0%", "1.20x [1.10-3.00] !"]
    assert _row(printed, 16) == ["35.700 8%", "0.250 4%", "142.80x [135.00-152.00]"]
    warnings = [line for line in printed.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "batch 1: dense rounds spread 158.3% of their median" in warnings[0]
    assert "batch 16" not in warnings[0]  # its rounds agree; the load is what is wrong there
    assert "other jobs' load average 5.00 on 2 cores leaves 0 idle for 1 thread(s)" in warnings[0]


def test_bench_inference_on_a_quiet_machine_uses_the_idle_cores_and_does_not_warn(
        tmp_path, capsys, monkeypatch):
    run, _ = _run_dir(tmp_path, "lenet300", {})
    _machine(monkeypatch, cores=2, load=0.0)
    # dense sorted .98 .99 1.00 1.01 1.02 -> 1.00, quartiles .99-1.01 (2%); sparse all .50;
    # 1.00/.50 = 2.00, ranging from .99/.50 = 1.98 to 1.01/.50 = 2.02.
    _fake_rounds(monkeypatch, [([1.00, 1.02, 0.98, 1.01, 0.99], [0.50] * 5)])
    argv = ["bench-inference", str(run), "--batch", "4", "--repeats", "5", "--no-layers"]
    assert cli.main([*argv, "--calibration-s", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "threads: 2 (chosen" in printed and "load average 0.00 leaves 2 idle" in printed
    assert _row(printed, 4) == ["1.000 2%", "0.500 0%", "2.00x [1.98-2.02]"]
    assert "WARNING" not in printed


def test_bench_inference_keeps_requested_threads_and_says_they_exceed_idle_cores(
        tmp_path, capsys, monkeypatch):
    run, _ = _run_dir(tmp_path, "lenet300", {})
    _machine(monkeypatch, cores=2, load=1.0)
    _fake_rounds(monkeypatch, [([1.00, 1.02, 0.98, 1.01, 0.99], [0.50] * 5)])
    argv = ["bench-inference", str(run), "--batch", "4", "--repeats", "5", "--no-layers"]
    assert cli.main([*argv, "--threads", "2", "--calibration-s", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "threads: 2 (as requested; 2 cores, load average 1.00 leaves 1 idle)" in printed
    warning = next(line for line in printed.splitlines() if line.startswith("WARNING"))
    assert warning.endswith(
        "other jobs' load average 1.00 on 2 cores leaves 1 idle for 2 thread(s). Rerun on a "
        "quiet machine or with fewer --threads.")
