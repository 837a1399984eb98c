"""Training steps through the runner's sparse step (``run.sparse_step``, issue 27): SET and RigL
with their mask updates on a Linear stack, and a task preset's model with a fixed mask.

Part 1, ``--stack``: a 4-layer width x width Linear stack (ReLU between, batch 128, MSE, Adam)
at each ``--sparsities``. One timed call is ``--delta-t`` optimizer steps, the last of them a
mask update, so a per-step time includes its share of the update: for RigL a dense step with
the dense gradient, the drop-and-grow, and the rebuilt CSR layout. Candidates, from the same
initial weights:

- ``dense``: plain nn.Linear, no mask;
- ``set off`` / ``rigl off``: the technique through ``sparsify()`` on the dense path with a mask
  (what every run trained before this issue);
- ``set on`` / ``rigl on``: the same with ``SparseTrainingStep(mode="on")``.

Part 2, ``--preset NAME``: the preset's model and real training batches (the task's own loss),
magnitude pruning at ``--preset-sparsity`` of the weights ``--include`` selects (default:
every Linear and the shared embedding, as the translation study) with a fixed mask from the
first step, over ``--preset-steps`` steps per call: ``dense`` (no technique: the dense
model's own step, the reference of the ratios), ``off`` (dense with mask), ``on`` (every
eligible layer sparse: the Linears, and the shared embedding in its lookup and its output
projection) and ``auto`` (the layers the performance model predicts faster; the first call
calibrates). Convolution weights stay dense in every mode.

Ratios are per step, side by side in one process (``sparsebench.inference.timing``:
interleaved rounds, order rotating), with the range over both sides' quartiles; the load
average before and after; one warning line when the spread or the load makes a ratio
unreliable. Writes no files.

    .venv/bin/python benchmarks/sparse_training_techniques.py --stack 4096 [--threads N]
    .venv/bin/python benchmarks/sparse_training_techniques.py --preset ding-transformer
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sparse_training_step import BATCH, LAYERS, stack  # this folder's: the same stack
from torch import nn

import sparsebench as sb
from sparsebench.inference import kernel_path
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line
from sparsebench.schedules import GradualSchedule
from sparsebench.train.sparse_step import SparseTrainingStep


def _steps(model: nn.Module, opt: torch.optim.Optimizer, sp, count: int,
           loss_of: Callable[[nn.Module, int], torch.Tensor]) -> Callable[[], None]:
    """Returns a call that runs ``count`` training steps (the sparsifier stepped after each)."""
    def call() -> None:
        with torch.enable_grad():  # the shared timer runs its candidates under no_grad
            for i in range(count):
                opt.zero_grad(set_to_none=True)
                loss_of(model, i).backward()
                opt.step()
                if sp is not None:
                    sp.step()
    return call


def stack_candidates(width: int, sparsity: float, delta_t: int, modes: list[str]
                     ) -> dict[str, Callable[[], None]]:
    """Returns name -> call of ``delta_t`` steps, one mask update at its last step."""
    torch.manual_seed(0)
    base = stack(width)
    x, y = torch.randn(BATCH, width), torch.randn(BATCH, width)

    def loss_of(model: nn.Module, _: int) -> torch.Tensor:
        return F.mse_loss(model(x), y)

    dense = copy.deepcopy(base)
    out = {"dense": _steps(dense, torch.optim.Adam(dense.parameters(), lr=1e-4), None, delta_t,
                           loss_of)}
    for technique in ("set", "rigl"):
        for mode in modes:
            model = copy.deepcopy(base)
            # Updates every delta_t steps for as long as the benchmark runs; RigL's drop
            # fraction decays over end_step, here far away: about its initial 0.3 throughout.
            sp = sb.sparsify(model, technique, sparsity=sparsity, layer_sparsity="uniform",
                             schedule=GradualSchedule(0, 10**9, delta_t))
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            sp.use_optimizer(opt)
            if mode == "on":
                SparseTrainingStep(sp, opt, "on").resume(0)
            out[f"{technique} {mode}"] = _steps(model, opt, sp, delta_t, loss_of)
    return out


def preset_candidates(name: str, sparsity: float, steps: int, include: list[str] | None
                      ) -> dict[str, Callable[[], None]]:
    """Returns name -> call of ``steps`` training steps of the preset's model, mask fixed."""
    from sparsebench.train import build_config
    from sparsebench.train.loop import _resolve_model_options, memory_format
    from sparsebench.train.tasks import make_task

    config = build_config(name)
    task = make_task(config)
    _resolve_model_options(config, task)
    batches = [task.next_batch(torch.device("cpu")) for _ in range(steps)]
    torch.manual_seed(0)
    base = sb.models.create(config.model.name, **config.model.options)
    base = base.to(memory_format=memory_format(config, base))  # as the runner trains it

    def loss_of(model: nn.Module, i: int) -> torch.Tensor:
        return task.loss(model, batches[i])

    dense = copy.deepcopy(base)  # no technique at all: the dense model's own step
    out = {"dense": _steps(dense, torch.optim.Adam(dense.parameters(), lr=1e-4), None, steps,
                           loss_of)}
    for mode in ("off", "on", "auto"):
        model = copy.deepcopy(base)
        # No schedule: the mask is fixed from step 0.
        sp = sb.sparsify(model, "magnitude", sparsity=sparsity, include=include)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        control = SparseTrainingStep(sp, opt, mode)
        control.resume(0)
        out[mode] = _steps(model, opt, sp, steps, loss_of)
        out[mode].control = control  # type: ignore[attr-defined]
    return out


def _report(label: str, times: dict[str, list[float]], per_call: int, base: str,
            problems: dict[str, list[str]]) -> None:
    parts = [f"{label}:"]
    for name, samples in times.items():
        parts.append(f"{name} {sorted(samples)[len(samples) // 2] / per_call * 1e3:.1f} ms/step")
    print(" ".join(parts[:1]) + " " + ", ".join(parts[1:]))
    for name in times:
        if name == base:
            continue
        c = Comparison.of(times[base], times[name], (base, name))
        problems[f"{label}: {base}/{name}"] = c.problems()
        print(f"    {base}/{name} {c.cell()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", type=int, nargs="*", default=[], metavar="WIDTH")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9])
    parser.add_argument("--delta-t", type=int, default=10,
                        help="steps per mask update (RigL's paper: 100; default 10, harsher)")
    parser.add_argument("--modes", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="the stack's SET/RigL candidates: on the dense path with a mask "
                             "(off) and with the sparse step (on)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--preset-sparsity", type=float, default=0.9)
    parser.add_argument("--preset-steps", type=int, default=5)
    parser.add_argument("--include", nargs="*", default=["*"],
                        help="the preset's sparsified weights (default '*': every Linear and "
                             "the shared embedding, as the translation study's sweeps; give "
                             "no pattern for the library's default, the Linears alone)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the idle cores, at least 1)")
    args = parser.parse_args()
    if not args.stack and args.preset is None:
        parser.error("give --stack WIDTH ... and/or --preset NAME")
    if args.delta_t < 1:
        parser.error("--delta-t must be a positive number of steps")
    watch = LoadWatch(args.threads)
    print(f"torch {torch.__version__}; kernels={kernel_path()}; {watch.choice.describe()}; "
          f"loadavg(1/5/15m) before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"median of {args.rounds} interleaved rounds; ratio [range over quartiles], above 1: "
          f"the second faster")
    problems: dict[str, list[str]] = {}
    for width in args.stack:
        for sparsity in args.sparsities:
            times = interleaved_rounds(stack_candidates(width, sparsity, args.delta_t,
                                                        args.modes),
                                       repeats=args.rounds, warmup=1)
            _report(f"{LAYERS} x {width}x{width}, batch {BATCH}, {sparsity:.0%}, one update "
                    f"per {args.delta_t} steps", times, args.delta_t, "dense", problems)
    if args.preset is not None:
        calls = preset_candidates(args.preset, args.preset_sparsity, args.preset_steps,
                                  args.include or None)
        times = interleaved_rounds(calls, repeats=args.rounds, warmup=1)
        _report(f"{args.preset}, magnitude {args.preset_sparsity:.0%} fixed mask", times,
                args.preset_steps, "dense", problems)
        for mode in ("on", "auto"):
            control = calls[mode].control  # type: ignore[attr-defined]
            why = ", ".join(sorted(set(control.skipped.values()))) or "none ineligible"
            print(f"    {mode}: sparse layers {len(control.sparse_layers)} of "
                  f"{len(control.sparsifier.layers)} (ineligible: {why})")
    print("loadavg(1/5/15m) after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)
    watch.restore()


if __name__ == "__main__":
    main()
