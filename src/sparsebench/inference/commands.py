"""``sparsebench export``, ``bench-inference`` and ``sample``: the inference subcommands.

    sparsebench export RUN_DIR --out model.sparse.safetensors
    sparsebench bench-inference RUN_DIR --batch 1 16 128     # threads: the idle cores
    sparsebench sample RUN_DIR --prompt "ROMEO:" --chars 400  # a GRU language model's text

Each reads a finished run directory (``sparsebench.rundir``): the model is rebuilt from
``result.json``'s ``config.model`` and loaded from ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from sparsebench import rundir
from sparsebench.inference import sample_command

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``export`` and ``bench-inference`` subcommands to the ``sparsebench`` parser."""
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a compact sparse safetensors file",
        description=(
            "Write the finalized model of RUN_DIR as one safetensors file with its sparse "
            "layers in CSR (or BSR where the zeros form whole blocks) and small indices; "
            "prints its size on disk against the dense weights. Load it with "
            "sparsebench.inference.load_sparse(FILE)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run directory")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="file to write")
    p.add_argument(
        "--choose",
        choices=("size", "speed"),
        default="size",
        help="store a layer sparse when that is smaller (default), or only when the "
        "performance model says it is faster at --batch",
    )
    p.add_argument(
        "--batch", type=int, nargs="+", default=[1], help="batch sizes for --choose speed"
    )
    p.set_defaults(func=_export)

    b = subparsers.add_parser(
        "bench-inference",
        help="time a run's model dense vs compiled-sparse, end to end and per layer",
        description=(
            "Compile RUN_DIR's model for each batch size (per-layer dense/CSR/BSR choice from "
            "the calibrated performance model) and time it against the dense model, "
            "interleaved in this process: medians with their spread, throughput, per-layer "
            "times and ratios with their range over both sides' quartiles, and a one-line "
            "warning when the spread or the machine's load makes a ratio unreliable. "
            "Classifiers run a "
            "forward of random images; a Transformer greedily decodes a batch of generated "
            "source sentences."
        ),
    )
    b.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run directory")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 16, 128], help="batch sizes")
    b.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the idle cores, i.e. cores minus the rounded 1-minute "
        "load average, at least 1)",
    )
    b.add_argument("--repeats", type=int, default=15, help="interleaved rounds per batch")
    b.add_argument("--image-size", type=int, default=None, help="image side for classifiers")
    b.add_argument("--src-len", type=int, default=16, help="source length (Transformer)")
    b.add_argument("--max-len", type=int, default=24, help="decoding steps (Transformer)")
    b.add_argument("--no-layers", action="store_true", help="skip the per-layer tables")
    b.add_argument(
        "--calibration-s",
        type=float,
        default=1.0,
        help="seconds per new performance-model calibration (cached per machine)",
    )
    b.add_argument(
        "--recalibrate",
        action="store_true",
        help="measure the performance model again for every layer shape instead of using "
        "the cached calibration (a calibration taken on a busy machine is measured again "
        "anyway once the machine is quiet)",
    )
    b.add_argument(
        "--dedicated-cores",
        action="store_true",
        help="the machine's cores are the model's alone: judge each layer at the chosen "
        "thread count only (by default a layer goes sparse only if it also wins at one "
        "thread, as it may get on a machine shared with other work)",
    )
    b.set_defaults(func=_bench)
    sample_command.register(subparsers)


def _load(run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Return the run's finalized model and its ``config.model`` spec."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    result = rundir.read_result(run_dir)
    try:
        spec = result["config"]["model"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir / rundir.RESULT_FILE} has no config.model entry") from exc
    if not (run_dir / rundir.MODEL_FILE).exists():
        raise FileNotFoundError(f"{run_dir / rundir.MODEL_FILE} does not exist")
    return rundir.load_finalized_model(run_dir), spec


def _positive(name: str, values: list[int]) -> None:
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values}")


def _export(args: argparse.Namespace) -> int:
    from sparsebench.inference import compact_sparse, compile_sparse, plan_sparse, save_sparse

    _positive("--batch", args.batch)
    model, spec = _load(args.run_dir)
    if args.choose == "size":
        compiled, plan = compact_sparse(model)
    else:
        plan = plan_sparse(model, batch_hint=args.batch)
        compiled = compile_sparse(model, plan=plan)
    for d in plan:  # once here; compile_sparse logs its decisions at DEBUG only
        print(
            f"  {d.name:<34} {d.kind:<7} density={d.density:.3f} -> "
            f"{'sparse' if d.use_sparse else 'dense'} ({d.reason})"
        )
    report = save_sparse(compiled, args.out, model_spec=spec)
    print(report)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sparsebench.inference import PerformanceModel, machine_context
    from sparsebench.inference.bench import bench_model, format_results, workload_for
    from sparsebench.inference.timing import LoadWatch

    _positive("--batch", args.batch)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be a positive integer, got {args.repeats}")
    if args.calibration_s <= 0:
        raise ValueError(f"--calibration-s must be > 0, got {args.calibration_s}")
    model, spec = _load(args.run_dir)
    workload = workload_for(
        model,
        spec.get("options", {}),
        image_size=args.image_size,
        src_len=args.src_len,
        max_len=args.max_len,
    )
    print(f"model: {spec['name']} {spec.get('options', {})}; timed call: {workload.describe}")
    if workload.batches is not None:
        skipped = [b for b in args.batch if b not in workload.batches]
        if skipped == args.batch:
            raise ValueError(f"this model is timed at batch {list(workload.batches)} only "
                             f"({workload.describe}); pass --batch 1")
        if skipped:
            print(f"skipped batch {skipped}: this model is timed at batch "
                  f"{list(workload.batches)} only")
    watch = LoadWatch(args.threads)  # chooses and sets torch's threads; restored below
    try:
        print(watch.choice.describe())
        print(f"before: {machine_context()}")
        pm = PerformanceModel(budget_s=args.calibration_s, recalibrate=args.recalibrate,
                              thread_counts=(torch.get_num_threads(),) if args.dedicated_cores
                              else None)
        results = bench_model(
            model,
            workload,
            args.batch,
            repeats=args.repeats,
            perf_model=pm,
            layer_repeats=0 if args.no_layers else 7,
        )
        load = watch.problem()
        print(f"after:  {machine_context()}")
    finally:
        watch.restore()
    print(f"up to {args.repeats} interleaved rounds per batch, dense and sparse in this process")
    print(format_results(results, per_layer=not args.no_layers, load=load))
    return 0
