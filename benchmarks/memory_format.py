"""Training steps of the fmnist-resnet preset in the NCHW and the channels-last layout, side by
side in one process, for each technique (the A/B behind ``run.memory_format: auto``).

Each (technique, layout) pair is a run prepared by the runner itself (``prepare``: its model,
optimizer and technique) on one fixed batch of the task's real data. The pairs are timed
round-robin in a fresh random order each round and the median per-step time of each is kept,
so a burst of load on this shared machine hits them alike. Before timing, the first loss of
the two layouts is printed: dense, magnitude and random pruning agree to float rounding; VD and
L0 draw their noise in memory order, so the same seed gives each weight a different sample in
the two layouts and their first losses differ by that sample.

    .venv/bin/python benchmarks/memory_format.py --threads 1 [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

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
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(0)
    runs, batch = {}, None
    for name, (method, sparsity, extra) in TECHNIQUES.items():
        for layout in LAYOUTS:
            config = build_config(args.task, method=method, sparsity=sparsity,
                                  overrides=[*extra, f"run.memory_format={layout}"])
            runs[name, layout] = prepare(config)  # seeded: both layouts start identical
            if batch is None:
                batch = runs[name, layout].task.next_batch(torch.device("cpu"))
    print(f"{args.task}, torch {torch.__version__}, {torch.get_num_threads()} threads, load "
          f"average {os.getloadavg()[0]:.1f}; median of {args.rounds} interleaved rounds x "
          f"{args.steps} steps")
    for name in TECHNIQUES:
        # The first step's loss, before any noise-drawing technique has diverged the two.
        torch.manual_seed(1)
        first = _step(runs[name, "contiguous"], batch)
        torch.manual_seed(1)
        second = _step(runs[name, "channels_last"], batch)
        print(f"{name}: first loss {first:.6f} (NCHW) vs {second:.6f} (channels-last)")
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    order = list(runs)
    for _ in range(args.rounds):
        random.shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                _step(runs[key], batch)
            samples[key].append((time.perf_counter() - start) / args.steps)
    print("\n| technique | NCHW s/step | channels-last s/step | speed-up |\n|---|---|---|---|")
    for name in TECHNIQUES:
        nchw = statistics.median(samples[name, "contiguous"])
        nhwc = statistics.median(samples[name, "channels_last"])
        print(f"| {name} | {nchw:.3f} | {nhwc:.3f} | {nchw / nhwc:.2f}x |")


if __name__ == "__main__":
    main()
