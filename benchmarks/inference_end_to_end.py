"""End-to-end inference: dense vs compiled-sparse models, side by side in one process.

Trains nothing. Builds LeNet-300-100, a small CPU ResNet (resnet20, 32x32 images) and
transformer-tiny with random weights, prunes each one-shot to 90% and 95% with
``sparsebench.sparsify(model, "magnitude", sparsity=s).finalize()``, compiles it per batch
size (per-layer dense/CSR choice from the calibrated performance model) and prints dense /
sparse ratios of medians of interleaved rounds: a forward of a batch of images, or greedy
decoding of a batch of generated source sentences for the Transformer.

    .venv/bin/python benchmarks/inference_end_to_end.py                   # all (~5-10 min)
    .venv/bin/python benchmarks/inference_end_to_end.py --models lenet300 --batches 1 16
    .venv/bin/python benchmarks/inference_end_to_end.py --layers         # + per-layer tables

Random weights decode to random tokens; decoding length is the same for dense and sparse
(the same greedy choices up to float rounding), so the ratio is a per-token ratio. The
machine is shared: every ratio comes with its range over both sides' quartiles, the thread count
defaults to the idle cores, and one warning line at the end names the ratios that the spread
of their rounds or the machine's load makes unreliable.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

import sparsebench
from sparsebench import models
from sparsebench.inference import PerformanceModel, machine_context
from sparsebench.inference.bench import bench_model, format_results, workload_for
from sparsebench.inference.timing import LoadWatch, unreliable_line

MODELS = {
    "lenet300": ("lenet300", {}),
    "resnet20": ("resnet20", {}),
    "transformer-tiny": ("transformer-tiny", {"dropout": 0.0}),
}


def main() -> None:
    """Parse arguments, prune, compile and time each model; print the ratio tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds per cell")
    p.add_argument("--budget", type=float, default=20.0, help="max seconds of timing per cell")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    p.add_argument("--layers", action="store_true", help="print per-layer tables too")
    p.add_argument("--src-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=24)
    args = p.parse_args()
    watch = LoadWatch(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    pm = PerformanceModel()
    print(watch.choice.describe())
    print(f"before: {machine_context()}")
    start = time.time()
    summary = []
    for key in args.models:
        name, options = MODELS[key]
        for s in args.sparsities:
            torch.manual_seed(0)
            model = models.create(name, **options).eval()
            sparsebench.sparsify(model, "magnitude", sparsity=s).finalize()
            work = workload_for(model, options, src_len=args.src_len, max_len=args.max_len)
            results = bench_model(
                model,
                work,
                args.batches,
                repeats=args.repeats,
                budget_s=args.budget,
                perf_model=pm,
                layer_repeats=7 if args.layers else 0,
            )
            print(f"\n== {key} at {s:.0%} sparsity: {work.describe}  [{machine_context()}]")
            print(format_results(results, per_layer=args.layers, warn=False))
            summary += [(key, s, r) for r in results]
    print(f"\nafter: {machine_context()}  ({time.time() - start:.0f} s)")
    print("\nsummary: dense / sparse end to end, ratio of medians [range over both "
          "sides' quartiles], ! where the rounds do not support it")
    print(f"{'model':<18} {'sparsity':>8} " + " ".join(f"{'b' + str(b):>24}" for b in args.batches))
    for key in args.models:
        for s in args.sparsities:
            cells = [r.comparison.cell() for k, sp, r in summary if k == key and sp == s]
            print(f"{key:<18} {s:8.2f} " + " ".join(f"{c:>24}" for c in cells))
    problems = {f"{k} {sp:.0%} b{r.batch}": r.comparison.problems() for k, sp, r in summary}
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
