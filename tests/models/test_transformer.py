"""Transformer: hand-counted parameters, masks, KV cache, FLOPs, loss, sparsify-compatibility."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.models import (
    Transformer,
    TransformerConfig,
    label_smoothed_cross_entropy,
    shift_right,
)
from sparsebench.models.transformer import sinusoidal_positions


def tiny_config(**overrides) -> TransformerConfig:
    options = dict(
        vocab_size=30,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.1,
    )
    return TransformerConfig(**{**options, **overrides})


def expected_params(v: int, d: int, f: int, n_enc: int, n_dec: int, pre_norm: bool) -> int:
    """The parameter count worked out by hand from the architecture."""
    attention = 4 * (d * d + d)  # q, k, v, out projections with biases
    feed_forward = (d * f + f) + (f * d + d)
    layer_norm = 2 * d  # gain and bias
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    final_norms = 2 * layer_norm if pre_norm else 0
    embedding = v * d  # shared by source, target and output projection
    return embedding + n_enc * encoder_layer + n_dec * decoder_layer + final_norms


def expected_linear_weights(d: int, f: int, n_enc: int, n_dec: int) -> int:
    return n_enc * (4 * d * d + 2 * d * f) + n_dec * (8 * d * d + 2 * d * f)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("vocab", [37000, 32000, 100])
def test_base_parameter_count_matches_the_hand_formula(vocab):
    model = Transformer(TransformerConfig.preset("base", vocab_size=vocab))
    assert count(model) == expected_params(vocab, 512, 2048, 6, 6, pre_norm=False)
    if vocab == 37000:
        # Spelled out: 18,944,000 embedding + 6 x 3,152,384 encoder + 6 x 4,204,032 decoder.
        assert count(model) == 18_944_000 + 6 * 3_152_384 + 6 * 4_204_032 == 63_082_496


@pytest.mark.parametrize("preset", ["small", "tiny"])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_small_parameter_counts_match_the_hand_formula(preset, pre_norm):
    config = TransformerConfig.preset(preset, pre_norm=pre_norm)
    c = config
    model = Transformer(config)
    formula = expected_params(
        c.vocab_size, c.d_model, c.d_ff, c.n_encoder_layers, c.n_decoder_layers, pre_norm
    )
    assert count(model) == formula


@pytest.mark.parametrize(("preset", "vocab"), [("base", 37000), ("small", 8000), ("tiny", 8000)])
def test_fc_parameter_fraction(preset, vocab):
    c = TransformerConfig.preset(preset, vocab_size=vocab)
    model = Transformer(c)
    linear = expected_linear_weights(c.d_model, c.d_ff, c.n_encoder_layers, c.n_decoder_layers)
    total = expected_params(
        vocab, c.d_model, c.d_ff, c.n_encoder_layers, c.n_decoder_layers, pre_norm=False
    )
    assert model.fc_parameter_fraction() == pytest.approx(linear / total)


def test_every_projection_is_a_linear_and_the_output_uses_the_embedding():
    c = tiny_config()
    model = Transformer(c).eval()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    # 4 per attention (q, k, v, out) + 2 per feed-forward.
    assert len(linears) == 4 * (2 + 2 * 2) + 2 * (2 + 2)
    assert "decoder.1.cross_attn.k_proj" in linears and "encoder.0.ff.fc2" in linears
    assert all(m.out_features != c.vocab_size for m in model.modules() if isinstance(m, nn.Linear))
    # The logits are the last hidden state times the embedding matrix.
    hidden = {}
    model.decoder[-1].register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
    src, tgt_in = torch.randint(4, 30, (2, 5)), torch.randint(4, 30, (2, 4))
    with torch.no_grad():
        logits = model(src, tgt_in)
    assert torch.allclose(logits, hidden["h"] @ model.embed.weight.T, atol=1e-5)


def test_sinusoidal_positions_formula():
    pe = sinusoidal_positions(50, 16, offset=3)
    pos, i = 10, 5  # row 10 is position 13
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(13 / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(
        math.cos(13 / 10000 ** (2 * i / 16)), abs=1e-6
    )


def test_embeddings_are_scaled_by_sqrt_d_model():
    c = tiny_config(n_encoder_layers=0, dropout=0.0)
    model = Transformer(c).eval()
    src = torch.tensor([[5, 6, 7]])
    memory, _ = model.encode(src)  # no encoder layers: memory is the input representation
    expected = model.embed.weight[src[0]] * math.sqrt(32) + sinusoidal_positions(3, 32)
    assert torch.allclose(memory[0], expected, atol=1e-6)


def test_causal_mask_future_target_tokens_do_not_change_earlier_outputs():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    src = torch.randint(4, 30, (2, 6))
    tgt_in = torch.randint(4, 30, (2, 7))
    changed = tgt_in.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 4) % 26 + 4  # a different non-special token
    with torch.no_grad():
        a, b = model(src, tgt_in), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)  # ...but later ones do change


def test_padding_mask_pad_positions_do_not_change_the_outputs():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    src = torch.randint(4, 30, (1, 5))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    other = torch.randint(4, 30, (1, 8))
    batch = torch.cat([padded, other])  # the short sentence padded inside a batch
    tgt_in = torch.randint(4, 30, (1, 4))
    with torch.no_grad():
        alone = model(src, tgt_in)
        with_pad = model(padded, tgt_in)
        in_batch = model(batch, tgt_in.expand(2, -1))
        memory_alone, _ = model.encode(src)
        memory_padded, mask = model.encode(padded)
    assert torch.allclose(alone, with_pad, atol=1e-5)
    assert torch.allclose(alone, in_batch[:1], atol=1e-5)
    assert torch.allclose(memory_alone, memory_padded[:, :5], atol=1e-5)
    assert mask.shape == (1, 1, 1, 8) and mask.sum() == 5


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_with_cache_equals_full_decoding(pre_norm):
    torch.manual_seed(0)
    model = Transformer(tiny_config(pre_norm=pre_norm)).eval()
    src = torch.randint(4, 30, (3, 6))
    src[1, 4:] = 0
    tgt_in = torch.randint(4, 30, (3, 5))
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode(tgt_in, memory, src_mask)
        cache = model.new_cache()
        steps = [model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache, t) for t in range(5)]
        # Two tokens at once on top of a cache of three: the causal mask has an offset.
        cache2 = model.new_cache()
        model.decode(tgt_in[:, :3], memory, src_mask, cache2, 0)
        chunk = model.decode(tgt_in[:, 3:], memory, src_mask, cache2, 3)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)
    assert torch.allclose(full[:, 3:], chunk, atol=1e-5)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = Transformer(tiny_config(dropout=0.3, attention_dropout=0.3))
    src, tgt_in = torch.randint(4, 30, (2, 5)), torch.randint(4, 30, (2, 4))
    assert not torch.allclose(model(src, tgt_in), model(src, tgt_in))
    model.eval()
    assert torch.allclose(model(src, tgt_in), model(src, tgt_in))


def test_attention_extra_flops_counts_both_matmuls():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    calls: dict[str, list] = {}

    def hook(name):
        def record(module, inputs, output):
            calls.setdefault(name, []).append((module, inputs, output))

        return record

    def counted(name):
        # Called after all the calls have run, as a FLOP counter does: the cache has grown since.
        return sum(module.extra_flops(inputs, output) for module, inputs, output in calls[name])

    model.encoder[0].self_attn.register_forward_hook(hook("enc_self"))
    model.decoder[0].self_attn.register_forward_hook(hook("dec_self"))
    model.decoder[0].cross_attn.register_forward_hook(hook("dec_cross"))
    b, s, t, d = 2, 6, 4, 32
    with torch.no_grad():
        model(torch.randint(4, 30, (b, s)), torch.randint(4, 30, (b, t)))
    # Each of QK^T and A.V is B * Tq * Tk * D multiply-accumulates, 2 FLOPs each.
    assert counted("enc_self") == 2 * 2 * b * s * s * d
    assert counted("dec_self") == 2 * 2 * b * t * t * d
    assert counted("dec_cross") == 2 * 2 * b * t * s * d

    calls.clear()
    with torch.no_grad():
        memory, src_mask = model.encode(torch.randint(4, 30, (b, s)))
        cache = model.new_cache()
        for step in range(t):
            model.decode(torch.randint(4, 30, (b, 1)), memory, src_mask, cache, step)
    # Incremental: the query at step i attends to i + 1 keys.
    assert counted("dec_self") == 2 * 2 * b * d * sum(i + 1 for i in range(t))
    assert counted("dec_cross") == 2 * 2 * b * d * s * t


def test_label_smoothing_loss_by_hand():
    # Logits log([0.5, 0.25, 0.25]) give exactly those probabilities.
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]))
    target = torch.tensor([[1, 2, 0]])  # the last position is pad (id 0) and must be ignored
    eps = 0.1
    ln2, ln4 = math.log(2), math.log(4)
    # per token: (1 - eps) * -log p[y] + eps * mean_v(-log p[v]); mean(-log p) = (ln2 + 2 ln4) / 3
    smooth = (ln2 + 2 * ln4) / 3
    per_token = (1 - eps) * ln4 + eps * smooth  # both targets have p = 0.25
    loss = label_smoothed_cross_entropy(logits, target, smoothing=eps, pad_id=0)
    assert loss.item() == pytest.approx(per_token, rel=1e-6)
    plain = label_smoothed_cross_entropy(logits, target, smoothing=0.0, pad_id=0)
    assert plain.item() == pytest.approx(ln4, rel=1e-6)


def test_shift_right_and_model_loss():
    tgt = torch.tensor([[7, 8, 2, 0], [9, 2, 0, 0]])
    assert shift_right(tgt, bos_id=1).tolist() == [[1, 7, 8, 2], [1, 9, 2, 0]]
    torch.manual_seed(0)
    model = Transformer(tiny_config(dropout=0.0)).eval()
    src = torch.randint(4, 30, (2, 5))
    expected = label_smoothed_cross_entropy(model(src, shift_right(tgt)), tgt, 0.1, 0)
    assert model.loss(src, tgt).item() == pytest.approx(expected.item())
    # An untrained model is close to uniform: about log(30) nats per token.
    assert abs(model.loss(src, tgt).item() - math.log(30)) < 1.0


def test_config_preset_rejects_unknown_fields_and_presets():
    with pytest.raises(ValueError, match="unknown Transformer option"):
        TransformerConfig.preset("tiny", d_modle=64)
    with pytest.raises(ValueError, match="preset must be one of"):
        TransformerConfig.preset("huge")


def test_works_with_weight_parametrizations_like_sparsify():
    """Masking every Linear weight by parametrization (sparsify's mechanism) changes the model
    and leaves training and decoding working."""

    class Mask(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.register_buffer("mask", (torch.rand(shape) > 0.5).float())

        def forward(self, w):
            return w * self.mask

    torch.manual_seed(0)
    model = Transformer(tiny_config())
    src, tgt = torch.randint(4, 30, (2, 5)), torch.randint(4, 30, (2, 4))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            parametrize.register_parametrization(module, "weight", Mask(module.weight.shape))
    model.loss(src, tgt).backward()
    assert model.encoder[0].ff.fc1.parametrizations.weight.original.grad is not None
    model.eval()
    out = model.beam_search(src, beam_size=2, max_len=5)
    assert out.shape[0] == 2 and out.shape[1] <= 5


def test_the_tied_output_projection_adds_no_parameter_and_survives_copies():
    import copy

    model = Transformer(tiny_config())
    assert not any(k.startswith("output_projection") for k in model.state_dict())
    assert count(model) == expected_params(30, 32, 64, 2, 2, False)
    twin = copy.deepcopy(model)
    assert twin.output_projection.tied_weight_module is twin.embed
    assert twin.output_projection.weight is twin.embed.weight


def test_sparsity_report_counts_the_output_projection_on_the_embedding():
    from sparsebench.metrics.sparsity import sparsity_report

    model = Transformer(tiny_config()).eval()
    with torch.no_grad():
        model.embed.weight[:, ::2] = 0  # half the embedding
    b, s, t, v, d = 2, 5, 4, 30, 32
    report = sparsity_report(model, torch.randint(4, 30, (b, s)), torch.randint(4, 30, (b, t)))
    embed = next(layer for layer in report.layers if layer.name == "embed.weight")
    assert embed.shape == (v, d) and embed.nonzeros == v * d // 2
    # The lookups do no multiply-adds; the projection of B*T decoder states does V*D each.
    assert embed.dense_flops == 2 * b * t * v * d
    assert embed.sparse_flops == 2 * b * t * v * d // 2


def test_sparsify_with_the_embedding_prunes_the_shared_matrix():
    import sparsebench as sb

    torch.manual_seed(0)
    model = Transformer(tiny_config())
    sp = sb.sparsify(model, "magnitude", sparsity=0.9, include="*")
    assert "embed.weight" in [layer.name for layer in sp.layers]
    src, tgt = torch.randint(4, 30, (2, 5)), torch.randint(4, 30, (2, 4))
    model.eval()
    with torch.no_grad():
        logits = model(src, tgt)
        hidden = {}
        model.decoder_norm.register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
        model(src, tgt)
    sparse_embed = model.embed.weight.detach()
    assert (sparse_embed == 0).float().mean().item() == pytest.approx(0.9, abs=1 / (30 * 32))
    assert torch.allclose(logits, hidden["h"] @ sparse_embed.T, atol=1e-5)
