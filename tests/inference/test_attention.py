"""The extension's attention kernel (``glue.attention``) against torch's
``F.scaled_dot_product_attention``: strided head views, several shapes, the scale, and the
fallback for shapes it does not take."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
