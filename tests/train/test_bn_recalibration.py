"""BatchNorm statistics re-estimated on the finished model before evaluation (VD and L0 train a
noisy network whose running statistics do not fit the deterministic one that is evaluated)."""

import pytest
import torch
from torch import nn

from sparsebench.train import build_config
from sparsebench.train.loop import bn_batches_for, recalibrate_batch_norm


class _FixedBatches:
    """A task stand-in: hands out the given batches in turn; its loss runs the model."""

    def __init__(self, batches):
        self.batches = list(batches)

    def next_batch(self, device):
        return self.batches.pop(0).to(device), None

    def loss(self, model, batch):
        return model(batch[0]).sum()


def test_running_statistics_are_the_equal_weight_average_of_the_batches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    model = nn.Sequential(conv, nn.BatchNorm2d(3, momentum=0.1))
    model[1].running_mean.fill_(5.0)  # stale statistics, as after noisy training
    model.eval()
    batches = [torch.randn(4, 2, 3, 3) * (i + 1) for i in range(3)]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    # By hand: each batch's per-channel mean and unbiased variance, averaged with equal weight.
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True)
                       for o in outs]).mean(0)
    weight_before = conv.weight.clone()

    used = recalibrate_batch_norm(model, _FixedBatches(batches), torch.device("cpu"), 3)

    assert used == 3
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # restored
    assert torch.equal(conv.weight, weight_before)


def test_a_model_without_batch_norm_is_left_alone():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batch_norm(model, _FixedBatches([]), torch.device("cpu"), 50) == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method, sparsity, expected", [
    ("variational_dropout", None, 50), ("l0", None, 50), ("magnitude", 0.9, 0),
    ("random", 0.9, 0), ("dense", None, 0),
])
def test_default_batches_per_method(method, sparsity, expected):
    config = build_config("fmnist-lenet300", method=method, sparsity=sparsity)
    assert bn_batches_for(config) == expected


def test_an_explicit_count_wins_and_a_negative_one_is_refused():
    config = build_config("fmnist-lenet300", method="magnitude", sparsity=0.9,
                          overrides=["eval.bn_batches=7"])
    assert bn_batches_for(config) == 7
    with pytest.raises(ValueError, match="eval.bn_batches = -1 is invalid"):
        build_config("fmnist-lenet300", overrides=["eval.bn_batches=-1"])
