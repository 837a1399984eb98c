"""Every technique trains on a CUDA GPU: masks, gates and log alphas live on the model's device,
the target is met, and the finalized model compiles to a sparse module that runs on the GPU.

Skipped without a GPU (CI never has one); run where one is present with
``pytest tests/test_cuda_training.py``.
"""

import pytest
import torch
from torch import nn

import sparsebench as sb
from sparsebench.inference import compact_sparse
from sparsebench.init import rescale_for_sparse_fan_in

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU here; CI never has one")


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 4))


def _train(method: str, steps: int = 150, lr: float = 3e-3, **kwargs):
    torch.manual_seed(0)
    model = _model().cuda()
    sp = sb.sparsify(model, method, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Labels are the sign pattern of two input pixels: learnable, so the loss must fall.
    for _ in range(steps):
        x = torch.randn(64, 3, 8, 8, device="cuda")
        y = (x[:, 0, 0, 0] > 0).long() * 2 + (x[:, 1, 4, 4] > 0).long()
        loss = nn.functional.cross_entropy(model(x), y) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    model.eval()
    return sp, sp.sparsity(), sp.finalize()


@pytest.mark.parametrize("method, kwargs", [
    ("magnitude", dict(sparsity=0.9)),
    ("random", dict(sparsity=0.9)),
    ("magnitude", dict(sparsity=0.9, block=(4, 4))),
])
def test_pruning_on_cuda_meets_the_target(method, kwargs):
    schedule = sb.GradualSchedule(begin_step=10, end_step=100, frequency=10)
    _, achieved, plain = _train(method, schedule=schedule, **kwargs)
    assert achieved == pytest.approx(0.9, abs=2e-3)  # counted in whole 4x4 blocks for block
    assert all(p.is_cuda for p in plain.parameters())
    assert sb.sparsity_report(plain).sparsity == pytest.approx(achieved, abs=1e-6)


@pytest.mark.parametrize("method, kwargs", [
    ("vd", dict(kl_weight=1e-3, warmup_end=50)),
    ("l0", dict(l0_weight=1e-3, init_log_alpha=0.5, warmup_end=50)),
])
def test_learned_sparsity_on_cuda(method, kwargs):
    _, achieved, plain = _train(method, steps=300, lr=1e-2, **kwargs)
    assert achieved > 0.2
    assert sb.sparsity_report(plain).sparsity == pytest.approx(achieved, abs=1e-6)


def test_a_model_trained_on_cuda_compiles_and_runs_sparse_there():
    schedule = sb.GradualSchedule(begin_step=10, end_step=100, frequency=10)
    _, _, plain = _train("magnitude", sparsity=0.9, schedule=schedule)
    cpu_model = plain.cpu()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        ref = cpu_model(x)
        compiled, _ = compact_sparse(cpu_model)
        got = compiled.cuda()(x.cuda()).cpu()
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_augmented_init_rescales_a_cuda_model_from_masks_loaded_on_the_cpu():
    # Masks come off disk on the CPU while the retraining model already sits on the GPU.
    torch.manual_seed(0)
    model = nn.Linear(8, 2).cuda()
    before = model.weight.detach().clone()
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :2] = True  # row 0 keeps 2 of 8 inputs: scale sqrt(8 / 2) = 2
    mask[1] = True      # row 1 keeps all 8: scale 1
    rescale_for_sparse_fan_in(model, {"weight": mask})
    assert torch.allclose(model.weight[0], 2 * before[0])
    assert torch.allclose(model.weight[1], before[1])
