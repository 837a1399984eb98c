"""What pruning the Transformer's shared embedding buys at inference: decoding time of a trained
translation model pruned to a sparsity with and without its embedding / softmax matrix.

The weights of a finished dense run are pruned by magnitude in one shot, per matrix (the
quality of such a model is not the point, only its speed: dense and sparse run the same
pruned function, so they decode the same tokens), compiled with ``compile_sparse`` for each
batch, and timed against the same model run dense, side by side in one process:

    .venv/bin/python benchmarks/transformer_decode.py results/study/runs/dense-r0-8e4375a16bdc
    .venv/bin/python benchmarks/transformer_decode.py RUN_DIR --sparsity 0.95 --threads 2

Prints, per batch size, dense and sparse milliseconds per greedy decoding and their ratio, for
"linears" (the library's default selection) and "linears+embedding" (the study's).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import sparsebench as sb
from sparsebench import rundir
from sparsebench.inference import PerformanceModel, machine_context
from sparsebench.inference.bench import bench_model, workload_for


def _pruned(run_dir: Path, sparsity: float, include: list[str] | None) -> torch.nn.Module:
    model = rundir.load_finalized_model(run_dir)
    sp = sb.sparsify(model, "magnitude", sparsity=sparsity, include=include)
    return sp.finalize().eval()


def main() -> None:
    """Prune, compile and time; print one table per selection."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished dense run of a translation task")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    spec = rundir.read_result(args.run_dir)["config"]["model"]
    print(f"model: {spec['name']} from {args.run_dir}, one-shot magnitude pruning to "
          f"{args.sparsity:.0%} per matrix\n{machine_context()}")
    pm = PerformanceModel()
    for label, include in (("linears", None), ("linears+embedding", ["*"])):
        model = _pruned(args.run_dir, args.sparsity, include)
        workload = workload_for(model, spec.get("options", {}))
        results = bench_model(model, workload, args.batches, repeats=args.repeats,
                              perf_model=pm)
        print(f"\n{label}: {workload.describe}")
        print("batch |  dense ms | sparse ms | dense/sparse | sparse layers")
        for r in results:
            chosen = sum(d.use_sparse for d in r.plan)
            print(f"{r.batch:5d} | {1e3 * r.dense_s:9.2f} | {1e3 * r.sparse_s:9.2f} | "
                  f"{r.ratio:11.2f}x | {chosen}/{len(r.plan)}")
    print(f"\nafter: {machine_context()}")


if __name__ == "__main__":
    main()
