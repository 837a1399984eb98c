"""Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need"), one sitting.

Every projection is an ``nn.Linear`` (attention q/k/v/out and both feed-forward layers), so the
library's default selection, every Linear and Conv2d weight, is exactly the study's "all
fully-connected layers". Source, target and output embeddings are one shared ``nn.Embedding``;
the output projection (``TiedProjection``) multiplies by that same weight. The study's code
prunes this shared embedding / softmax matrix too, with every technique
(state_of_sparsity/sparse_transformer/layers/sparse_modalities.py); the library sparsifies an
embedding only when an ``include`` pattern names it, so the translation study's sweep passes
``sparsity.include: ["*"]``, and a sparse embedding is then sparse in both uses. Token ids come
from the config (pad 0, bos 1, eos 2, unk 3 by default, as in the project's sentencepiece
vocabulary).

Shapes: B batch, S source length, T target length, D d_model, H heads, V vocabulary.

Fraction of all parameters in ``nn.Linear`` weights (``Transformer.fc_parameter_fraction``, the
set the library's default selection sparsifies) and in the Linear weights plus the shared
embedding (the set the study's code prunes). The study reports 99.87% for its model, close to
our fraction with the embedding (the rest are biases and layer norms). Measured, post-norm:

=======  ===============================  ==========  ===========  ===========  ===============
preset   layers, d_model, d_ff, heads     vocabulary  parameters   fc fraction  with embedding
=======  ===============================  ==========  ===========  ===========  ===============
base     6+6, 512, 2048, 8                37000       63,082,496   0.6981       0.9984
small    3+3, 256, 1024, 4                8000        7,577,600    0.7265       0.9968
tiny     2+2, 128, 512, 4                 8000        1,949,696    0.4706       0.9958
=======  ===============================  ==========  ===========  ===========  ===============

Training: ``logits = model(src, shift_right(tgt, bos_id))`` and
``label_smoothed_cross_entropy(logits, tgt)``, or just ``model.loss(src, tgt)``. Decoding:
``greedy_decode`` and ``beam_search`` (GNMT length penalty), both batched with a key/value cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.models import _checks

# A decoder cache: for each decoder layer, {"self": {"k", "v"}, "cross": {"k", "v"}} with tensors
# of shape (B, H, length, D / H). Filled by Transformer.decode; reordered by beam search.
Cache = list[dict[str, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of :class:`Transformer`; the defaults are the paper's base model.

    Raises:
        ValueError: for a value outside its allowed range (one sentence naming the field).
    """

    vocab_size: int = 37000
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1  # on embeddings + positions and on every sublayer's output
    attention_dropout: float = 0.0  # on the attention weights (0 in the base model)
    pre_norm: bool = False  # False: the paper's post-norm; True: LayerNorm before each sublayer
    label_smoothing: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("n_encoder_layers", "n_decoder_layers"):
            _checks.non_negative_int(name, getattr(self, name))
        for name in ("dropout", "attention_dropout", "label_smoothing"):
            _checks.probability(name, getattr(self, name))
        _checks.one_of("pre_norm", self.pre_norm, (False, True))
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (sinusoidal positions), got {self.d_model}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={self.d_model} and "
                f"n_heads={self.n_heads}."
            )
        ids = {
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
        }
        for name, value in ids.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer token id, got {value!r}.")
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{name} must be a token id in [0, vocab_size={self.vocab_size}), got {value}."
                )
        if len({self.pad_id, self.bos_id, self.eos_id}) < 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {ids}.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """Returns the preset ``name`` ("base", "small" or "tiny") with ``overrides`` applied.

        Raises:
            ValueError: for an unknown preset, an unknown field or a bad value.
        """
        _checks.one_of("preset", name, PRESETS)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown Transformer option(s) {', '.join(unknown)}; "
                f"valid options are {', '.join(sorted(known))}."
            )
        return replace(cls(**PRESETS[name]), **overrides)


PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. base model; 37000 is the paper's shared BPE vocabulary for WMT14 EN-DE.
    "base": dict(
        vocab_size=37000,
        d_model=512,
        n_heads=8,
        d_ff=2048,
        n_encoder_layers=6,
        n_decoder_layers=6,
        dropout=0.1,
    ),
    # CPU sizes for the Ding English->German corpus with an 8k sentencepiece vocabulary.
    "small": dict(
        vocab_size=8000,
        d_model=256,
        n_heads=4,
        d_ff=1024,
        n_encoder_layers=3,
        n_decoder_layers=3,
        dropout=0.1,
    ),
    "tiny": dict(
        vocab_size=8000,
        d_model=128,
        n_heads=4,
        d_ff=512,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.1,
    ),
}


def sinusoidal_positions(
    length: int, d_model: int, offset: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """Returns the (length, d_model) sinusoidal encodings of positions offset..offset+length-1.

    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same), as in Sec. 3.5.
    """
    pos = torch.arange(offset, offset + length, dtype=torch.float32, device=device)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
    angle = pos / torch.pow(10000.0, two_i / d_model)  # (length, d_model / 2)
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


def shift_right(tgt: torch.Tensor, bos_id: int = 1) -> torch.Tensor:
    """Returns the decoder input for targets ``tgt`` (B, T): BOS followed by tgt[:, :-1].

    The last column is dropped because no position has to predict what follows it.
    """
    bos = torch.full_like(tgt[:, :1], bos_id)
    return torch.cat([bos, tgt[:, :-1]], dim=1)


def label_smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1, pad_id: int = 0
) -> torch.Tensor:
    """Returns the mean label-smoothed cross-entropy over the non-pad target tokens (a scalar).

    The smoothed target is (1 - smoothing) on the true token plus smoothing / V on every token
    (Szegedy et al. 2016), so per token the loss is
    ``(1 - smoothing) * -log p[y] + smoothing * mean_v(-log p[v])``.

    Args:
        logits: (B, T, V) unnormalised scores.
        target: (B, T) token ids; positions equal to ``pad_id`` are ignored.
    """
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, vocab).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=smoothing,
    )


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate q/k/v/out ``nn.Linear`` layers."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """Returns (B, L, D) split into heads: (B, H, L, D / H)."""
        b, length, d = x.shape
        return x.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Returns the attention output, (B, Tq, D).

        Args:
            x: queries (B, Tq, D); also the keys and values when ``memory`` is None.
            memory: keys and values (B, Tk, D) for cross-attention, or None for self-attention.
            mask: bool, broadcastable to (B, H, Tq, Tk); True where a query may attend.
            cache: for incremental decoding. Self-attention appends this call's keys and values
                to it; cross-attention projects ``memory`` on the first call only.
        """
        b, tq, d = x.shape
        q = self._heads(self.q_proj(x))  # (B, H, Tq, D/H)
        if memory is None:
            k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)  # (B, H, past + Tq, D/H)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        elif cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # the memory does not change while decoding
        else:
            k, v = self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
            if cache is not None:
                cache["k"], cache["v"] = k, v
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, tq, d)  # (B, Tq, D)
        return self.out_proj(y)

    def extra_flops(self, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
        """Returns the FLOPs (2 per multiply-accumulate) of QK^T and attention.V for one call.

        Meant for a forward hook, which sees ``(module, inputs, output)`` with ``inputs`` the
        positional arguments ``(x, memory, mask, cache)``: a FLOP counter counts the four Linear
        layers itself, and this adds the two matmuls between them, each B * Tq * Tk * D
        multiply-accumulates. Only the arguments are read (never the cache, which later steps
        mutate): Tk is the mask's last dimension if a mask is given, else the memory length,
        else the query length. Self-attention over a cache must therefore be given a mask, as
        :meth:`Transformer.decode` always does. Masked positions count: the kernel computes them.
        """
        b, tq, d = output.shape
        memory = inputs[1] if len(inputs) > 1 else None
        mask = inputs[2] if len(inputs) > 2 else None
        if mask is not None:
            tk = mask.shape[-1]
        elif memory is not None:
            tk = memory.shape[1]
        else:
            tk = tq
        return 2 * (2 * b * tq * tk * d)


class FeedForward(nn.Module):
    """Position-wise feed-forward network: fc2(relu(fc1(x))), D -> d_ff -> D."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns a tensor of the shape of ``x``, (..., D)."""
        return self.fc2(torch.relu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward sublayers, each with a residual connection and LayerNorm."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.pre_norm = c.pre_norm
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.d_ff)
        self.norm1 = nn.LayerNorm(c.d_model)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Returns the layer output (B, S, D) for input ``x`` (B, S, D)."""
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), None, src_mask))
            return x + self.dropout(self.ff(self.norm2(x)))
        # Post-norm, as in the paper: LayerNorm(x + Dropout(Sublayer(x))).
        x = self.norm1(x + self.dropout(self.self_attn(x, None, src_mask)))
        return self.norm2(x + self.dropout(self.ff(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, and feed-forward."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.pre_norm = c.pre_norm
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.d_ff)
        self.norm1 = nn.LayerNorm(c.d_model)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.norm3 = nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        self_mask: torch.Tensor,
        src_mask: torch.Tensor,
        cache: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Returns the layer output (B, T, D) for input ``x`` (B, T, D) and memory (B, S, D)."""
        self_cache = cache["self"] if cache is not None else None
        cross_cache = cache["cross"] if cache is not None else None
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), None, self_mask, self_cache))
            x = x + self.dropout(self.cross_attn(self.norm2(x), memory, src_mask, cross_cache))
            return x + self.dropout(self.ff(self.norm3(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, None, self_mask, self_cache)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, src_mask, cross_cache)))
        return self.norm3(x + self.dropout(self.ff(x)))


class TiedProjection(nn.Module):
    """``F.linear(x, source.weight)``: a projection by another module's weight (the shared
    embedding), as a module of its own so that per-layer FLOP counts and ``compile_sparse``
    see it (``tied_weight_module`` is the protocol both look for). It holds no parameter:
    the weight stays the embedding's, saved, counted and sparsified once."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        # A plain attribute, not a submodule, so state_dict and parameters() list E once.
        object.__setattr__(self, "tied_weight_module", source)

    @property
    def weight(self) -> torch.Tensor:
        return self.tied_weight_module.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tied_weight_module.weight)


class Transformer(nn.Module):
    """The encoder-decoder Transformer with shared embeddings; see the module docstring."""

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else TransformerConfig()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.output_projection = TiedProjection(self.embed)  # logits = x E^T (shared E)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.dropout = nn.Dropout(c.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform Linear weights, zero biases, N(0, D^-1/2) embeddings.

        The embedding scale makes sqrt(D) * embedding unit-variance, matching the positions.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, mean=0.0, std=self.config.d_model**-0.5)

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Returns dropout(sqrt(D) * embedding + positions) for tokens (B, L): (B, L, D)."""
        d = self.config.d_model
        pe = sinusoidal_positions(tokens.shape[1], d, offset, tokens.device)
        # The dtype from the lookup, not embed.weight: a sparse training step keeps the
        # embedding's weight elsewhere and refuses reads of it outside the embedding's forward.
        embedded = self.embed(tokens)
        return self.dropout(embedded * math.sqrt(d) + pe.to(embedded.dtype))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (memory (B, S, D), src_mask (B, 1, 1, S)) for source tokens ``src`` (B, S).

        ``src_mask`` is True at non-pad source positions: the keys a query may attend to.
        """
        src_mask = (src != self.config.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: Cache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Returns logits (B, T, V) for decoder inputs ``tgt_in`` (B, T).

        Args:
            tgt_in: decoder input tokens at positions offset..offset+T-1.
            memory, src_mask: from :meth:`encode`.
            cache: from :meth:`new_cache` for incremental decoding; it must hold the keys of
                positions 0..offset-1, and this call appends those of ``tgt_in``.
            offset: position of the first token of ``tgt_in``.
        """
        t = tgt_in.shape[1]
        # Causal: query i (at position offset + i) sees keys 0..offset + i. Built even for one
        # cached token (all True) because its width tells extra_flops how many keys there are.
        keys = offset + t if cache is not None else t
        ones = torch.ones(t, keys, dtype=torch.bool, device=tgt_in.device)
        self_mask = ones.tril(diagonal=keys - t)[None, None]  # (1, 1, T, keys)
        x = self._embed(tgt_in, offset)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, self_mask, src_mask, cache[i] if cache is not None else None)
        x = self.decoder_norm(x)
        return self.output_projection(x)  # the output projection is the shared embedding

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Returns logits (B, T, V) for source (B, S) and decoder input (B, T) (teacher forcing)."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def loss(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Returns the label-smoothed cross-entropy (scalar) of predicting ``tgt`` (B, T) from
        ``src`` (B, S); ``tgt`` ends with EOS and is padded with pad_id."""
        c = self.config
        logits = self(src, shift_right(tgt, c.bos_id))
        return label_smoothed_cross_entropy(logits, tgt, c.label_smoothing, c.pad_id)

    def new_cache(self) -> Cache:
        """Returns an empty key/value cache for :meth:`decode`, one entry per decoder layer."""
        return [{"self": {}, "cross": {}} for _ in self.decoder]

    def fc_parameter_fraction(self) -> float:
        """Returns the fraction of all parameters that are nn.Linear weights (the pruned set)."""
        linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return linear / sum(p.numel() for p in self.parameters())

    # --- decoding --------------------------------------------------------------------------

    def _default_max_len(self, src: torch.Tensor, max_len: int | None) -> int:
        """Returns ``max_len``, or the source length + 50 (as tensor2tensor decodes) if None."""
        if max_len is None:
            return src.shape[1] + 50
        return _checks.positive_int("max_len", max_len)

    def _next_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Returns log-probabilities (N, V) for last-position logits (N, V), never pad or BOS.

        Pad and BOS are never valid outputs, so no decoder may choose them.
        """
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs[:, [self.config.pad_id, self.config.bos_id]] = -math.inf
        return log_probs

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Returns the greedy translations of ``src`` (B, S): tokens (B, L), L <= max_len.

        Each row is the output tokens up to and including EOS, then pad_id; a row that reached
        ``max_len`` without EOS just ends. BOS is not included. Call ``eval()`` first (dropout).
        """
        c = self.config
        max_len = self._default_max_len(src, max_len)
        memory, src_mask = self.encode(src)
        cache = self.new_cache()
        last = torch.full((src.shape[0], 1), c.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        out = []
        for t in range(max_len):
            logits = self.decode(last, memory, src_mask, cache, offset=t)[:, -1]  # (B, V)
            token = self._next_log_probs(logits).argmax(dim=-1)
            token = token.masked_fill(finished, c.pad_id)
            out.append(token)
            finished |= token == c.eos_id
            if finished.all():
                break
            last = token[:, None]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def beam_search(
        self,
        src: torch.Tensor,
        beam_size: int = 4,
        alpha: float = 0.6,
        max_len: int | None = None,
    ) -> torch.Tensor:
        """Returns the beam-search translations of ``src`` (B, S): tokens (B, L), L <= max_len.

        Hypotheses are ranked by the GNMT score log P(Y | X) / lp(Y) with
        lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016), |Y| counting EOS. A hypothesis that emits
        EOS keeps its beam slot and its score (it extends only with pad, at no cost), so finished
        and live hypotheses compete on that score at every step; the search stops when every beam
        has finished or at ``max_len``. With ``beam_size=1`` this is exactly greedy decoding.
        Rows are formatted as in :meth:`greedy_decode`. Call ``eval()`` first (dropout).

        Raises:
            ValueError: if beam_size is not in [1, vocab_size - 2] or alpha is negative.
        """
        c = self.config
        k = _checks.positive_int("beam_size", beam_size)
        if k > c.vocab_size - 2:
            raise ValueError(f"beam_size must be at most vocab_size - 2, got {beam_size}.")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
            raise ValueError(f"alpha must be a non-negative number, got {alpha!r}.")
        max_len = self._default_max_len(src, max_len)
        b, v, device = src.shape[0], c.vocab_size, src.device

        def length_penalty(length: torch.Tensor) -> torch.Tensor:
            return ((5.0 + length.float()) / 6.0) ** alpha

        memory, src_mask = self.encode(src)
        # Beam j of sentence i lives in row i * k + j.
        memory = memory.repeat_interleave(k, dim=0)  # (B*k, S, D)
        src_mask = src_mask.repeat_interleave(k, dim=0)
        cache = self.new_cache()
        last = torch.full((b * k, 1), c.bos_id, dtype=torch.long, device=device)
        seqs = torch.empty((b * k, 0), dtype=torch.long, device=device)
        # Only beam 0 is live at the start; otherwise the k identical beams would fill the beam.
        scores = torch.full((b, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)  # (B*k,) log P of each hypothesis
        lengths = torch.zeros(b * k, dtype=torch.long, device=device)
        finished = torch.zeros(b * k, dtype=torch.bool, device=device)
        rows = torch.arange(b, device=device)[:, None] * k  # (B, 1) first row of each sentence

        for t in range(max_len):
            logits = self.decode(last, memory, src_mask, cache, offset=t)[:, -1]  # (B*k, V)
            log_probs = self._next_log_probs(logits)
            # A finished hypothesis has one continuation, pad, at no cost.
            log_probs[finished] = -math.inf
            log_probs[finished, c.pad_id] = 0.0
            candidates = scores[:, None] + log_probs  # (B*k, V)
            # Rank by the length-normalised score: live candidates now have t + 1 tokens.
            cand_len = torch.where(finished, lengths, t + 1)
            ranking = candidates / length_penalty(cand_len)[:, None]
            _, index = ranking.view(b, k * v).topk(k, dim=1)  # (B, k)
            source_row = (rows + index // v).view(-1)  # (B*k,) the beam each winner extends
            token = (index % v).view(-1)
            scores = candidates.view(b, k * v).gather(1, index).view(-1)
            seqs = torch.cat([seqs[source_row], token[:, None]], dim=1)
            was_finished = finished[source_row]
            lengths = torch.where(was_finished, lengths[source_row], t + 1)
            # A -inf hypothesis (only possible when fewer than k tokens have any probability)
            # can never win, so it is retired rather than extended.
            finished = was_finished | (token == c.eos_id) | (scores == -math.inf)
            for layer_cache in cache:
                # Cross-attention keys are identical across a sentence's beams: no reorder needed.
                self_cache = layer_cache["self"]
                for name, value in self_cache.items():
                    self_cache[name] = value[source_row]
            if finished.all():
                break
            last = token[:, None]

        best = (scores / length_penalty(lengths)).view(b, k).argmax(dim=1)  # (B,)
        return seqs[rows.view(-1) + best]
