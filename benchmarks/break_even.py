"""Is a compiled layer ever slower than dense? Every sparsity from 0 to 99%, side by side.

For each layer shape, batch and sparsity, prunes a random Linear by magnitude, lets
``compile_sparse`` choose (dense, CSR or BSR) with this machine's performance model, and times
the dense layer against the compiled one in interleaved rounds. Prints the choice and the
ratio dense / compiled with its range over both sides' quartiles. The goal of issue 23: every
ratio at least 0.95 (a layer chosen dense is the dense layer itself, 1.0 up to noise).
``--load`` starts a competing busy process after calibrating, as a neighbour's job would.

    .venv/bin/python benchmarks/break_even.py                     # 3 shapes x 3 batches x 10
    .venv/bin/python benchmarks/break_even.py --load --threads 2  # loaded, both cores asked
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from torch import nn

from sparsebench.inference import PerformanceModel, compile_sparse, machine_context
from sparsebench.inference.compile import MIN_SPEEDUP
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line

SPARSITIES = (0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def pruned_linear(in_f: int, out_f: int, sparsity: float) -> nn.Linear:
    """Returns a random Linear whose ``round(sparsity * size)`` smallest weights are zero."""
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        scores = layer.weight.abs().flatten()
        layer.weight.view(-1)[scores.argsort()[: round(sparsity * scores.numel())]] = 0.0
    return layer.eval()


def main() -> None:
    """Parse arguments, calibrate, then time every (shape, batch, sparsity) cell."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["4096x1024", "1024x1024", "512x2048"],
                   help="OUTxIN layer shapes")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    p.add_argument("--repeats", type=int, default=31, help="interleaved rounds per cell")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    p.add_argument("--load", action="store_true",
                   help="run a busy competing process while timing (after calibrating)")
    args = p.parse_args()
    watch = LoadWatch(args.threads)
    print(watch.choice.describe())
    print(f"before: {machine_context()}  min_speedup {MIN_SPEEDUP:g}")
    torch.manual_seed(0)
    perf_model = PerformanceModel()
    print(f"layers judged at threads {perf_model.thread_counts}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    # Compile every cell first, so that every calibration (each block size, each thread count)
    # is taken before the competitor starts: the quiet part of the story.
    cells = []
    for out_f, in_f in shapes:
        for batch in args.batches:
            for sparsity in args.sparsities:
                dense = pruned_linear(in_f, out_f, sparsity)
                compiled = compile_sparse(dense, batch_hint=batch, perf_model=perf_model)
                cells.append((f"{out_f}x{in_f} b{batch} s{sparsity:g}", dense, compiled,
                              torch.randn(batch, in_f)))
    competitor = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  if args.load else None)
    start, problems, worst = time.time(), {}, (float("inf"), "")
    try:
        for label, dense, compiled, x in cells:
            choice = ("dense" if type(compiled) is nn.Linear
                      else f"{type(compiled).__name__}{getattr(compiled, 'block', '')}")
            rounds = interleaved_rounds({"dense": lambda d=dense, x=x: d(x),
                                         "compiled": lambda c=compiled, x=x: c(x)},
                                        repeats=args.repeats)
            ratio = Comparison.of(rounds["dense"], rounds["compiled"], ("dense", "compiled"))
            problems[label] = ratio.problems()
            if choice != "dense":
                worst = min(worst, (ratio.headline, label))
            print(f"  {label:<22} {choice:<18} dense/compiled {ratio.cell()}", flush=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    print(f"after:  {machine_context()}  ({time.time() - start:.0f} s)")
    if worst[1]:
        print(f"slowest layer run sparse: {worst[1]} at {worst[0]:.2f}x dense")
    line = unreliable_line(problems, watch.problem())
    if line:
        print(line)
    watch.restore()


if __name__ == "__main__":
    main()
