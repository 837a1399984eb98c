"""The end-to-end benchmark of issue 26 (benchmarks/end_to_end.py) runs in quick mode: tiny
transformers configs, pruned, compiled, checked against dense torch and timed side by side,
with the engines this environment has (ONNX Runtime and DeepSparse live in .venv-bench)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "end_to_end.py"
#: A ratio cell as timing.Comparison.cell prints it: median ratio and its quartile range.
RATIO = re.compile(r"\d+\.\d\dx \[\d+\.\d\d-\d+\.\d\d\]")


def _harness():
    spec = importlib.util.spec_from_file_location("end_to_end_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def test_quick_mode_checks_outputs_and_prints_ratios_with_spread(tmp_path, capsys):
    harness = _harness()
    engines = ["torch", "sparse"]
    engines += [k for k, m in (("ort", "onnxruntime"), ("deepsparse", "deepsparse"))
                if _available(m)]
    cells = harness.main(["--quick", "--models", "bert", "resnet50", "gpt2-decode",
                          "--threads", "1", "--batches", "1", "2", "--rounds", "3",
                          "--budget", "2", "--engines", *engines, "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert len(cells) == 6
    for cell in cells:
        assert set(cell.comparisons) == set(engines) - {"torch"}
        assert all(d <= harness.TOLERANCE for d in cell.differences.values()), cell.differences
    assert "outputs: all within 1e-4 of dense torch" in out
    summary = out[out.index("summary:"):]
    rows = [line for line in summary.splitlines() if line.startswith(("bert", "resnet50", "gpt2"))]
    assert len(rows) == 6
    assert all(RATIO.search(row) for row in rows), rows
    assert "loadavg(1/5/15m)=" in out  # the load is stated


def test_bad_options_get_one_sentence(capsys):
    harness = _harness()
    with pytest.raises(SystemExit):
        harness.parse(["--sparsity", "1.5"])
    assert "sparsity must be in [0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="engines must include 'torch'"):
        harness.Options(engines=("sparse",))


def test_each_cell_plans_at_its_own_thread_count(tmp_path, monkeypatch):
    """A one-thread cell's layers are judged at one thread, as a user compiling on one thread
    would have them, even when the process runs torch on two; a two-thread cell at two and
    one (PerformanceModel's default for a process of two threads)."""
    import torch

    harness = _harness()
    judged = []
    original = harness.PerformanceModel

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            judged.append(self.thread_counts)

    monkeypatch.setattr(harness, "PerformanceModel", Recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        harness.main(["--quick", "--models", "bert", "--threads", "1", "2", "--batches", "1",
                      "--rounds", "3", "--budget", "1", "--engines", "torch", "sparse",
                      "--out-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(before)
    assert judged == [(1,), (2, 1)]
