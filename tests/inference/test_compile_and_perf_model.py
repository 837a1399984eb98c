"""compile_sparse keeps outputs and follows the performance model; the model's arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparsebench.inference import (
    Calibration,
    PerformanceModel,
    SparseLinear,
    compile_sparse,
    plan_sparse,
)

DENS = (0.1, 0.5, 1.0)


def _mlp(densities=(0.05, 0.05, 1.0)) -> nn.Sequential:
    m = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.GELU(), nn.Linear(20, 5))
    with torch.no_grad():
        for layer, d in zip(m[::2], densities, strict=True):
            layer.weight.mul_(torch.rand_like(layer.weight) < d)
    return m


def _fake_model(tmp_path, shapes, batches=(1, 16)) -> PerformanceModel:
    """A model whose 'measurements' say: sparse time = 10 us * density, dense = 5 us."""
    pm = PerformanceModel(tmp_path / "cal.json", densities=DENS)
    for out_f, in_f in shapes:
        for b in batches:
            pm.record(Calibration(out_f, in_f, b, 5e-6, DENS, tuple(1e-5 * d for d in DENS)))
    return pm


def test_calibration_arithmetic():
    cal = Calibration(8, 8, 1, 5e-6, DENS, (1e-6, 5e-6, 10e-6))
    assert cal.sparse_time(0.3) == pytest.approx(3e-6)
    assert cal.speedup(0.5) == pytest.approx(1.0)
    assert cal.break_even_density() == pytest.approx(0.5, abs=1e-6)
    assert cal.break_even_density(min_speedup=2.0) == pytest.approx(0.25, abs=1e-6)
    fast = Calibration(8, 8, 1, 1.0, DENS, (1e-6, 2e-6, 3e-6))
    assert fast.break_even_density() == 1.0


def test_plan_follows_model_and_compile_keeps_outputs(tmp_path):
    model = _mlp()
    pm = _fake_model(tmp_path, [(40, 30), (20, 40), (5, 20)])
    plan = plan_sparse(model, batch_hint=[1, 16], perf_model=pm)
    assert [d.use_sparse for d in plan] == [True, True, False]
    # sparse 10 us * density against dense 5 us wins by the default margin below 0.5 / 1.3
    assert plan[0].break_even_density == pytest.approx(0.5 / 1.3, abs=1e-3)
    compiled = compile_sparse(model, plan=plan)
    assert isinstance(compiled[0], SparseLinear) and isinstance(compiled[2], SparseLinear)
    assert type(compiled[4]) is nn.Linear and type(model[0]) is nn.Linear  # input untouched
    x = torch.randn(16, 30)
    with torch.no_grad():
        ref, got = model(x), compiled(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_calibration_is_cached_as_json(tmp_path):
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0), budget_s=0.01)
    cal = pm.calibrate(12, 10, 2)
    assert cal.dense_s > 0 and len(cal.sparse_s) == 2
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["machine"]["threads"] == str(torch.get_num_threads())
    again = PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0))
    assert again.calibrate(12, 10, 2) == cal  # read back, not re-measured


def test_a_kernel_change_gets_its_own_calibration_file(monkeypatch):
    """Timings of one kernel build must not decide for another: the default calibration file
    is keyed by the kernel source as well as the machine."""
    from sparsebench.inference import _extension

    before = PerformanceModel.default_cache_path()
    assert PerformanceModel.machine_key()["kernel_source"] == _extension.kernel_version()
    monkeypatch.setattr(_extension, "kernel_version", lambda: "another-build")
    assert PerformanceModel.default_cache_path() != before


def test_busy_calibration_is_measured_again_on_a_quiet_machine(tmp_path, monkeypatch):
    from sparsebench.inference import perf_model

    load = {"now": 2.0}  # per core: a neighbour keeps the machine busy
    monkeypatch.setattr(perf_model, "load_per_core", lambda: load["now"])
    busy = PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0), budget_s=0.01)
    first = busy.calibrate(12, 10, 2)
    assert first.load_per_core == 2.0
    # Still busy: the cached calibration is used as it is.
    assert PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0)).calibrate(12, 10, 2) \
        == first
    load["now"] = 0.1  # quiet now: measured again, and the new one replaces it in the cache
    quiet = PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0), budget_s=0.01)
    second = quiet.calibrate(12, 10, 2)
    assert second.load_per_core == 0.1 and second != first
    assert quiet.calibrate(12, 10, 2) is second
    cached = json.loads((tmp_path / "c.json").read_text())["calibrations"]
    assert [c["load_per_core"] for c in cached.values()] == [0.1]
    # recalibrate=True measures again once per model even when the cache looks fine.
    again = PerformanceModel(tmp_path / "c.json", densities=(0.1, 1.0), budget_s=0.01,
                             recalibrate=True)
    third = again.calibrate(12, 10, 2)
    assert third is not second and again.calibrate(12, 10, 2) is third


def test_real_calibration_end_to_end(tmp_path):
    model = _mlp()
    pm = PerformanceModel(tmp_path / "c.json", densities=(0.05, 0.5, 1.0), budget_s=0.01)
    compiled = compile_sparse(model, batch_hint=4, perf_model=pm)
    x = torch.randn(4, 30)
    with torch.no_grad():
        ref, got = model(x), compiled(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="batch_hint"):
        plan_sparse(_mlp(), batch_hint=0, perf_model=_fake_model(tmp_path, []))
    with pytest.raises(ValueError, match="min_speedup"):
        plan_sparse(_mlp(), min_speedup=0)
    with pytest.raises(ValueError, match="densities"):
        PerformanceModel(tmp_path / "x.json", densities=(0.0,))


def test_compile_runs_a_tied_output_projection_sparse(tmp_path):
    """A Transformer's output layer multiplies by its (pruned) shared embedding: the compile
    step sees it as a Linear without bias and runs it sparse, with the same outputs."""
    from sparsebench.models import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32,
                                          n_encoder_layers=1, n_decoder_layers=1)).eval()
    with torch.no_grad():
        model.embed.weight.mul_(torch.rand_like(model.embed.weight) < 0.1)
    shapes = {(m.out_features, m.in_features) for m in model.modules()
              if isinstance(m, nn.Linear)} | {(40, 16)}
    fast = compile_sparse(model, perf_model=_fake_model(tmp_path, shapes))
    assert isinstance(fast.output_projection, SparseLinear)
    assert fast.output_projection.bias is None
    assert not any(isinstance(m, SparseLinear) for name, m in fast.named_modules()
                   if name != "output_projection")  # dense Linears stay dense
    src, tgt = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 5))
    with torch.no_grad():
        assert torch.allclose(fast(src, tgt), model(src, tgt), atol=1e-5)
        assert torch.equal(fast.greedy_decode(src, max_len=6), model.greedy_decode(src, max_len=6))


def test_without_a_hint_each_layer_is_judged_at_the_rows_it_sees_in_the_example(tmp_path):
    # Measured only where the planner should look: 3 x 4 = 12 rows reach every Linear of
    # an input (3, 4, 30); sparse (10 us x density) beats dense (5 us) at 12 rows, loses at 1.
    pm = PerformanceModel(tmp_path / "cal.json", densities=DENS)
    for out_f, in_f in [(40, 30), (20, 40), (5, 20)]:
        pm.record(Calibration(out_f, in_f, 12, 5e-6, DENS, tuple(1e-5 * d for d in DENS)))
        pm.record(Calibration(out_f, in_f, 1, 5e-6, DENS, tuple(1e-3 * d for d in DENS)))
    model = _mlp()
    plan = plan_sparse(model, perf_model=pm, example_input=torch.randn(3, 4, 30))
    assert [set(d.predicted_speedup) for d in plan] == [{12}, {12}, {12}]
    assert [d.use_sparse for d in plan] == [True, True, False]
    # No example and no hint: one row, where this model says dense wins everywhere.
    assert not any(d.use_sparse for d in plan_sparse(model, perf_model=pm))
    # An explicit hint still overrides the example.
    assert {1} == set(plan_sparse(model, batch_hint=1, perf_model=pm,
                                  example_input=torch.randn(3, 4, 30))[0].predicted_speedup)


def test_weights_streamed_from_memory_floor_both_sides(tmp_path, monkeypatch):
    """A model whose weights outgrow the cache reads each layer's weight from memory: the plan
    floors both predicted times at bytes / bandwidth (numbers worked by hand)."""
    from sparsebench.inference import compile as compile_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Linear(40, 40))
    with torch.no_grad():
        for layer in model:
            flat = layer.weight.view(-1)
            flat[torch.randperm(flat.numel())[: int(0.55 * flat.numel())]] = 0.0  # 45% kept
    pm = _fake_model(tmp_path, [(40, 30), (40, 40)], batches=(1,))
    # Warm, as calibrated: dense 5 us, sparse 10 us x 0.45 = 4.5 us: 1.11x, below 1.3.
    assert [d.use_sparse for d in plan_sparse(model, batch_hint=1, perf_model=pm)] == [False] * 2
    # 4,800 + 6,400 bytes of weights outgrow a 6,400-byte cache; read at 100 MB/s, the
    # 40x40 dense weight takes 64 us, and its CSR copy (41 row pointers of 4 bytes, 720
    # nonzeros of 4 + 2 bytes) 4,484 bytes, 44.8 us: 1.43x. The 40x30 one too: 48 us
    # against (41 * 4 + 540 * 6) / 1e8 = 34.0 us, 1.41x.
    monkeypatch.setattr(compile_module, "last_level_cache_bytes", lambda: 6400)
    monkeypatch.setattr(compile_module, "stream_bandwidth", lambda: 1e8)
    plan = plan_sparse(model, batch_hint=1, perf_model=pm)
    assert [d.use_sparse for d in plan] == [True, True]
    assert plan[1].predicted_speedup[1] == pytest.approx(64e-6 / 44.84e-6, rel=1e-3)
    assert plan[0].predicted_speedup[1] == pytest.approx(48e-6 / 34.04e-6, rel=1e-3)
    assert "weights streamed from memory" in plan[0].reason
    # A weight larger than the cache streamed in its own calibration: taken as measured.
    monkeypatch.setattr(compile_module, "last_level_cache_bytes", lambda: 5000)
    plan = plan_sparse(model, batch_hint=1, perf_model=pm)
    assert [d.use_sparse for d in plan] == [True, False]
