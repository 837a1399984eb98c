"""Short real training runs: each technique reaches its sparsity and the model still learns."""

import pytest
import torch
from torch import nn

import sparsebench as sb


def _data(n=2048, features=20, classes=4, seed=0):
    """Gaussian clusters around fixed centres; ``seed`` draws the points, not the centres."""
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(99)) * 0.4
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centers[labels] + torch.randn(n, features, generator=g), labels


def _run(method, steps=300, lr=3e-3, **kwargs):
    x, y = _data()
    xt, yt = _data(seed=1)
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 4))
    sp = sb.sparsify(model, method, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    model.eval()
    achieved = sp.sparsity()
    plain = sp.finalize()
    with torch.no_grad():
        accuracy = (plain(xt).argmax(1) == yt).float().mean().item()
    return achieved, accuracy, sb.sparsity_report(plain).sparsity


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_pruning_reaches_target_and_learns(method):
    schedule = sb.GradualSchedule(begin_step=20, end_step=200, frequency=20)
    achieved, accuracy, real = _run(method, sparsity=0.9, schedule=schedule)
    assert achieved == pytest.approx(0.9, abs=1e-3)
    assert real == pytest.approx(achieved, abs=1e-6)
    assert accuracy > 0.65  # chance is 0.25; dense reaches about 0.75


def test_variational_dropout_learns_sparsity():
    achieved, accuracy, real = _run("vd", kl_weight=1e-4, warmup_end=100)
    assert achieved > 0.5
    assert real == pytest.approx(achieved, abs=1e-6)
    assert accuracy > 0.65


def test_l0_learns_sparsity():
    # log α must travel from 0.5 to below −2.4 before a gate closes: a larger step size.
    achieved, accuracy, real = _run("l0", lr=1e-2, l0_weight=1e-3, init_log_alpha=0.5,
                                    warmup_end=100)
    assert achieved > 0.3
    assert real == pytest.approx(achieved, abs=1e-6)
    assert accuracy > 0.65
