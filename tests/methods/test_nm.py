"""N:M structured sparsity: the mask function against hand-worked groups, and the N:M option of
training-time magnitude and random pruning (issue 25)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.methods.magnitude import MagnitudeConfig
from sparsebench.nm import check_nm, check_nm_width, nm_mask, nm_sparsity


def _groups_kept(keep: torch.Tensor, m: int) -> torch.Tensor:
    """Returns the kept count of every group of m consecutive inputs of the (out, in) view."""
    matrix = keep.reshape(keep.shape[0], -1)
    return matrix.reshape(matrix.shape[0], -1, m).sum(dim=-1)


def test_nm_mask_keeps_the_two_largest_of_each_group_of_four_worked_by_hand():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 5.0, 1.0],
                           [1.0, 1.0, 1.0, 1.0, 9.0, 8.0, 7.0, 6.0]])
    expected = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0],
                             # equal scores: the earlier positions go first (a stable sort)
                             [0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(nm_mask(scores, (2, 4)), expected)


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4), (3, 3)])
def test_nm_mask_has_exactly_n_nonzeros_per_group(nm):
    n, m = nm
    keep = nm_mask(torch.randn(6, 4 * m), nm)
    assert torch.equal(_groups_kept(keep, m), torch.full((6, 4), n))
    assert nm_sparsity(nm) == pytest.approx(1 - n / m)


def test_nm_mask_prunes_a_given_count_per_group_on_the_way_to_n_m():
    keep = nm_mask(torch.randn(3, 8), (2, 4), pruned=1)
    assert torch.equal(_groups_kept(keep, 4), torch.full((3, 2), 3))


@pytest.mark.parametrize("bad", [(5, 4), (0, 4), (2, 0), (2,), (2.0, 4), "2:4", (True, 4)])
def test_bad_n_m_is_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match=r"1 <= N <= M"):
        check_nm(bad)


def test_a_width_not_a_multiple_of_m_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"fc has 6 inputs .* not a multiple of M = 4"):
        check_nm_width("fc", (3, 6), (2, 4))
    with pytest.raises(ValueError, match=r"not a multiple of M = 4"):
        nm_mask(torch.randn(2, 6), (2, 4))
    # a conv's inputs are in·kh·kw: 3·3·3 = 27 is not whole groups, 4·3·3 = 36 is
    with pytest.raises(ValueError, match=r"27 inputs"):
        check_nm_width("conv", (8, 3, 3, 3), (2, 4))
    check_nm_width("conv", (8, 4, 3, 3), (2, 4))
    check_nm_width("c1d", (8, 6), (2, 4), transposed=True)  # stored (in, out): 8 inputs


def _mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_magnitude_pruning_with_nm_keeps_the_largest_two_of_every_four():
    model = _mlp()
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    sparsifier = sb.sparsify(model, "magnitude", sparsity=0.5, nm=(2, 4))
    for name, keep in sparsifier.masks().items():
        rows, cols = keep.shape
        assert torch.equal(_groups_kept(keep, 4), torch.full((rows, cols // 4), 2))
        # independently: within each group the kept |w| are at least every pruned |w|
        w = dense[name].abs().reshape(keep.shape[0], -1, 4)
        k = keep.reshape(w.shape)
        smallest_kept = torch.where(k, w, torch.inf).amin(-1)
        largest_pruned = torch.where(~k, w, -torch.inf).amax(-1)
        assert bool((smallest_kept >= largest_pruned).all())
    assert sparsifier.sparsity() == 0.5
    model = sparsifier.finalize()
    report = sb.sparsity_report(model)
    assert report.sparsity == 0.5


def test_random_pruning_with_nm_and_a_conv_groups_along_in_kh_kw():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 2 * 2, 4))
    sparsifier = sb.sparsify(model, "random", sparsity=0.75, nm=(1, 4))
    conv = sparsifier.masks()["0.weight"]
    assert torch.equal(_groups_kept(conv, 4), torch.ones(8, 9, dtype=torch.long))


def test_a_target_other_than_one_minus_n_over_m_is_refused():
    with pytest.raises(ValueError, match=r"fixes every layer's sparsity at 0.5.*0.6"):
        sb.sparsify(_mlp(), "magnitude", sparsity=0.6, nm=(2, 4))
    with pytest.raises(ValueError, match=r"fixes every layer's sparsity at 0.5"):
        sb.sparsify(_mlp(), "magnitude", sparsity=0.5, nm=(2, 4), layer_sparsity={"0": 0.0})


def test_nm_is_refused_on_a_layer_whose_width_is_not_whole_groups():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"Layer 0.weight has 6 inputs"):
        sb.sparsify(model, "magnitude", sparsity=0.5, nm=(2, 4))
    sb.sparsify(model, "magnitude", sparsity=0.5, nm=(2, 4), exclude="0")  # the rest is fine


def test_nm_config_reads_lists_and_refuses_blocks_and_bad_values():
    assert MagnitudeConfig.from_dict({"nm": [2, 4]}).nm == (2, 4)
    with pytest.raises(ValueError, match=r"MagnitudeConfig.nm = \(4, 2\) is invalid"):
        MagnitudeConfig(nm=(4, 2))
    with pytest.raises(ValueError, match=r"block .* when nm is set"):
        MagnitudeConfig(nm=(2, 4), block=(1, 4))


def test_nm_under_a_gradual_schedule_prunes_round_s_m_per_group():
    model = _mlp()
    schedule = sb.GradualSchedule(begin_step=0, end_step=4, frequency=1)
    sparsifier = sb.sparsify(model, "magnitude", sparsity=0.5, nm=(2, 4), schedule=schedule)
    for step in range(1, 5):
        sparsifier.step()
        s = schedule.sparsity_at(step, 0.5)
        pruned = min(2, int(s * 4 + 0.5))
        keep = sparsifier.masks()["2.weight"]
        assert torch.equal(_groups_kept(keep, 4), torch.full((8, 8), 4 - pruned))
    assert sparsifier.sparsity() == 0.5


def test_a_transposed_conv1d_groups_along_its_stored_first_dimension():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    model = nn.Sequential(pytorch_utils.Conv1D(6, 8))  # y = x·W + b, W stored (in=8, out=6)
    sparsifier = sb.sparsify(model, "magnitude", sparsity=0.5, nm=(2, 4))
    keep = sparsifier.masks()["0.weight"]
    assert keep.shape == (8, 6)
    assert torch.equal(_groups_kept(keep.t(), 4), torch.full((6, 2), 2))
