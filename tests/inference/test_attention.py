"""The extension's attention kernel (``glue.attention``) against torch's
``F.scaled_dot_product_attention``: strided head views, several shapes, the scale, and the
fallback for shapes it does not take; and ``compile_sparse`` routing a model's own attention
call to it (``glue.route_attention``), leaving the interception behind after every forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import _extension, compile_sparse, glue
from sparsebench.inference.glue import attention


def _heads(b: int, s: int, h: int, d: int) -> torch.Tensor:
    """A (b, h, s, d) view of a Linear's (b, s, h * d) output, as a Transformer splits heads."""
    return torch.randn(b, s, h * d).view(b, s, h, d).transpose(1, 2)


@pytest.mark.parametrize("b,s,h,d", [(1, 16, 1, 16), (2, 48, 3, 32), (2, 128, 4, 64),
                                     (1, 32, 2, 128)])
def test_attention_equals_torch(threads, b, s, h, d):
    torch.manual_seed(s + d)
    q, k, v = _heads(b, s, h, d), _heads(b, s, h, d), _heads(b, s, h, d)
    with torch.no_grad():
        got = attention(q, k, v)
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attention(q, k, v, scale=0.3),
                                   F.scaled_dot_product_attention(q, k, v, scale=0.3),
                                   rtol=1e-5, atol=1e-5)
    assert got.shape == (b, h, s, d)
    # returned as the heads of a (b, s, h * d) tensor: merging them back needs no copy
    assert got.transpose(1, 2).is_contiguous()


def test_large_scores_stay_finite():
    q, k, v = (_heads(1, 32, 2, 16) * 30 for _ in range(3))
    with torch.no_grad():
        got = attention(q, k, v)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), rtol=1e-4,
                               atol=1e-4)


def test_head_sizes_it_does_not_take_go_to_torch():
    q, k, v = _heads(1, 20, 2, 20), _heads(1, 20, 2, 20), _heads(1, 20, 2, 20)  # head of 20
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("b,queries,keys,h,d", [(8, 1, 128, 3, 64), (2, 1, 1, 2, 16),
                                                 (1, 3, 37, 2, 32), (2, 7, 17, 1, 64),
                                                 (1, 20, 20, 2, 16), (1, 40, 9, 2, 48),
                                                 (2, 8, 130, 2, 16)])
def test_queries_and_keys_of_any_count(threads, b, queries, keys, h, d):
    """Queries against more (cached) keys or fewer, and key counts off a multiple of 16,
    whose last block of K^T is padded: the extension's kernel itself, and ``attention``
    (which sends fewer than ATTENTION_MIN_QUERIES queries to torch), against torch."""
    torch.manual_seed(queries * keys + d)
    q, k, v = _heads(b, queries, h, d), _heads(b, keys, h, d), _heads(b, keys, h, d)
    expected = F.scaled_dot_product_attention(q, k, v)
    ext = _extension.load_extension()
    with torch.no_grad():
        got = attention(q, k, v)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if ext is not None and hasattr(ext, "attention_forward"):
            torch.testing.assert_close(ext.attention_forward(q, k, v, d ** -0.5), expected,
                                       rtol=1e-5, atol=1e-5)
    assert got.shape == (b, h, queries, d)


@pytest.mark.parametrize("keys", [1, 15, 37, 64])
def test_equal_scores_average_the_values_over_the_real_keys_only(keys):
    """With every key the same, each query weighs every key alike: its output is the mean of
    the values over the `keys` rows, whatever padding K^T carries up to a multiple of 16."""
    torch.manual_seed(keys)
    q = _heads(1, 5, 2, 16)
    k = torch.randn(1, 2, 1, 16).expand(1, 2, keys, 16)
    k = k.transpose(1, 2).contiguous().transpose(1, 2)  # (1, 2, keys, 16), head rows strided
    v = _heads(1, keys, 2, 16)
    ext = _extension.load_extension()
    if ext is None or not hasattr(ext, "attention_forward"):
        pytest.skip("no compiled attention kernel here")
    with torch.no_grad():
        got = ext.attention_forward(q, k, v, 0.25)
    expected = v.mean(dim=2, keepdim=True).expand(1, 2, 5, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class _SelfAttention(nn.Module):
    """Heads split from three projections, then torch's scaled dot product attention, as a
    Transformer's self-attention calls it."""

    def __init__(self, width: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.fail = False

    def forward(self, x):
        b, s, w = x.shape

        def split(t):
            return t.view(b, s, self.heads, w // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if self.fail:
            raise RuntimeError("a forward that fails")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0)
        return out.transpose(1, 2).reshape(b, s, w)


def test_compile_sparse_routes_a_models_attention_and_keeps_its_output(monkeypatch):
    model = nn.Sequential(_SelfAttention(), nn.Linear(64, 64)).eval()
    x = torch.randn(2, 32, 64)
    routed = []
    monkeypatch.setattr(glue, "attention",
                        lambda *a, **k: routed.append(1) or attention(*a, **k))
    with torch.no_grad():
        expected = model(x)
        fast = compile_sparse(model, plan=[], example_input=x)  # no planning: routing alone
        routed.clear()
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    assert len(routed) == 1  # the one attention call went to the kernel
    assert not torch.overrides._get_current_function_mode_stack()  # and the mode was left


def test_the_routing_is_left_when_the_forward_raises():
    model = _SelfAttention().eval()
    x = torch.randn(1, 16, 64)
    assert glue.route_attention(model, x) == 1
    model.fail = True
    with torch.no_grad(), pytest.raises(RuntimeError, match="fails"):
        model(x)
    assert not torch.overrides._get_current_function_mode_stack()
    model.fail = False
    with torch.no_grad():
        model(x)  # and works again
