"""The extension's attention kernel (``glue.attention``) against torch's
``F.scaled_dot_product_attention``: strided head views, several shapes, the scale, and the
fallback for shapes it does not take; and ``compile_sparse`` routing a model's own attention
call to it (``glue.route_attention``), leaving the interception behind after every forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import compile_sparse, glue
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


def test_shapes_it_does_not_take_go_to_torch():
    q, k, v = _heads(1, 20, 2, 16), _heads(1, 20, 2, 16), _heads(1, 20, 2, 16)  # 20 tokens
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


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
