"""The public entry: selection, validation, state round trips and finalize."""

import copy
import io

import pytest
import torch
from torch import nn

import sparsebench as sb

METHODS = [("magnitude", {"sparsity": 0.8}), ("random", {"sparsity": 0.8}),
           ("vd", {}), ("l0", {})]


def _shapes(model):
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers()}
    return params, buffers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="prune_harder", sparsity=0.5), "Unknown sparsification method 'prune_harder'"),
        (dict(method="magnitude", sparsity=1.0), r"sparsity must lie in \[0, 1\), got 1.0"),
        (dict(method="magnitude", sparsity=-0.1), r"sparsity must lie in \[0, 1\), got -0.1"),
        (dict(method="magnitude"), "needs a target"),
        (dict(method="magnitude", sparsity=0.5, include="conv*"), "'conv\\*' matches no"),
        (dict(method="magnitude", sparsity=0.5, exclude=["nothing"]), "'nothing' matches no"),
        (dict(method="vd", sparsity=0.9), "variational_dropout takes no sparsity"),
        (dict(method="l0", schedule=sb.GradualSchedule(end_step=3)), "l0 takes no schedule"),
        (dict(method="vd", kl_wieght=1.0), r"Unknown hyperparameter\(s\) \['kl_wieght'\]"),
        (dict(method="vd", threshold=9.0), "threshold = 9.0 is invalid"),
        (dict(method="magnitude", sparsity=0.5, pruned_weights="maybe"), "pruned_weights"),
        (dict(method="magnitude", sparsity=0.5, layer_sparsity={"x": 0.1}), "'x' matches no"),
    ],
)
def test_bad_input_gets_one_clear_sentence(mlp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sb.sparsify(mlp, **kwargs)


def test_a_model_cannot_be_sparsified_twice(mlp):
    sb.sparsify(mlp, "magnitude", sparsity=0.5)
    with pytest.raises(ValueError, match="already parametrized"):
        sb.sparsify(mlp, "magnitude", sparsity=0.5)


def test_tied_weights_are_one_weight_and_half_a_tie_is_refused():
    # Two Linears holding one Parameter were refused before issue 23; now they are one weight.
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    layers = sb.select_layers(nn.Sequential(a, b))
    assert [(layer.name, [t[0] for t in layer.tied]) for layer in layers] == [("0.weight", ["1"])]
    with pytest.raises(ValueError, match="'0.weight' and '1.weight' are one tied Parameter"):
        sb.sparsify(nn.Sequential(a, b), "magnitude", sparsity=0.5, exclude="1")


def test_default_selection_and_patterns(tiny_resnet):
    names = [layer.name for layer in sb.select_layers(tiny_resnet)]
    assert names == ["conv1.weight", "block_a.0.weight", "block_a.3.weight", "down.weight",
                     "block_b.0.weight", "block_b.3.weight", "fc.weight"]
    assert [la.name for la in sb.select_layers(tiny_resnet, include="block_a*")] == [
        "block_a.0.weight", "block_a.3.weight"]
    assert "fc.weight" not in [la.name for la in sb.select_layers(tiny_resnet, exclude="fc")]


def test_torch_transformer_works_unchanged():
    model = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=32, dropout=0.0)
    params_before, buffers_before = _shapes(model)
    sp = sb.sparsify(model, "magnitude", sparsity=0.75)
    names = {layer.name for layer in sp.layers}
    assert "encoder.layers.0.self_attn.in_proj_weight" in names
    assert "decoder.layers.0.multihead_attn.out_proj.weight" in names
    assert len(names) == 10
    src, tgt = torch.randn(5, 2, 16), torch.randn(3, 2, 16)
    model(src, tgt).sum().backward()
    model.eval()
    sparse_out = model(src, tgt)
    sp.finalize()
    assert _shapes(model) == (params_before, buffers_before)
    assert torch.allclose(model(src, tgt), sparse_out, atol=1e-6)
    in_proj = model.encoder.layers[0].self_attn.in_proj_weight
    assert (in_proj == 0).sum().item() == int(0.75 * in_proj.numel() + 0.5)


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_finalize_restores_the_plain_model(tiny_resnet, method, kwargs):
    params_before, buffers_before = _shapes(tiny_resnet)
    fc_weight = tiny_resnet.fc.weight
    sp = sb.sparsify(tiny_resnet, method, **kwargs)
    x = torch.randn(2, 1, 8, 8)
    tiny_resnet(x).sum().backward()
    tiny_resnet.eval()
    expected = tiny_resnet(x)
    achieved = sp.sparsity()
    plain = sp.finalize()
    assert plain is tiny_resnet and type(plain.fc) is nn.Linear
    assert "forward" not in vars(plain.fc)
    assert plain.fc.weight is fc_weight  # the same Parameter: an optimizer still holds it
    assert _shapes(plain) == (params_before, buffers_before)
    assert torch.allclose(plain(x), expected, atol=1e-5)
    report = sb.sparsity_report(plain)
    assert report.sparsity == pytest.approx(achieved, abs=1e-6)
    with pytest.raises(RuntimeError, match="finalized"):
        sp.step()


def _train(model, sp, opt, steps, seed):
    torch.manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(8, 20)).pow(2).mean() + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()


def _make(method, kwargs):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    schedule = sb.GradualSchedule(begin_step=1, end_step=8, frequency=2) if "sparsity" in kwargs \
        else None
    extra = {"schedule": schedule} if schedule else {"warmup_end": 6}
    sp = sb.sparsify(model, method, **kwargs, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, sp, opt


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_state_dict_round_trip_resumes_bit_identically(tmp_path, method, kwargs):
    model, sp, opt = _make(method, kwargs)
    _train(model, sp, opt, 5, seed=10)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    sp.save(tmp_path / "sparsifier.safetensors")
    rng = torch.get_rng_state()
    _train(model, sp, opt, 6, seed=11)
    reference = [p.detach().clone() for p in model.parameters()]

    resumed, sp2, opt2 = _make(method, kwargs)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sp2.load(tmp_path / "sparsifier.safetensors")
    assert sp2.current_step == 5
    torch.set_rng_state(rng)
    _train(resumed, sp2, opt2, 6, seed=11)
    for a, b in zip(reference, resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sp.masks().keys() == sp2.masks().keys()


def test_sparsifier_state_mismatch_is_reported(mlp):
    sp = sb.sparsify(mlp, "magnitude", sparsity=0.5)
    state = sp.state_dict()
    del state["0.weight.mask"]
    with pytest.raises(ValueError, match="missing"):
        sp.load_state_dict(state)


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_deepcopy_and_state_dict_through_torch_save(method, kwargs):
    model, sp, _ = _make(method, kwargs)
    model.eval()
    x = torch.randn(3, 20)
    copied = copy.deepcopy(model)
    assert torch.equal(copied(x), model(x))
    copied.train()
    copied(x).sum().backward()  # the copy trains on its own parameters
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other, _, _ = _make(method, kwargs)
    other.load_state_dict(torch.load(buffer))
    other.eval()
    assert torch.equal(other(x), model(x))


def test_masks_save_and_load_as_safetensors(tmp_path, mlp):
    sp = sb.sparsify(mlp, "magnitude", sparsity=0.7)
    sp.save_masks(tmp_path / "mask.safetensors")
    loaded = sb.load_masks(tmp_path / "mask.safetensors")
    assert loaded.keys() == sp.masks().keys()
    for name, mask in sp.masks().items():
        assert loaded[name].dtype == torch.bool and torch.equal(loaded[name], mask)


class _TinyLM(nn.Module):
    """Embedding -> Linear -> the embedding's transpose (tied), as the study's Transformer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, tokens):
        return nn.functional.linear(torch.tanh(self.mix(self.emb(tokens))), self.emb.weight)


def test_embeddings_are_sparsified_only_when_named():
    model = _TinyLM()
    assert [la.name for la in sb.select_layers(model)] == ["mix.weight"]
    assert [la.name for la in sb.select_layers(model, include="*")] == ["emb.weight", "mix.weight"]
    assert [la.name for la in sb.select_layers(model, include="emb")] == ["emb.weight"]
    with pytest.raises(ValueError, match="only sparsifiable weights are embeddings"):
        sb.select_layers(nn.Sequential(nn.Embedding(5, 3)))


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_a_tied_embedding_is_sparse_in_both_uses(method, kwargs):
    torch.manual_seed(0)
    model = _TinyLM()
    extra = {} if "sparsity" in kwargs else {"warmup_end": 2}
    sp = sb.sparsify(model, method, include="*", **kwargs, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tokens = torch.randint(0, 50, (4, 6))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 50), tokens.reshape(-1))
        opt.zero_grad()
        (loss + sp.penalty()).backward()
        opt.step()
        sp.step()
    # The technique's own parameters of the embedding got gradients (VD's log sigma^2, L0's
    # log alpha); pruning methods have none.
    own = [p for n, p in model.named_parameters() if "emb.parametrizations" in n
           and not n.endswith("original")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    model.eval()
    mask = sp.masks()["emb.weight"]
    expected = model(tokens)
    plain = sp.finalize()
    weight = plain.emb.weight
    assert torch.equal(weight != 0, mask)  # zeros exactly where the mask drops weights
    if method in ("magnitude", "random"):
        assert int((~mask).sum()) == round(0.8 * weight.numel())
    # Both uses read the one sparse matrix: the lookup returns its rows, the projection its
    # transpose, and the finalized model computes what the sparsified one did.
    assert torch.equal(plain.emb(tokens), weight[tokens])
    assert torch.allclose(plain(tokens), expected, atol=1e-5)


def test_a_typed_config_is_the_same_as_its_keywords():
    from sparsebench.methods import MagnitudeConfig, VariationalDropoutConfig

    def masks(method, **kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        sp = sb.sparsify(model, method, **kwargs)
        return sp, [m.clone() for m in sp.masks().values()]

    sp_typed, typed = masks(MagnitudeConfig(pruned_weights="drop"), sparsity=0.5)
    sp_kw, keywords = masks("magnitude", sparsity=0.5, pruned_weights="drop")
    assert sp_typed.method == sp_kw.method == "magnitude"
    assert sp_typed.technique.config == sp_kw.technique.config
    assert all(torch.equal(a, b) for a, b in zip(typed, keywords, strict=True))
    vd, _ = masks(VariationalDropoutConfig(kl_weight=1e-4))
    assert vd.method == "variational_dropout" and vd.technique.config.kl_weight == 1e-4
    with pytest.raises(ValueError, match="either as a Config or as keywords"):
        sb.sparsify(nn.Linear(2, 2), MagnitudeConfig(), sparsity=0.5, pruned_weights="keep")
