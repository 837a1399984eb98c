"""Wall time of one-shot pruning (Wanda, SparseGPT, one-shot magnitude) on the study's image and
translation models, on one thread.

One-shot pruning runs the calibration batches through the model once per pruned layer (each
layer is calibrated on the already-pruned layers before it), so beside each wall time the script
prints its ratio to one dense pass over the same calibration batches, measured in the same
process: the number that carries over to a faster or slower machine. Weights are random (the
time does not depend on their values); the load average is printed, since the machine is shared.

    .venv/bin/python benchmarks/one_shot.py [--batches 4] [--nm 2:4] [--methods wanda sparsegpt]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from sparsebench import models
from sparsebench.methods.one_shot import prune_one_shot


def image_model(batches: int):
    """resnet50-small (width 16, 28x28x1) with batches of 32 images, as Fashion-MNIST; every
    convolution and the classifier pruned (the default selection, as the image study)."""
    model = models.create("resnet50-small", in_channels=1, num_classes=10)
    data = [torch.randn(32, 1, 28, 28) for _ in range(batches)]
    return "resnet50-small, batches of 32 images", model, data, None


def translation_model(batches: int):
    """transformer-tiny with the Ding task's 8k vocabulary, batches of 16 x 24 tokens; the
    shared embedding / softmax matrix pruned too (``include="*"``, as the translation study),
    calibrated on the output projection's input."""
    model = models.create("transformer-tiny", vocab_size=8000)
    data = [(torch.randint(4, 8000, (16, 24)), torch.randint(4, 8000, (16, 24)))
            for _ in range(batches)]
    return "transformer-tiny (8k vocab), batches of 16 x 24 tokens", model, data, "*"


@torch.no_grad()
def dense_pass_seconds(model, data) -> float:
    """Returns the seconds of one eval-mode forward pass over all calibration batches."""
    model.eval()
    started = time.perf_counter()
    for batch in data:
        model(*batch) if isinstance(batch, tuple) else model(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4, help="calibration batches per model")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nm", default=None, help="N:M instead of --sparsity, e.g. 2:4")
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"],
                        help="one-shot techniques (catalogue names)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nm = tuple(int(v) for v in args.nm.split(":")) if args.nm else None
    target = dict(nm=nm) if nm else dict(sparsity=args.sparsity)
    print(f"one thread; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"target {args.nm or args.sparsity}")
    for build in (image_model, translation_model):
        title, model, data, include = build(args.batches)
        dense_pass_seconds(model, data)  # warm-up
        dense = dense_pass_seconds(model, data)
        print(f"\n{title}: {args.batches} batches, one dense pass {dense:.3f} s")
        for method in args.methods:
            pruned = copy.deepcopy(model)
            started = time.perf_counter()
            report = prune_one_shot(pruned, data, method, include=include, **target)
            seconds = time.perf_counter() - started
            print(f"  {method:>20}: {seconds:7.2f} s = {seconds / dense:6.1f} dense passes "
                  f"({len(report.layers)} layers, sparsity {report.sparsity:.3f})")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
