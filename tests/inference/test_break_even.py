"""A compiled layer is never slower than dense, at any sparsity, on a loaded machine (issue 23):
the calibration is taken first, then a competing process loads a core, and each compiled layer
is timed side by side with its dense original."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparsebench.inference import PerformanceModel, SparseLinear, compile_sparse
from sparsebench.inference.timing import Comparison, interleaved_rounds

#: A compiled layer may be this much slower than dense and still pass: the goal of issue 23.
FLOOR = 0.95


def _pruned_linear(in_f: int, out_f: int, sparsity: float) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        scores = layer.weight.abs().flatten()
        zeros = round(sparsity * scores.numel())
        if zeros:
            layer.weight.view(-1)[scores.argsort()[:zeros]] = 0.0
    return layer.eval()


def test_every_sparsity_compiles_to_a_layer_no_slower_than_dense(tmp_path):
    in_f, out_f, batch = 1024, 4096, 1  # the case of issue 23: 0.76x dense at 50%
    # Two threads where there are two cores: the competitor then takes one of the cores the
    # layer was calibrated with (session 11 saw 0.84x dense at 30% here before the model
    # judged layers at one thread as well).
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    perf_model = PerformanceModel(tmp_path / "cal.json", budget_s=0.5)
    perf_model.calibrations(out_f, in_f, batch)  # quiet (as quiet as this machine is)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        x = torch.randn(batch, in_f)
        for sparsity in (0.0, 0.3, 0.5, 0.7, 0.9):
            dense = _pruned_linear(in_f, out_f, sparsity)
            compiled = compile_sparse(dense, batch_hint=batch, perf_model=perf_model)
            if not isinstance(compiled, SparseLinear):
                assert type(compiled) is nn.Linear  # stays the dense layer itself
                continue
            pair = {"dense": lambda d=dense: d(x), "compiled": lambda c=compiled: c(x)}
            for repeats in (31, 61):  # a second, longer look before calling it slower
                rounds = interleaved_rounds(pair, repeats=repeats)
                ratio = Comparison.of(rounds["dense"], rounds["compiled"])
                # Slower than FLOOR x dense even at the favourable end of the two sides'
                # quartiles, so that noise alone does not count.
                if ratio.high >= FLOOR:
                    break
            assert ratio.high >= FLOOR, (sparsity, ratio.cell())
    finally:
        competitor.kill()
        competitor.wait()
        torch.set_num_threads(threads)


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_near_or_below_break_even_the_layer_stays_dense(tmp_path, sparsity):
    """With the performance model's made-up times (sparse 10 us x density, dense 5 us) the
    break-even at the default margin is 0.5 / 1.3 = 38% density: 70% and 100% stay dense."""
    from sparsebench.inference.perf_model import Calibration

    densities = (0.1, 0.5, 1.0)
    perf_model = PerformanceModel(tmp_path / "cal.json", densities=densities)
    perf_model.record(Calibration(32, 16, 1, 5e-6, densities, tuple(1e-5 * d for d in densities)))
    compiled = compile_sparse(_pruned_linear(16, 32, sparsity), perf_model=perf_model)
    assert type(compiled) is nn.Linear
    assert isinstance(compile_sparse(_pruned_linear(16, 32, 0.7), perf_model=perf_model),
                      SparseLinear)


def test_a_calibration_counts_sparse_at_its_median_and_dense_at_its_20th_percentile():
    """Rounds worked by hand: dense [10, 10, 11, 30, 40] -> 20th percentile (index round(0.8)
    = 1) 10; sparse [7, 8, 9, 20, 25] -> median 9. On these noisy rounds the layer is 1.11x,
    not the 1.43x its own 20th percentile (7) would claim."""
    from sparsebench.inference.perf_model import calibration_times

    dense, sparse = calibration_times([40, 10, 30, 11, 10], [[25, 7, 20, 9, 8], [5, 5, 5, 5, 5]])
    assert dense == 10 and sparse == (9, 5)
