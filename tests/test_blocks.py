"""Block-sparse pruning: whole blocks, exact block counts, edges, and (1, 1) unchanged."""

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.blocks import block_grid, block_scores, check_block, expand_blocks


def _blocks_are_whole(weight_mask: torch.Tensor, block) -> bool:
    matrix = weight_mask.reshape(weight_mask.shape[0], -1)
    rows, cols = matrix.shape
    for r in range(0, rows, block[0]):
        for c in range(0, cols, block[1]):
            tile = matrix[r : r + block[0], c : c + block[1]]
            if tile.any() and not tile.all():
                return False
    return True


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_block_1x1_is_unstructured_pruning_bit_for_bit(method):
    torch.manual_seed(3)
    a = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Conv2d(1, 4, 3))
    b = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Conv2d(1, 4, 3))
    b.load_state_dict(a.state_dict())
    plain = sb.sparsify(a, method, sparsity=0.7).masks()
    blocked = sb.sparsify(b, method, sparsity=0.7, block=(1, 1)).masks()
    assert all(torch.equal(plain[k], blocked[k]) for k in plain)


@pytest.mark.parametrize("block", [(4, 4), (16, 1), (8, 8)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_masks_are_whole_blocks_with_exact_block_counts(block, sparsity):
    layer = nn.Linear(64, 32)
    sp = sb.sparsify(nn.Sequential(layer), "magnitude", sparsity=sparsity, block=block)
    mask = sp.masks()["0.weight"]
    assert _blocks_are_whole(mask, block)
    blocks = (32 // block[0]) * (64 // block[1])
    assert int((~mask).sum()) == int(sparsity * blocks + 0.5) * block[0] * block[1]
    assert sp.block_sparsity()["0.weight"] == pytest.approx(int(sparsity * blocks + 0.5) / blocks)


def test_magnitude_blocks_rank_by_l2_norm():
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0, 0.1, 0.1],
                                         [0.0, 0.0, 0.1, 0.1],
                                         [0.5, 0.5, 2.0, 0.0],
                                         [0.5, 0.5, 0.0, 0.0]]))
    # 2x2 block norms: top-left 3, top-right 0.2, bottom-left 1, bottom-right 2.
    sp = sb.sparsify(nn.Sequential(layer), "magnitude", sparsity=0.5, block=(2, 2))
    kept = sp.masks()["0.weight"]
    assert kept[0, 0] and kept[2, 2] and not kept[0, 2] and not kept[2, 0]


def test_l2_and_mean_abs_can_disagree():
    # Block A = [1, 0, 0, 0]: L2 1.0, mean 0.25. Block B = [0.4] * 4: L2 0.8, mean 0.4.
    weight = torch.tensor([[1.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.4, 0.4]])
    kept = {}
    for score in ("l2", "mean_abs"):
        layer = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        sp = sb.sparsify(nn.Sequential(layer), "magnitude", sparsity=0.5, block=(2, 2),
                         block_score=score)
        kept[score] = sp.masks()["0.weight"][0, 0].item()
    assert kept == {"l2": True, "mean_abs": False}


def test_edge_blocks_and_convolutions():
    # 10 x (3*3*3 = 27) matrix with 4x8 blocks: 3 block rows (last holds 2 rows), 4 block cols.
    conv = nn.Conv2d(3, 10, 3)
    assert block_grid(tuple(conv.weight.shape), (4, 8)) == (10, 27, 3, 4)
    sp = sb.sparsify(nn.Sequential(conv), "magnitude", sparsity=0.5, block=(4, 8))
    mask = sp.masks()["0.weight"]
    assert _blocks_are_whole(mask, (4, 8))
    assert sp.block_sparsity()["0.weight"] == 0.5  # 6 of 12 blocks
    plain = sp.finalize()
    assert _blocks_are_whole(plain[0].weight != 0, (4, 8))


def test_block_helpers_by_hand():
    scores = torch.arange(12.0).view(3, 4)
    # (2, 2) blocks: [[0,1,4,5], [2,3,6,7]], [[8,9], [10,11]] (edge row).
    expected_l2 = torch.tensor([[(0 + 1 + 16 + 25) ** 0.5, (4 + 9 + 36 + 49) ** 0.5],
                                [(64 + 81) ** 0.5, (100 + 121) ** 0.5]])
    assert torch.allclose(block_scores(scores, (2, 2), "l2"), expected_l2)
    assert torch.allclose(block_scores(scores, (2, 2), "mean"),
                          torch.tensor([[2.5, 4.5], [8.5, 10.5]]))
    mask = expand_blocks(torch.tensor([[True, False], [False, True]]), (3, 4), (2, 2))
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, True]]


@pytest.mark.parametrize("method", ["vd", "l0"])
def test_block_is_refused_for_vd_and_l0(method):
    with pytest.raises(ValueError, match="block= is available for magnitude and random"):
        sb.sparsify(nn.Sequential(nn.Linear(4, 4)), method, block=(2, 2))


def test_bad_block_values():
    with pytest.raises(ValueError, match="block = \\(0, 2\\) is invalid"):
        sb.sparsify(nn.Sequential(nn.Linear(4, 4)), "magnitude", sparsity=0.5, block=(0, 2))
    with pytest.raises(ValueError, match="block_score"):
        sb.sparsify(nn.Sequential(nn.Linear(4, 4)), "magnitude", sparsity=0.5,
                    block_score="max")


def test_a_block_larger_than_the_whole_layer_is_refused_by_name():
    with pytest.raises(ValueError) as info:
        check_block("fc.weight", (64, 64), (4096, 4096))
    assert str(info.value).startswith("block (4096, 4096) is larger than the whole 64x64 "
                                      "matrix of layer fc.weight (shape (64, 64))")
    # A conv's matrix is (out, in*kh*kw): 16 x 9 here.
    with pytest.raises(ValueError, match=r"whole 16x9 matrix of layer conv1.weight"):
        check_block("conv1.weight", (16, 1, 3, 3), (32, 32))


@pytest.mark.parametrize("shape, block", [
    ((64, 64), (64, 64)),     # exactly one block: the layer's own shape
    ((16, 1, 3, 3), (16, 16)),  # wider than the 9 columns, but as tall as the 16 rows
    ((10, 512), (16, 1)),     # taller than the 10 rows: one partial block row of 512 blocks
    ((64, 64), (4, 4)),
])
def test_blocks_that_fit_a_side_are_accepted(shape, block):
    check_block("w", shape, block)  # no error
