"""run.sparse_step: training on the kept weights gives the dense masked path's result (float64:
to rounding), counts its sparse steps as each technique's schedule says, hands back dense
weights and optimizer state, and refuses what it cannot do with one sentence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.inference.perf_model import Calibration, PerformanceModel
from sparsebench.schedules import GradualSchedule
from sparsebench.train.sparse_step import SparseTrainingStep, eligibility

STEPS = 40


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(),
                         nn.Linear(40, 10)).to(dtype)


def _train(method: str, mode: str, dtype=torch.float64, optimizer="adam", steps=STEPS,
           perf_model=None, **kwargs):
    """Trains the MLP on fixed random batches; returns (finalized model, controller,
    optimizer, sparsifier)."""
    model = _model(dtype)
    sp = sb.sparsify(model, method, **kwargs)
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3))
    sp.use_optimizer(opt)
    step = SparseTrainingStep(sp, opt, mode, perf_model=perf_model)
    step.resume(0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 32, generator=g, dtype=dtype)
        y = torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
    step.dense()
    return model, step, opt, sp


SCHEDULE = GradualSchedule(0, 20, 5)
DST = GradualSchedule(0, 30, 5)  # updates at 5, 10, ..., 30


# (technique, options, sparse steps worked out from its schedule)
CASES = [
    # "update": pruned weights train and may return until the last update (20): 21..40.
    ("magnitude", dict(schedule=SCHEDULE), STEPS - 20),
    ("magnitude", dict(schedule=SCHEDULE, pruned_weights="keep"), STEPS - 20),
    # "drop": pruned weights are zero for good; every step, the layout rebuilt per update.
    ("magnitude", dict(schedule=SCHEDULE, pruned_weights="drop"), STEPS),
    ("random", dict(), STEPS),  # no schedule: one mask from the start
    ("set", dict(schedule=DST), STEPS),
    # RigL's six updates rank growth by the dense gradient: those steps run sparse too, with
    # the full weight gradient computed and recorded for the update.
    ("rigl", dict(schedule=DST), STEPS),
]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("method, options, sparse_steps", CASES,
                         ids=[f"{c[0]}-{c[1].get('pruned_weights', '')}" for c in CASES])
def test_a_technique_trains_the_same_with_the_sparse_step(method, options, sparse_steps,
                                                          optimizer):
    _, _, _, sp_off = _train(method, "off", optimizer=optimizer, sparsity=0.8, **options)
    _, step, on_opt, sp = _train(method, "on", optimizer=optimizer, sparsity=0.8, **options)
    assert step.sparse_steps == sparse_steps
    # Handed back dense: the optimizer holds the model's own weights with full-shape state.
    trained = {id(p) for group in on_opt.param_groups for p in group["params"]}
    assert {id(layer.original) for layer in sp.layers} <= trained
    for layer in sp.layers:
        for key, value in on_opt.state[layer.original].items():
            if torch.is_tensor(value) and value.dim():
                assert value.shape == layer.shape, key
    # The weights the model computes with (pruned ones zero) agree to rounding.
    off, on = sp_off.finalize().state_dict(), sp.finalize().state_dict()
    for name, a in off.items():
        assert torch.allclose(a, on[name], rtol=0, atol=1e-12), name


def test_float32_on_the_compiled_kernels_stays_within_rounding():
    *_, sp_off = _train("magnitude", "off", dtype=torch.float32, sparsity=0.9)
    _, step, _, sp_on = _train("magnitude", "on", dtype=torch.float32, sparsity=0.9)
    assert step.sparse_steps == STEPS  # no schedule: one mask from the start
    off, on = sp_off.finalize().state_dict(), sp_on.finalize().state_dict()
    for name, a in off.items():
        assert (a - on[name]).abs().max() <= 1e-4 * a.abs().max(), name


def test_a_grown_connection_starts_at_zero_with_no_momentum():
    model = _model(torch.float64)
    sp = sb.sparsify(model, "set", sparsity=0.8, schedule=GradualSchedule(0, 10, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp.use_optimizer(opt)
    x, y = torch.randn(8, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    for _ in range(5):  # steps 1..5; 5 is an update
        before = {layer.name: layer.parametrization.mask.clone() for layer in sp.layers}
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
    grown_somewhere = False
    for layer in sp.layers:  # step 5 was an update
        grown = layer.parametrization.mask & ~before[layer.name]
        grown_somewhere |= bool(grown.any())
        state = opt.state[layer.original]
        assert (layer.original[grown] == 0).all()
        assert (state["exp_avg"][grown] == 0).all() and (state["exp_avg_sq"][grown] == 0).all()
        # ... while the weights kept through the update keep theirs.
        kept = layer.parametrization.mask & before[layer.name]
        assert (state["exp_avg_sq"][kept] > 0).any()
    assert grown_somewhere


def _calibration(out_f: int, in_f: int, rows: int, speedup: float) -> Calibration:
    return Calibration(out_f, in_f, rows, dense_s=1.0, densities=(0.05, 0.5, 1.0),
                       sparse_s=(1.0 / speedup,) * 3)


def test_auto_takes_the_layers_the_performance_model_predicts_faster(tmp_path):
    pm = PerformanceModel(tmp_path / "cache.json", densities=(0.05, 0.5, 1.0), persist=False,
                          thread_counts=(torch.get_num_threads(),))
    rows = 16
    # auto judges a layer by its forward product (out, in) alone: the transposed shapes,
    # which the compiled input gradient no longer runs, do not count.
    for out_f, in_f, speedup in [(48, 32, 3.0), (32, 48, 2.0),   # the first layer: fast
                                 (40, 48, 1.1), (48, 40, 3.0),   # the second: forward slow
                                 (10, 40, 1.0), (40, 10, 1.0)]:  # the last: never
        pm.record(_calibration(out_f, in_f, rows, speedup))
    _, step, *_ = _train("random", "auto", perf_model=pm, sparsity=0.8)
    assert [k.split(":")[0] for k, v in step.decisions.items() if v] == ["0.weight"]
    assert sorted(k.split(":")[0] for k in step.decisions) == ["0.weight", "2.weight",
                                                                "4.weight"]
    # The first step ran dense to see each layer's rows per call; the rest had one sparse.
    assert step.sparse_steps == STEPS - 1


def test_what_cannot_train_sparse_is_refused_in_one_sentence():
    model = _model(torch.float32)
    sp = sb.sparsify(model, "vd")
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="variational_dropout trains every weight at every "
                                         "step, so it has no sparse step; use off or auto"):
        SparseTrainingStep(sp, opt, "on")
    assert SparseTrainingStep(sp, opt, "auto").mode == "off"  # auto just stays dense
    with pytest.raises(ValueError, match="sparse_step must be one of"):
        SparseTrainingStep(sp, opt, "yes")

    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3))
    sp = sb.sparsify(convs, "magnitude", sparsity=0.5)
    with pytest.raises(ValueError, match="no sparsified layer can train sparse .0.weight: "
                                         "a 3x3 convolution .1x1 convolutions only"):
        SparseTrainingStep(sp, torch.optim.SGD(convs.parameters(), lr=0.1), "on")


def test_tied_and_foreign_forward_layers_stay_dense():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.hidden = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(self.hidden(self.embed(tokens)))

    model = Tied()
    sp = sb.sparsify(model, "magnitude", sparsity=0.5, include=["hidden", "out"])
    reasons = {layer.name: eligibility(layer) for layer in sp.layers}
    assert reasons["hidden.weight"] is None
    assert "tied" in reasons["embed.weight"]  # the embedding and the output projection


# ---- the Transformer's shared embedding: lookup and output projection ---------------------

def _transformer(dtype: torch.dtype):
    from sparsebench.models.transformer import Transformer, TransformerConfig
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=24,
                               n_encoder_layers=1, n_decoder_layers=1, dropout=0.0)
    return Transformer(config).to(dtype)


def _train_transformer(mode: str, steps: int = 12, technique: str = "random", **options):
    model = _transformer(torch.float64)
    sp = sb.sparsify(model, technique, sparsity=0.8, include=["*"], **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp.use_optimizer(opt)
    control = SparseTrainingStep(sp, opt, mode)
    control.resume(0)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        src = torch.randint(4, 50, (3, 7), generator=g)
        tgt = torch.randint(4, 50, (3, 6), generator=g)
        tgt[0, -2:] = 0  # padding: the pad row of the embedding gets no gradient
        opt.zero_grad(set_to_none=True)
        model.loss(src, tgt).backward()
        opt.step()
        sp.step()
    sparse_layers = control.sparse_layers
    control.dense()
    return model, sparse_layers


@pytest.mark.parametrize("technique, options", [
    ("random", {}),
    # Updates at steps 4 and 8: growth by the dense gradient of both uses of the embedding
    # (the lookup's and the projection's), recorded by the sparse step.
    ("rigl", {"schedule": GradualSchedule(0, 10, 4), "layer_sparsity": "uniform"}),
])
def test_the_shared_embedding_trains_sparse_in_both_uses_as_the_dense_path(technique, options):
    dense, _ = _train_transformer("off", technique=technique, **options)
    sparse, layers = _train_transformer("on", technique=technique, **options)
    assert "embed.weight" in layers and len(layers) == len(sb.sparsify(
        _transformer(torch.float64), "random", sparsity=0.8, include=["*"]).layers)
    # Compared as the model computes with them: pruned weights are zero in both (the dense
    # path's straight-through gradient moves the stored values behind a fixed mask, which
    # never come back).
    with torch.no_grad():
        for name, a in _effective(dense).items():
            torch.testing.assert_close(a, _effective(sparse)[name], rtol=0, atol=1e-10,
                                       msg=name)


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {}
    for name, value in state.items():
        if name.endswith(".original"):
            mask = state[name.replace(".original", ".0.mask")]
            out[name] = value * mask
        elif not name.endswith(".mask"):
            out[name] = value
    return out


def test_a_read_of_a_sparse_embedding_outside_its_uses_raises():
    class ReadsTheTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 6)

        def forward(self, tokens):  # a projection with no module of its own
            return nn.functional.linear(self.embed(tokens), self.embed.weight)

    model = ReadsTheTable()
    sp = sb.sparsify(model, "random", sparsity=0.5, include=["embed"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    control = SparseTrainingStep(sp, opt, "on")
    control.resume(0)
    with pytest.raises(RuntimeError, match="embed.weight was read while it trains sparse"):
        model(torch.tensor([[1, 2]]))
    control.dense()
    assert model(torch.tensor([[1, 2]])).shape == (1, 2, 12)  # dense again: reads are fine
    # auto has nothing to gain on a lookup alone, so it keeps it dense.
    auto = SparseTrainingStep(sp, opt, "auto")
    auto.resume(0)
    assert auto.sparse_layers == []


def test_an_embedding_read_by_an_unknown_projection_stays_dense():
    class OtherProjection(nn.Module):
        def __init__(self, source):
            super().__init__()
            object.__setattr__(self, "tied_weight_module", source)

        def forward(self, x):
            return x @ self.tied_weight_module.weight.T

    model = nn.Module()
    model.embed = nn.Embedding(12, 6)
    model.out = OtherProjection(model.embed)
    sp = sb.sparsify(model, "random", sparsity=0.5, include=["embed"])
    assert "read by a OtherProjection" in eligibility(sp.layers[0], model)
    assert "needs the model" in eligibility(sp.layers[0])



# ---- 1x1 convolutions: a Linear over pixels ---------------------------------------------

class _Bottleneck(nn.Module):
    """1x1 (stride 1), 3x3 (dense: not covered), 1x1 (stride 2), 1x1 projection with bias."""

    def __init__(self):
        super().__init__()
        self.reduce = nn.Conv2d(12, 8, 1, bias=False)
        self.spatial = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = torch.relu(self.reduce(x))
        x = torch.relu(self.spatial(x))
        x = torch.relu(self.down(x))
        return self.head(x).mean((2, 3))


def _train_convs(mode: str, technique: str, channels_last: bool, **options):
    torch.manual_seed(0)
    model = _Bottleneck().double()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sp = sb.sparsify(model, technique, sparsity=0.7, **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp.use_optimizer(opt)
    control = SparseTrainingStep(sp, opt, mode)
    control.resume(0)
    g = torch.Generator().manual_seed(4)
    for _ in range(12):
        x = torch.randn(3, 12, 7, 9, generator=g, dtype=torch.float64)  # odd sizes: stride 2
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 5, (3,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
    layers = control.sparse_layers
    control.dense()
    return model, layers, control


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("technique, options", [
    ("random", {}),
    ("rigl", {"schedule": GradualSchedule(0, 10, 4), "layer_sparsity": "uniform"}),
])
def test_1x1_convolutions_train_sparse_as_the_dense_path(technique, options, channels_last):
    dense, _, _ = _train_convs("off", technique, channels_last, **options)
    sparse, layers, control = _train_convs("on", technique, channels_last, **options)
    assert sorted(layers) == ["down.weight", "head.weight", "reduce.weight"]
    assert "3x3 convolution" in control.skipped["spatial.weight"]
    with torch.no_grad():
        for name, a in _effective(dense).items():
            torch.testing.assert_close(a, _effective(sparse)[name], rtol=0, atol=1e-10,
                                       msg=name)
