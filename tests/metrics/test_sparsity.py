"""Sparsity and FLOP counting against counts worked out by hand."""

import pytest
import torch
from torch import nn

import sparsebench as sb


def test_linear_and_conv_flops_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        model[0].weight[:4] = 0  # half the conv filters gone
        model[2].weight[:, :128] = 0  # a quarter of the classifier gone
    report = sb.sparsity_report(model, torch.randn(2, 3, 8, 8))
    conv, fc = report.layers
    # conv: 2 images × 64 positions × 8×3×3×3 weights × 2 FLOPs per multiply-add.
    assert conv.dense_flops == 2 * 2 * 64 * 216
    assert conv.sparse_flops == 2 * 2 * 64 * 108
    assert fc.dense_flops == 2 * 2 * 512 * 10
    assert fc.sparse_flops == 2 * 2 * 384 * 10
    assert (conv.nonzeros, conv.size, fc.nonzeros, fc.size) == (108, 216, 3840, 5120)
    assert report.sparsity == pytest.approx(1 - (108 + 3840) / (216 + 5120))
    assert report.total_parameters == 216 + 8 + 5120 + 10
    assert report.total_nonzero_parameters == 108 + 8 + 3840 + 10
    rows = report.to_csv().splitlines()
    assert rows[0].startswith("layer,kind,shape") and rows[2].startswith("2.weight,linear,10x512")


def test_grouped_conv_flops():
    model = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    report = sb.sparsity_report(model, torch.randn(1, 4, 5, 5))
    # each of 25 × 8 outputs uses 2 input channels × 9 taps.
    assert report.layers[0].dense_flops == 2 * 25 * 8 * 2 * 9


def test_attention_flops_include_projections_and_scores():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(3, 5, 8)   # batch 3, 5 query tokens
    kv = torch.randn(3, 7, 8)  # 7 key tokens
    report = sb.sparsity_report(mha, q, kv, kv)
    in_proj, out_proj = report.layers
    assert in_proj.dense_flops == 2 * (15 * 64 + 21 * 64 + 21 * 64)
    assert out_proj.dense_flops == 2 * 15 * 64
    # QKᵀ and AV: 3 × 5 × 7 × 8 multiply-adds each.
    assert report.other_flops == 2 * 2 * 3 * 5 * 7 * 8


def test_report_on_a_sparsified_model_counts_evaluation_zeros(mlp):
    sp = sb.sparsify(mlp, "magnitude", sparsity=0.9)
    report = sb.sparsity_report(mlp, torch.randn(4, 20))
    assert report.sparsity == pytest.approx(sp.sparsity())
    assert report.total_parameters == sum(p.numel() for p in sp.finalize().parameters())
    assert mlp.training  # modes are restored
