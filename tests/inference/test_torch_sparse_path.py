"""The torch-sparse path of SparseLinear (what a GPU runs: torch's CSR / BSR products), checked
on the CPU against the dense layer, and on CUDA where a GPU is present (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.inference import SparseLinear, compact_sparse

CUDA = torch.cuda.is_available()


def _block_sparse_weight(out_f: int, in_f: int, block: tuple[int, int], keep: float,
                         seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bh, bw = block
    mask = torch.rand(-(-out_f // bh), -(-in_f // bw), generator=g) < keep
    mask = mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out_f, :in_f]
    return torch.randn(out_f, in_f, generator=g) * mask


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16), (32, 32), (16, 1)])
@pytest.mark.parametrize("shape", [(64, 48), (37, 70), (130, 33)])  # odd: padded edge blocks
def test_torch_sparse_path_equals_dense_on_cpu(block, shape):
    out_f, in_f = shape
    w = _block_sparse_weight(out_f, in_f, block, keep=0.3)
    w[: min(3, out_f)] = 0  # empty rows
    bias = torch.randn(out_f)
    layer = SparseLinear.from_dense(w, bias, block=block)
    x = torch.randn(5, 3, in_f)
    ref = torch.nn.functional.linear(x, w, bias)
    with torch.no_grad():
        got = layer.forward_torch_sparse(x)
    assert got.shape == ref.shape
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_torch_bsr_is_refused_for_a_csr_layer():
    layer = SparseLinear.from_dense(torch.eye(4))
    with pytest.raises(ValueError, match="block layers"):
        layer.torch_bsr()


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU here; CI never has one")
@pytest.mark.parametrize("block", [(1, 1), (16, 16), (32, 32)])
def test_compiled_block_layers_run_torch_sparse_kernels_on_cuda(block, monkeypatch):
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 130))
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.copy_(_block_sparse_weight(*layer.weight.shape, block, keep=0.1))
    compiled, plan = compact_sparse(model)  # compiled on the CPU, as a user would
    # Both layers go sparse; the first (512 rows, whole blocks) keeps the training block.
    assert all(d.use_sparse for d in plan) and plan[0].block == block
    compiled = compiled.cuda()
    # The GPU path must not densify: make the dense fallback fail loudly.
    monkeypatch.setattr(SparseLinear, "dense_weight", lambda self: pytest.fail("densified"))
    x = torch.randn(128, 256)
    with torch.no_grad():
        ref = model(x)
        got = compiled(x.cuda()).cpu()
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5
