"""The export and bench-inference subcommands on hand-built run directories."""

from __future__ import annotations

import json

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
