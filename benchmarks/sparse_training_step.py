"""One training step (forward + backward + Adam) of a 4-layer Linear stack: dense against
SparseTrainableLinear with a fixed mask (issue 27).

The stack is 4 x (width x width) Linears with ReLUs between, batch 128, MSE loss. Three
candidates run on the same initial weights, timed in interleaved rounds
(``sparsebench.inference.timing``, the order rotating each round):

- ``dense``: plain nn.Linear, no mask work (the cheapest dense step);
- ``dense+mask``: the same with the gradient multiplied by the mask before Adam, which is how a
  fixed sparse pattern is trained densely (pruned weights stay zero);
- ``sparse``: SparseTrainableLinear (CSR forward, CSR-of-Wᵀ input gradient, SDDMM weight
  gradient, Adam on the nonzeros only).

Prints, per width and sparsity, the ratios dense/sparse and dense+mask/sparse (above 1: sparse is
faster) with their range over both sides' quartiles, the kernel path, and the load average
before and after; one warning line when the spread or the load makes a ratio unreliable. Writes
no files.

    .venv/bin/python benchmarks/sparse_training_step.py [--sizes 1024 4096]
        [--sparsities 0.9 0.95] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import kernel_path
from sparsebench.inference.sparse_training import SparseTrainableLinear
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line

BATCH = 128
LAYERS = 4


def stack(width: int) -> nn.Sequential:
    """Return the dense 4-layer stack (ReLU between the Linears)."""
    mods: list[nn.Module] = []
    for i in range(LAYERS):
        mods.append(nn.Linear(width, width))
        if i < LAYERS - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def candidates(width: int, sparsity: float) -> dict[str, object]:
    """Return name → zero-argument training step, all three starting from the same weights."""
    torch.manual_seed(0)
    base = stack(width)
    masks = {}
    with torch.no_grad():
        for i, m in enumerate(base):
            if isinstance(m, nn.Linear):
                masks[i] = torch.rand_like(m.weight) >= sparsity
                m.weight.mul_(masks[i])
    sparse = nn.Sequential(*[SparseTrainableLinear.from_linear(m, masks[i]) if i in masks
                             else copy.deepcopy(m) for i, m in enumerate(base)])
    dense, dense_masked = copy.deepcopy(base), copy.deepcopy(base)
    x, y = torch.randn(BATCH, width), torch.randn(BATCH, width)

    def step_of(model: nn.Module, mask_grads: bool):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            with torch.enable_grad():  # the shared timer runs its candidates under no_grad
                opt.zero_grad(set_to_none=True)
                F.mse_loss(model(x), y).backward()
                if mask_grads:
                    for i, mask in masks.items():
                        model[i].weight.grad.mul_(mask)
                opt.step()

        return step

    return {"dense": step_of(dense, False), "dense+mask": step_of(dense_masked, True),
            "sparse": step_of(sparse, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the idle cores, at least 1)")
    args = parser.parse_args()
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            parser.error(f"--sparsities must lie in [0, 1); got {s}")
    watch = LoadWatch(args.threads)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}; kernels={kernel_path()}; {watch.choice.describe()}; "
          f"loadavg(1/5/15m) before: {load_before}")
    print(f"{LAYERS} x (width x width) Linear, batch {BATCH}, Adam; median of {args.rounds} "
          f"interleaved rounds; ratio [range over quartiles], above 1: sparse faster")
    problems: dict[str, list[str]] = {}
    for width in args.sizes:
        for sparsity in args.sparsities:
            t = interleaved_rounds(candidates(width, sparsity), repeats=args.rounds, warmup=2)
            vs = {base: Comparison.of(t[base], t["sparse"], (base, "sparse"))
                  for base in ("dense", "dense+mask")}
            label = f"width {width}, {sparsity:.0%} sparse"
            problems.update({f"{label}: {b}": c.problems() for b, c in vs.items()})
            d, s = vs["dense"].baseline, vs["dense"].candidate
            print(f"{label}: dense {d.median * 1e3:.1f} ms, sparse {s.median * 1e3:.1f} ms | "
                  f"dense/sparse {vs['dense'].cell()} | "
                  f"dense+mask/sparse {vs['dense+mask'].cell()}", flush=True)
    print("loadavg(1/5/15m) after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)
    watch.restore()


if __name__ == "__main__":
    main()
