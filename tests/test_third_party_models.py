"""Models nobody here wrote (transformers architectures, random weights, no download), through
every technique: tied weights stay one weight, GPT-2's Conv1D layers are sparsified, the model
evaluated in training equals the finalized one, and save/load and compile keep it."""

from __future__ import annotations

import warnings

import pytest
import torch

import sparsebench as sb
from sparsebench.inference import PerformanceModel, SparseLinear, compile_sparse
from sparsebench.inference.perf_model import Calibration

transformers = pytest.importorskip("transformers")

VOCAB = 96
METHODS = [
    ("magnitude", {"sparsity": 0.7}),
    ("random", {"sparsity": 0.7}),
    # Weights large enough that some log alpha / gates cross in a few steps are not needed:
    # equality of the evaluated and the finalized model must hold at any sparsity.
    ("variational_dropout", {"kl_weight": 1e-3}),
    ("l0", {"l0_weight": 1e-3}),
]


def _gpt2():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), ("transformer.wte", "lm_head")


def _bart():
    config = transformers.BartConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        decoder_start_token_id=2, forced_eos_token_id=None)
    return (transformers.BartForConditionalGeneration(config),
            ("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens",
             "lm_head"))


MODELS = {"gpt2": _gpt2, "bart": _bart}


def _tied_weights(model, names):
    return [model.get_submodule(name).weight for name in names]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method, kwargs", METHODS)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_third_party_model_through_a_technique(arch, method, kwargs, tmp_path):
    torch.manual_seed(0)
    model, tied = MODELS[arch]()
    ids = torch.randint(3, VOCAB, (4, 12))
    sp = sb.sparsify(model, method, **kwargs)
    # The tie is one weight, listed once, under its first holder, with every other holder.
    names = [layer.name for layer in sp.layers]
    assert f"{tied[0]}.weight" in names
    assert not any(f"{name}.weight" in names for name in tied[1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss + sp.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sp.step()
    model.eval()
    evaluated = _logits(model, ids)
    masks = sp.masks()
    model = sp.finalize()
    # The finalized model is the one that was evaluated, to float rounding.
    torch.testing.assert_close(_logits(model, ids), evaluated, rtol=1e-5, atol=1e-5)
    weights = _tied_weights(model, tied)
    assert all(w is weights[0] for w in weights)  # still one Parameter
    mask = masks[f"{tied[0]}.weight"]
    assert torch.equal(weights[0] != 0, mask & (weights[0] != 0))
    if method in ("magnitude", "random"):  # exact per-layer counts (uniform distribution)
        assert int((~mask).sum()) == round(0.7 * mask.numel())

    # save_pretrained / from_pretrained keep the tie and the zeros.
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = type(model).from_pretrained(tmp_path).eval()
    again = _tied_weights(loaded, tied)
    assert all(w is again[0] for w in again)
    assert torch.equal(again[0], weights[0])
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    if method == "magnitude":  # compiled: every pruned matrix, tied output included, sparse
        fast = compile_sparse(model, batch_hint=48, perf_model=_everything_sparse(model, tmp_path))
        assert isinstance(fast.lm_head, SparseLinear)
        torch.testing.assert_close(_logits(fast, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)


def _everything_sparse(model, tmp_path) -> PerformanceModel:
    """A performance model whose 'measurements' make every layer below 45% density sparse."""
    densities = (0.1, 0.5, 1.0)
    shapes = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            shapes |= {tuple(weight.shape), tuple(weight.shape[::-1])}
    pm = PerformanceModel(tmp_path / "cal.json", densities=densities)
    for out_f, in_f in shapes:
        pm.record(Calibration(out_f, in_f, 48, 5e-6, densities,
                              tuple(1e-5 * d for d in densities)))
    return pm


def test_gpt2_conv1d_layers_are_sparsified_counted_and_compiled(tmp_path):
    torch.manual_seed(0)
    model, tied = _gpt2()
    conv1d = [name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in each of 2 blocks
    sp = sb.sparsify(model, "magnitude", sparsity=0.8)
    assert {f"{name}.weight" for name in conv1d} <= {layer.name for layer in sp.layers}
    model = sp.finalize().eval()
    report = {s.name: s for s in sb.sparsity_report(model).layers}
    for name in conv1d:
        stats = report[f"{name}.weight"]
        assert stats.nonzeros == stats.size - round(0.8 * stats.size)
    # The tied weight is counted once, not once per holder.
    assert sum(1 for name in report if name.endswith("wte.weight") or
               name.startswith("lm_head")) == 1
    ids = torch.randint(3, VOCAB, (4, 12))
    fast = compile_sparse(model, batch_hint=48, perf_model=_everything_sparse(model, tmp_path))
    assert all(isinstance(fast.get_submodule(name), SparseLinear) for name in conv1d)
    assert isinstance(fast.lm_head, SparseLinear)
    torch.testing.assert_close(_logits(fast, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)


def test_vd_local_reparameterization_of_conv1d_has_the_linear_mean_and_variance():
    """Local reparameterization on a Conv1D (y = x·W + b, W stored (in, out)): the output's
    mean is x·θ + b and its variance x²·(α·θ²), worked out directly from the weights."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs: weight (3, 5)
    sp = sb.sparsify(torch.nn.Sequential(layer), "variational_dropout", kl_weight=0.0)
    assert sp.layers[0].local_reparam and sp.layers[0].transposed
    parametrization = sp.layers[0].parametrization
    with torch.no_grad():
        parametrization.log_sigma2.fill_(-2.0)
    x = torch.randn(1, 3).expand(20000, 3)
    theta = layer.parametrizations.weight.original.detach()
    layer.train()
    with torch.no_grad():
        out = layer(x)
    variance = torch.exp(torch.tensor(-2.0)) * torch.ones(3, 5)  # α·θ² = σ² (no clipping)
    torch.testing.assert_close(out.mean(0), x[0] @ theta + layer.bias, atol=0.02, rtol=0)
    torch.testing.assert_close(out.var(0), (x[0] ** 2) @ variance, atol=0.02, rtol=0.05)


def test_block_pruning_of_conv1d_lays_blocks_on_outputs_and_inputs():
    """block=(2, 1) spans two outputs and one input: on a Conv1D's (in, out) weight that is
    two adjacent columns of one row."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(6, 4)  # weight (4 inputs, 6 outputs)
    sp = sb.sparsify(torch.nn.Sequential(layer), "magnitude", sparsity=0.5, block=(2, 1))
    mask = sp.masks()["0.weight"]
    assert torch.equal(mask[:, 0::2], mask[:, 1::2])  # output pairs share a fate
    assert int((~mask).sum()) == 12


def test_a_module_type_left_dense_with_most_parameters_is_named_in_one_warning():
    class Mystery(torch.nn.Module):  # a layer type sparsebench does not know
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(64, 64))

        def forward(self, x):
            return x @ self.weight

    model = torch.nn.Sequential(Mystery(), torch.nn.Linear(64, 8))
    with pytest.warns(UserWarning) as record:
        sb.select_layers(model)
    assert len(record) == 1
    share = 64 * 64 / (64 * 64 + 64 * 8 + 8)
    assert str(record[0].message).startswith(f"Mystery layers hold {share:.0%} of the model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb.select_layers(model, include="1")  # named explicitly: the user chose
