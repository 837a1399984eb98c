"""A compiled model with and without the count-class layout of its CSR weights.

Builds one of ``end_to_end.py``'s workloads (random weights, pruned), compiles it once with
``compile_sparse`` and times the same compiled model in interleaved rounds: its sparse Linears
taking the layout from ``PANEL_LAYOUT_MIN_ROWS`` rows on (the default) or never, and its
sparse convolutions taking it where the kernels say it pays (``sparse_conv.CONV_LAYOUT``) or
never. Only our own model runs in the process, so the ratio is free of other engines' thread
pools:

    .venv-bench/bin/python -W ignore benchmarks/panel_layout_ab.py --model bert --batch 8 \
        --threads 2
    .venv-bench/bin/python -W ignore benchmarks/panel_layout_ab.py --model resnet50 --batch 1

Prints both medians and plain CSR / layout (above 1: the layout is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end as e2e  # noqa: E402

from sparsebench.inference import (  # noqa: E402
    compile_sparse,
    retain_freed_memory,
    sparse_conv,
    sparse_linear,
)
from sparsebench.inference.timing import machine_context  # noqa: E402

BUILDERS = {"bert": e2e.build_bert, "resnet50": e2e.build_resnet,
            "gpt2-decode": e2e.build_gpt2}
DEFAULT_MIN_ROWS = sparse_linear.PANEL_LAYOUT_MIN_ROWS


def main() -> None:
    """Compile the workload, then time it with and without the layout, side by side."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=list(BUILDERS), default="bert")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    opts = e2e.Options(models=(args.model,), batches=(args.batch,), threads=(args.threads,),
                       engines=("torch", "sparse"))
    work = e2e.BUILDERS[args.model](opts)
    inputs = work.inputs(args.batch)
    print(f"{work.describe}; {work.pruned}; batch {args.batch}, {args.threads} thread(s)")
    print(machine_context())
    fast = compile_sparse(work.module, batch_hint=args.batch * work.rows_per_sample,
                          example_input=inputs)
    sides = {"layout": (DEFAULT_MIN_ROWS, True), "plain CSR": (1 << 62, False)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    try:
        with torch.no_grad():
            for rows, convs in sides.values():  # warm: layouts built, caches filled
                sparse_linear.PANEL_LAYOUT_MIN_ROWS, sparse_conv.CONV_LAYOUT = rows, convs
                fast(*inputs)
            for _ in range(args.rounds):
                for name, (rows, convs) in sides.items():
                    sparse_linear.PANEL_LAYOUT_MIN_ROWS, sparse_conv.CONV_LAYOUT = rows, convs
                    t0 = time.perf_counter()
                    fast(*inputs)
                    times[name].append(time.perf_counter() - t0)
    finally:
        sparse_linear.PANEL_LAYOUT_MIN_ROWS, sparse_conv.CONV_LAYOUT = DEFAULT_MIN_ROWS, True
    med = {name: statistics.median(t) for name, t in times.items()}
    spread = {name: (max(t) - min(t)) / med[name] for name, t in times.items()}
    for name in sides:
        print(f"   {name:<10} {med[name] * 1e3:9.1f} ms median of {args.rounds} "
              f"(rounds spread {spread[name]:.0%})")
    print(f"   plain CSR / layout: {med['plain CSR'] / med['layout']:.2f}x")


if __name__ == "__main__":
    main()
