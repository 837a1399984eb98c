"""Training-step cost of each technique relative to the same dense model.

One step = forward + backward + optimizer step (+ the sparsifier's step and penalty). Every
method runs on its own copy of the same model; the methods are timed in interleaved rounds
(``sparsebench.inference.timing``, the order rotating each round), so a burst of load on this
shared machine hits all methods alike. Prints ratios of medians with their range over both
sides' quartiles, never raw times alone, and one warning line when the spread of the rounds or
the machine's load makes a ratio unreliable. Threads default to the idle cores.

The techniques are the catalogue's sparsifiers (``catalogue.sparsifiers()``), each with its
Config's defaults; those that take a target are at 90% from step 0. By default their masks
never change during the timed steps (the cost between mask updates); ``--update-every N``
updates them every N steps, so a per-step cost includes 1/N of an update (with N = ``--steps``
each timed block holds exactly one).

    .venv/bin/python benchmarks/training_step_cost.py [--rounds 7] [--steps 5] [--markdown]
        [--update-every N] [--only linear|transformer|resnet]
        [--tasks]   # also the runner's fmnist-resnet and ding-transformer presets, real batches
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

import sparsebench as sb
from sparsebench import models
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line
from sparsebench.methods import catalogue

DENSE = catalogue.DENSE
TARGET = 0.9  # the sparsity of every technique that takes a target
#: Never reached: with --update-every, the timed steps all fall inside the update window.
END_STEP = 10**9


def techniques() -> list[str]:
    """Returns the techniques timed, in the study's order: the catalogue's sparsifiers."""
    return catalogue.sparsifiers()


def sparsify_options(name: str, update_every: int | None) -> dict:
    """Returns ``sparsify``'s arguments for technique ``name``: its Config's defaults, and,
    when it takes a target, 90% from step 0 with masks updated every ``update_every`` steps
    (None: a schedule that ends at step 0, so the masks never change while timed)."""
    if not catalogue.get(name).takes_target:
        return {}
    if update_every is None:
        schedule = sb.GradualSchedule(begin_step=0, end_step=0, frequency=1)
    else:
        schedule = sb.GradualSchedule(begin_step=0, end_step=END_STEP, frequency=update_every)
    return dict(sparsity=TARGET, schedule=schedule)


def linear_stack():
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.ReLU())])
    x, y = torch.randn(128, 1024), torch.randn(128, 1024)
    return "Linear stack (4 x 1024x1024, batch 128)", model, lambda m: F.mse_loss(m(x), y)


def transformer_block():
    model = models.create("transformer-base", vocab_size=1000, n_encoder_layers=1,
                          n_decoder_layers=1)
    src = torch.randint(4, 1000, (16, 32))
    tgt = torch.randint(4, 1000, (16, 32))
    return ("Transformer block (1+1 layers, d 512, ff 2048, batch 16x32)", model,
            lambda m: m.loss(src, tgt))


def small_resnet():
    model = models.create("resnet20", in_channels=1, num_classes=10)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    return "ResNet-20 (28x28x1, batch 32)", model, lambda m: F.cross_entropy(m(x), y)


def task_workload(task: str):
    """Returns a builder timing the runner's own preset: its model, optimizer, technique
    attachment (the preset's schedule, a 90% target where one is taken) and loss, on one
    fixed batch of the task's real data."""
    from sparsebench.train import build_config
    from sparsebench.train.loop import prepare

    def build():
        runs = {}
        batch = None
        for name in [DENSE, *techniques()]:
            targeted = name != DENSE and catalogue.get(name).takes_target
            config = build_config(task, method=name, sparsity=TARGET if targeted else None)
            prepared = prepare(config)
            if batch is None:
                batch = prepared.task.next_batch(torch.device("cpu"))
            runs[name] = prepared
        title = f"{task} preset ({runs[DENSE].model.__class__.__name__})"
        return title, runs, lambda p: p.task.loss(p.model, batch)

    return build


def _prepare(base: nn.Module, method: str, update_every: int | None):
    model = copy.deepcopy(base)
    sp = (None if method == DENSE
          else sb.sparsify(model, method, **sparsify_options(method, update_every)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, sp, opt


def _step(model, sp, opt, loss_fn):
    loss = loss_fn(model)  # ``model`` is a Prepared run for task workloads
    if sp is not None:
        loss = loss + sp.penalty()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sp is not None:
        sp.step()


def measure(builder, rounds: int, steps: int, update_every: int | None
            ) -> tuple[str, dict[str, list[float]]]:
    """Returns the workload's name and each method's seconds per step, one value per round."""
    name, base, loss_fn = builder()
    methods = [DENSE, *techniques()]
    if isinstance(base, dict):  # a runner preset: prepared runs, loss takes the Prepared
        runs = {m: (p, p.sparsifier, p.optimizer) for m, p in base.items()}
    else:
        runs = {method: _prepare(base, method, update_every) for method in methods}
    for model, sp, opt in runs.values():  # warm-up: allocator, lazy init, first Adam state
        for _ in range(2):
            _step(model, sp, opt, loss_fn)

    def steps_of(method: str):
        model, sp, opt = runs[method]

        def call() -> None:
            with torch.enable_grad():  # the shared timer runs its candidates under no_grad
                for _ in range(steps):
                    _step(model, sp, opt, loss_fn)

        return call

    samples = interleaved_rounds({m: steps_of(m) for m in methods}, repeats=rounds, warmup=0)
    return name, {m: [t / steps for t in values] for m, values in samples.items()}


WORKLOADS = {"linear": linear_stack, "transformer": transformer_block, "resnet": small_resnet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--tasks", action="store_true",
                        help="also time the fmnist-resnet and ding-transformer presets")
    parser.add_argument("--update-every", type=int, default=None,
                        help="steps between mask updates of the techniques that take a target "
                             "(default: none while timed)")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append",
                        help="time only these synthetic workloads (repeatable)")
    args = parser.parse_args()
    update_every = args.update_every
    updates = f"masks updated every {update_every} steps" if update_every else "masks fixed"
    watch = LoadWatch(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}; {watch.choice.describe()}; median of {args.rounds} "
          f"interleaved rounds x {args.steps} steps; {updates}; ratios [range over quartiles]")
    reference = catalogue.reference()
    others = [m for m in techniques() if m != reference]
    short = {m: catalogue.get(m).display for m in techniques()}
    header = ["workload", "dense ms/step (iqr)", *(short[m] for m in techniques()),
              *(f"{short[m]} / {short[reference]}" for m in others)]
    rows = []
    builders = [WORKLOADS[w] for w in (args.only or WORKLOADS)]
    if args.tasks:
        builders += [task_workload("fmnist-resnet"), task_workload("ding-transformer")]
    problems: dict[str, list[str]] = {}
    for builder in builders:
        name, t = measure(builder, args.rounds, args.steps, update_every)
        vs = {m: Comparison.of(t[m], t[DENSE], (m, DENSE)) for m in techniques()}
        vs |= {f"{m}/{reference}": Comparison.of(t[m], t[reference], (m, reference))
               for m in others}
        problems.update({f"{name}: {m}": c.problems() for m, c in vs.items()})
        dense = vs[reference].candidate
        rows.append([name, f"{dense.median * 1e3:.1f} ({dense.relative:.0%})",
                     *(c.cell() for c in vs.values())])
        print(" | ".join(rows[-1]), flush=True)
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)
    if args.markdown:
        print("\n| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
