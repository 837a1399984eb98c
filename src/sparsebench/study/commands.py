"""The study's subcommands: ``sweep``, ``import-published`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .published import FILES, import_published
from .report import write_report
from .store import SOURCES, RunStore

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``sweep``, ``import-published`` and ``report`` to the ``sparsebench`` command."""
    swp = subparsers.add_parser(
        "sweep",
        help="run a sweep file's points into a run store (resumable, several processes safe)",
        description="Adds every point of the sweep file to the run store as pending, then "
                    "claims and trains them; retraining and small-dense points follow once "
                    "the magnitude runs they derive from are done. Stop it at any time and "
                    "run it again: finished runs are kept and never trained twice, and two "
                    "sweep processes on one store share the work.",
    )
    swp.add_argument("file", type=Path, help="sweep file (YAML; see sweeps/ for examples)")
    swp.add_argument("--store", type=Path, required=True, help="SQLite run store (created)")
    swp.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: this process (or a process pool with --workers > 1); "
                          "ray: one Ray task per run")
    swp.add_argument("--workers", type=int, default=None,
                     help="runs at once (local default 1; ray default: cluster CPUs / "
                          "resources.cpus)")
    swp.add_argument("--address", default=None,
                     help="Ray cluster to join (e.g. auto or ray://host:10001); default: "
                          "start a local instance")
    swp.add_argument("--runs-dir", type=Path, default=None,
                     help="folder for the run directories (default: 'runs' beside the store)")
    swp.add_argument("--retry-failed", action="store_true",
                     help="put this sweep's failed runs back to pending first")
    swp.add_argument("--report", type=Path, default=None,
                     help="write the report of the store to this folder at the end")
    swp.add_argument("--stale-after", type=float, default=600.0,
                     help="seconds without heartbeat after which another host's claim is taken "
                          "over (default 600)")
    swp.set_defaults(func=_sweep)

    imp = subparsers.add_parser(
        "import-published",
        help="read the study's published runs (shipped with sparsebench) into a run store",
        description="Reads the published results of 'The State of Sparsity in Deep Neural "
                    "Networks' (Apache-2.0, shipped as package data) into the run store, one "
                    "row per run with source 'published'. Re-running replaces them, never "
                    "duplicates them.",
    )
    imp.add_argument("--store", type=Path, required=True, help="SQLite run store (created)")
    imp.add_argument("--root", type=Path, default=None,
                     help="folder with sparse_rn50/ and sparse_transformer/ (default: the "
                          "package's copy)")
    imp.set_defaults(func=_import_published)

    rep = subparsers.add_parser(
        "report",
        help="write the study's report (HTML, figures, CSVs) from a run store",
        description="Writes DIR/index.html with the study's figures and data-computed "
                    "sentences, PNGs and one CSV per table beside it.",
    )
    rep.add_argument("--store", type=Path, required=True, help="SQLite run store")
    rep.add_argument("--out", type=Path, required=True, help="folder for the report")
    rep.add_argument("--source", choices=SOURCES, default=None,
                     help="only published runs or only ours (default: both)")
    rep.add_argument("--model-family", default=None,
                     help="only one model family, e.g. transformer or resnet50")
    rep.add_argument("--tolerance", type=float, default=1.0,
                     help="percentage points from a sparsity level that still count as it "
                          "(default 1, as the study's tables)")
    rep.set_defaults(func=_report)


def _sweep(args: argparse.Namespace) -> int:
    from .driver import run_sweep
    from .executors import make_executor
    from .sweep import load_sweep

    spec = load_sweep(args.file)
    runs_dir = args.runs_dir or args.store.resolve().parent / "runs"
    executor = make_executor(args.executor, workers=args.workers, address=args.address,
                             cpus=spec.cpus, gpus=spec.gpus)
    with RunStore(args.store) as store:
        try:
            result = run_sweep(spec, store, executor, runs_dir, stale_after=args.stale_after,
                               retry_failed=args.retry_failed)
        except KeyboardInterrupt:
            return 130
        if args.report is not None:
            print(f"report written to {write_report(store, args.report)}")
    return 1 if result.failed else 0


def _import_published(args: argparse.Namespace) -> int:
    with RunStore(args.store) as store:
        counts = import_published(store, args.root)
        width = max(len(c.path) for c in counts)
        for count in counts:
            print(f"{count.path:<{width}}  {count.csv_rows:>5} csv rows -> "
                  f"{count.store_rows:>5} runs")
        missing = len(FILES) - len(counts)
        total = sum(c.store_rows for c in counts)
        print(f"{total} published runs from {len(counts)} files in {args.store}"
              + (f" ({missing} known files absent)" if missing else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    if not args.store.exists():
        raise FileNotFoundError(f"no run store at {args.store}; create it with "
                                "'sparsebench import-published --store FILE' or a sweep.")
    if args.tolerance <= 0:
        raise ValueError(f"--tolerance must be a positive number of percentage points, "
                         f"got {args.tolerance}.")
    with RunStore(args.store) as store:
        index = write_report(store, args.out, source=args.source,
                             model_family=args.model_family, tolerance_pp=args.tolerance)
    print(f"report written to {index}")
    return 0
