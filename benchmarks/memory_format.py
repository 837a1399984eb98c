"""Training steps of the fmnist-resnet preset in the NCHW and the channels-last layout, side by
side in one process, for each technique (the A/B behind ``run.memory_format: auto``).

Each (technique, layout) pair is a run prepared by the runner itself (``prepare``: its model,
optimizer and technique) on one fixed batch of the task's real data. The pairs are timed in
interleaved rounds (``sparsebench.inference.timing``, the order rotating each round), so a
burst of load on this shared machine hits them alike; each speed-up is a ratio of medians with
its range over both sides' quartiles, and one warning line says when the spread of the rounds
or the machine's load makes one unreliable (threads default to the idle cores). Before timing,
the first loss of
the two layouts is printed: dense, magnitude and random pruning agree to float rounding; VD and
L0 draw their noise in memory order, so the same seed gives each weight a different sample in
the two layouts and their first losses differ by that sample.

    .venv/bin/python benchmarks/memory_format.py --threads 1 [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse

import torch

from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line
from sparsebench.train import build_config
from sparsebench.train.loop import prepare

TECHNIQUES = {  # the runner's method and --set values, one budget, 90% target
    "dense": ("dense", None, []),
    "magnitude": ("magnitude", 0.9, []),
    "random": ("random", 0.9, []),
    "VD": ("variational_dropout", None, ["sparsity.kl_weight=1e-4"]),
    "L0": ("l0", None, ["sparsity.l0_weight=1e-2"]),
}
LAYOUTS = ("contiguous", "channels_last")


def _step(prepared, batch) -> float:
    loss = prepared.task.loss(prepared.model, batch)
    if prepared.sparsifier is not None:
        loss = loss + prepared.sparsifier.penalty()
    prepared.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    prepared.optimizer.step()
    if prepared.sparsifier is not None:
        prepared.sparsifier.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="fmnist-resnet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    watch = LoadWatch(args.threads)
    runs, batch = {}, None
    for name, (method, sparsity, extra) in TECHNIQUES.items():
        for layout in LAYOUTS:
            config = build_config(args.task, method=method, sparsity=sparsity,
                                  overrides=[*extra, f"run.memory_format={layout}"])
            runs[name, layout] = prepare(config)  # seeded: both layouts start identical
            if batch is None:
                batch = runs[name, layout].task.next_batch(torch.device("cpu"))
    print(f"{args.task}, torch {torch.__version__}; {watch.choice.describe()}; median of "
          f"{args.rounds} interleaved rounds x {args.steps} steps")
    for name in TECHNIQUES:
        # The first step's loss, before any noise-drawing technique has diverged the two.
        torch.manual_seed(1)
        first = _step(runs[name, "contiguous"], batch)
        torch.manual_seed(1)
        second = _step(runs[name, "channels_last"], batch)
        print(f"{name}: first loss {first:.6f} (NCHW) vs {second:.6f} (channels-last)")

    def steps_of(prepared):  # noqa: ANN001, ANN202
        def call() -> None:
            with torch.enable_grad():  # the shared timer runs its candidates under no_grad
                for _ in range(args.steps):
                    _step(prepared, batch)

        return call

    rounds = interleaved_rounds({f"{n}/{layout}": steps_of(p) for (n, layout), p in runs.items()},
                                repeats=args.rounds, warmup=0)
    print("\n| technique | NCHW s/step (iqr) | channels-last s/step (iqr) | speed-up "
          "[range over quartiles] |\n|---|---|---|---|")
    problems = {}
    for name in TECHNIQUES:
        c = Comparison.of(rounds[f"{name}/contiguous"], rounds[f"{name}/channels_last"],
                          ("NCHW", "channels-last"))
        problems[name] = c.problems()
        nchw, nhwc = c.baseline, c.candidate
        print(f"| {name} | {nchw.median / args.steps:.3f} ({nchw.relative:.0%}) | "
              f"{nhwc.median / args.steps:.3f} ({nhwc.relative:.0%}) | {c.cell()} |")
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
