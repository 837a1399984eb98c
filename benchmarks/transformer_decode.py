"""What pruning the Transformer's shared embedding buys at inference: decoding time of a trained
translation model pruned to a sparsity with and without its embedding / softmax matrix.

The weights of a finished dense run are pruned by magnitude in one shot, per matrix (the
quality of such a model is not the point, only its speed: dense and sparse run the same
pruned function, so they decode the same tokens), compiled with ``compile_sparse`` for each
batch, and timed against the same model run dense, side by side in one process:

    .venv/bin/python benchmarks/transformer_decode.py results/study/runs/dense-r0-8e4375a16bdc
    .venv/bin/python benchmarks/transformer_decode.py RUN_DIR --sparsity 0.95 --threads 2

Prints, per batch size, dense and sparse milliseconds per greedy decoding (medians and their
spread) and their ratio with its range over both sides' quartiles, for "linears" (the library's
default selection) and "linears+embedding" (the study's), then one warning line when the spread
or the machine's load makes a ratio unreliable. Threads default to the idle cores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import sparsebench as sb
from sparsebench import rundir
from sparsebench.inference import PerformanceModel, machine_context
from sparsebench.inference.bench import bench_model, format_results, workload_for
from sparsebench.inference.timing import LoadWatch, unreliable_line


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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    watch = LoadWatch(args.threads)
    spec = rundir.read_result(args.run_dir)["config"]["model"]
    print(f"model: {spec['name']} from {args.run_dir}, one-shot magnitude pruning to "
          f"{args.sparsity:.0%} per matrix\n{watch.choice.describe()}\n{machine_context()}")
    pm = PerformanceModel()
    problems: dict[str, list[str]] = {}
    for label, include in (("linears", None), ("linears+embedding", ["*"])):
        model = _pruned(args.run_dir, args.sparsity, include)
        workload = workload_for(model, spec.get("options", {}))
        results = bench_model(model, workload, args.batches, repeats=args.repeats,
                              perf_model=pm, layer_repeats=0)
        print(f"\n{label}: {workload.describe}")
        print(format_results(results, per_layer=False, warn=False))
        print("sparse layers: " + ", ".join(
            f"b{r.batch} {sum(d.use_sparse for d in r.plan)}/{len(r.plan)}" for r in results))
        problems.update({f"{label} b{r.batch}": r.comparison.problems() for r in results})
    print(f"\nafter: {machine_context()}")
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
