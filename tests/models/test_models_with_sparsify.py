"""The registry's models under the library's own ``sparsify()`` and ``sparsity_report()``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench import models

sparsify_module = pytest.importorskip("sparsebench.sparsify")
sparsity_module = pytest.importorskip("sparsebench.metrics.sparsity")

CASES = [
    ("lenet300", {}, lambda: (torch.randn(2, 1, 28, 28),)),
    ("lenet5", {}, lambda: (torch.randn(2, 1, 28, 28),)),
    ("resnet20", {"width": 8}, lambda: (torch.randn(2, 3, 32, 32),)),
    ("resnet50-small", {"width": 4}, lambda: (torch.randn(2, 1, 28, 28),)),
    ("resnet18", {"width": 4, "stem": "cifar"}, lambda: (torch.randn(2, 3, 32, 32),)),
    (
        "transformer-tiny",
        {"vocab_size": 50},
        lambda: (torch.randint(4, 50, (2, 7)), torch.randint(4, 50, (2, 5))),
    ),
]


def prunable_weights(model: nn.Module) -> set[str]:
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }


@pytest.mark.parametrize(("name", "options", "inputs"), CASES, ids=[c[0] for c in CASES])
def test_default_selection_is_every_linear_and_conv_and_pruning_hits_the_target(
    name, options, inputs
):
    torch.manual_seed(0)
    model = models.create(name, **options)
    expected = prunable_weights(model)
    sparsifier = sparsify_module.sparsify(model, "magnitude", sparsity=0.8)
    assert len(sparsifier.layers) == len(expected)
    out = model(*inputs())
    out.float().pow(2).mean().backward()
    sparsifier.step()
    assert sparsifier.sparsity() == pytest.approx(0.8, abs=0.01)
    plain = sparsifier.finalize()
    weights = [m.weight for m in plain.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.8, abs=0.01)
    assert prunable_weights(plain) == expected


def test_sparse_transformer_still_decodes_and_reports_attention_flops():
    torch.manual_seed(0)
    model = models.create("transformer-tiny", vocab_size=50)
    sparsify_module.sparsify(model, "magnitude", sparsity=0.5)
    model.eval()
    src, tgt_in = torch.randint(4, 50, (2, 7)), torch.randint(4, 50, (2, 5))
    out = model.beam_search(src, beam_size=2, max_len=6)
    assert out.shape[0] == 2 and out.shape[1] <= 6
    report = sparsity_module.sparsity_report(model, src, tgt_in)
    b, s, t, d = 2, 7, 5, 128
    # 2 encoder self-attentions (S x S), 2 decoder self (T x T), 2 cross (T x S); 2 matmuls each.
    expected = 2 * 2 * b * d * (2 * s * s + 2 * t * t + 2 * t * s)
    assert report.other_flops == expected
