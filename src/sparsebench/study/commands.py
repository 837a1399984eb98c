"""The study's subcommands: ``sweep``, ``status``, ``import-runs``, ``import-published``,
``report``, ``bench-runs`` and ``rescore``."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..rundir import check_output_dir
from .published import FILES, import_published
from .report import write_report
from .store import SOURCES, RunStore
from .sweep import load_sweep, reusable_run_ids, save_sweep_text, sweep_definitions

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the study's subcommands (see the module docstring) to ``sparsebench``."""
    for add in (_add_sweep, _add_status, _add_import_runs, _add_import_published, _add_report,
                _add_bench_runs, _add_rescore, _add_one_shot):
        add(subparsers)


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
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
    swp.add_argument("--threads", type=int, default=None,
                     help="CPU threads per run (local default: torch's own for one worker, the "
                          "cores shared out for more); not part of a run's identity, so a "
                          "study may resume with another value")
    swp.add_argument("--device", default=None,
                     help="cpu or cuda[:N] for every run (default: the task's, the CPU); not "
                          "part of a run's identity, so a study may go on on a GPU machine")
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


def _add_status(subparsers: argparse._SubParsersAction) -> None:
    stat = subparsers.add_parser(
        "status",
        help="where a study stands: runs by status, runs in progress, training time left",
        description="Reads the run store(s), also while their sweeps run, and prints each "
                    "sweep's runs by status, the retraining / small-dense points still to be "
                    "planned, each running run's step, speed and heartbeat, and an "
                    "estimate of the training time left for one worker.",
    )
    stat.add_argument("--store", type=Path, nargs="+", required=True, help="SQLite run store(s)")
    stat.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="estimate the time left for runs on this kind of device (cpu, cuda), "
                           "from the finished runs that trained there (default cpu)")
    stat.set_defaults(func=_status)


def _add_import_runs(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser(
        "import-runs",
        help="copy the runs another store of ours finished (a study continued elsewhere)",
        description="Copies the runs that ended in another run store (finished or "
                    "diverged: e.g. a copy of this store that went on on a GPU machine) into "
                    "this one, where this one has no row for them or has them still pending or "
                    "running. Runs this store already holds as ended are kept; runs that failed "
                    "there stay to be run here. Safe while sweeps run on this store.",
    )
    merge.add_argument("--from", dest="source", type=Path, required=True,
                       help="the store whose ended runs are copied")
    merge.add_argument("--into", type=Path, required=True, help="the store they go into")
    merge.add_argument("--runs-dir", type=Path, default=None,
                       help="where their run directories are here (default: 'runs' beside "
                            "--into)")
    merge.add_argument("--sweep", type=Path, default=None,
                       help="copy only the runs this sweep file plans (its first phase, and "
                            "retraining from its magnitude runs): reuse a study's runs in a "
                            "store of their own")
    merge.set_defaults(func=_import_runs)


def _add_import_published(subparsers: argparse._SubParsersAction) -> None:
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


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    rep = subparsers.add_parser(
        "report",
        help="write the study's report (HTML, figures, CSVs) from a run store",
        description="Writes DIR/index.html with the study's figures and data-computed "
                    "sentences, PNGs and one CSV per table beside it.",
    )
    rep.add_argument("--store", type=Path, nargs="+", required=True,
                     help="SQLite run store(s); several are read as one (e.g. one per task)")
    rep.add_argument("--published", action="store_true",
                     help="also draw the study's published runs (shipped with sparsebench) "
                          "without importing them into a store first")
    rep.add_argument("--out", type=Path, required=True, help="folder for the report")
    rep.add_argument("--budget", type=Path, nargs="+", default=None, metavar="STORE",
                     help="store(s) of a budget sweep (the same arms at several step budgets, "
                          "kept out of the frontiers): adds the section on the budget")
    rep.add_argument("--source", choices=SOURCES, default=None,
                     help="only published runs or only ours (default: both)")
    rep.add_argument("--model-family", default=None,
                     help="only one model family, e.g. transformer or resnet50")
    rep.add_argument("--tolerance", type=float, default=1.0,
                     help="percentage points from a sparsity level that still count as it "
                          "(default 1, as the study's tables)")
    rep.set_defaults(func=_report)


def _add_bench_runs(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench-runs",
        help="time a store's best sparse models dense vs compiled-sparse, into the store",
        description="For each model family in the store, times the best finished model of "
                    "each technique at the given sparsity levels, every block-sparse "
                    "magnitude run and the dense baseline: the finalized model run dense "
                    "against its compiled sparse copy, interleaved in this process, at each "
                    "batch size. Results go to the store's inference table (the report's "
                    "inference and block-sparsity sections read them); runs already timed "
                    "are skipped unless --force. Stop other work on the machine first: the "
                    "ratios are only as quiet as the machine.",
    )
    bench.add_argument("--store", type=Path, required=True, help="SQLite run store")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 16, 128],
                       help="batch sizes (default 1 16 128)")
    bench.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    bench.add_argument("--levels", type=float, nargs="+", default=[0.9, 0.95],
                       help="sparsity levels whose best models are timed (default 0.9 0.95)")
    bench.add_argument("--tolerance", type=float, default=1.0,
                       help="percentage points from a level that still count as it")
    bench.add_argument("--family", default=None, help="only this model family")
    bench.add_argument("--repeats", type=int, default=15, help="interleaved rounds per batch")
    bench.add_argument("--force", action="store_true", help="time again runs already timed")
    bench.add_argument("--recalibrate", action="store_true",
                       help="measure the inference performance model again (see "
                            "bench-inference --recalibrate)")
    bench.set_defaults(func=_bench_runs)


def _add_rescore(subparsers: argparse._SubParsersAction) -> None:
    resc = subparsers.add_parser(
        "rescore",
        help="add the metrics a task reports now to runs that finished without them",
        description="For each finished run in the store whose result lacks a metric its task "
                    "now reports (e.g. the translation task's reference loss, added after the "
                    "first study runs), evaluates the finalized model again for those metrics "
                    "only, on the same splits, and adds them to its result.json and store row. "
                    "Metrics a run already has are evaluated again only when named with "
                    "--recompute. Safe while sweeps run.",
    )
    resc.add_argument("--store", type=Path, required=True, help="SQLite run store")
    resc.add_argument("--runs-dir", type=Path, default=None,
                      help="where the run directories are (default: each run's own run_dir)")
    resc.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    resc.add_argument("--threads", type=int, default=None, help="torch threads")
    resc.add_argument("--recompute", nargs="+", default=[], metavar="METRIC",
                      help="evaluate these again even where runs have them (e.g. loss, after "
                           "its definition changed); never the headline metric")
    resc.set_defaults(func=_rescore)


def _sweep(args: argparse.Namespace) -> int:
    from .driver import run_sweep
    from .executors import make_executor

    spec = load_sweep(args.file)
    if args.report is not None:
        check_output_dir(args.report, "--report")
    runs_dir = args.runs_dir or args.store.resolve().parent / "runs"
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    if args.device is not None:
        import torch

        if args.device != "cpu" and not args.device.startswith("cuda"):
            raise ValueError(f"--device must be cpu or cuda[:N], got {args.device!r}.")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is available here.")
    executor = make_executor(args.executor, workers=args.workers, address=args.address,
                             cpus=spec.cpus, gpus=spec.gpus, threads=args.threads)
    with RunStore(args.store) as store:
        try:
            result = run_sweep(spec, store, executor, runs_dir, stale_after=args.stale_after,
                               retry_failed=args.retry_failed, device=args.device)
        except KeyboardInterrupt:
            return 130
        if args.report is not None:
            print(f"report written to {write_report(store, args.report)}")
    return 1 if result.failed else 0


def _status(args: argparse.Namespace) -> int:
    from .progress import format_progress, study_progress

    for index, path in enumerate(args.store):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such run store.")
        with RunStore(path) as store:
            progress = study_progress(store, device=args.device)
            print(("\n" if index else "") + format_progress(progress))
    return 0


def _import_runs(args: argparse.Namespace) -> int:
    for path in (args.source, args.into):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such run store.")
    runs_dir = args.runs_dir or args.into.resolve().parent / "runs"
    only = None
    if args.sweep is not None:
        planned = reusable_run_ids(load_sweep(args.sweep))
        only = lambda run: run.id in planned  # noqa: E731
    with RunStore(args.source) as source, RunStore(args.into) as into:
        counts = into.import_runs(source, runs_dir, only)
    print(f"{args.into}: {counts['imported']} runs imported from {args.source}, "
          f"{counts['kept']} already ended here kept, {counts['failed_there']} that failed "
          f"there left to run here")
    return 0


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
    for path in [*args.store, *(args.budget or [])]:
        if not path.exists():
            raise FileNotFoundError(f"no run store at {path}; create it with "
                                    "'sparsebench import-published --store FILE' or a sweep.")
    budget_runs = None
    if args.budget:
        budget_runs = []
        for path in args.budget:
            with RunStore(path) as budget:
                budget_runs += budget.runs(source="ours")
    if args.tolerance <= 0:
        raise ValueError(f"--tolerance must be a positive number of percentage points, "
                         f"got {args.tolerance}.")
    check_output_dir(args.out)
    with tempfile.TemporaryDirectory() as scratch:
        if len(args.store) == 1 and not args.published:
            store = RunStore(args.store[0])
        else:
            store = merged_store(args.store, Path(scratch) / "merged.db")
            if args.published:
                import_published(store)
        with store:
            label = ", ".join(p.name for p in args.store) + (
                " and the published runs" if args.published else "")
            index = write_report(store, args.out, source=args.source,
                                 model_family=args.model_family, tolerance_pp=args.tolerance,
                                 list_published=not args.published, label=label,
                                 budget_runs=budget_runs)
    print(f"report written to {index}")
    return 0


def merged_store(paths: list[Path], into: Path) -> RunStore:
    """Returns a new store at ``into`` holding the runs and inference timings of every store in
    ``paths`` (a run id found twice keeps the last file's row)."""
    merged = RunStore(into)
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no run store at {path}.")
        with RunStore(path) as store:
            merged.upsert(store.runs())
            for timing in store.inference():
                merged.record_inference(timing)
            for name, text in sweep_definitions(store).items():
                save_sweep_text(merged, name, text)
    return merged


def _bench_runs(args: argparse.Namespace) -> int:
    from .speed import runs_to_time, time_runs

    if not args.store.exists():
        raise FileNotFoundError(f"no run store at {args.store}.")
    if args.threads < 1 or any(b < 1 for b in args.batch):
        raise ValueError(f"--threads and --batch must be positive, got {args.threads} and "
                         f"{args.batch}.")
    with RunStore(args.store) as store:
        runs = runs_to_time(store, levels=args.levels, tolerance_pp=args.tolerance)
        if args.family:
            runs = [r for r in runs if r.model_family == args.family]
        print(f"{len(runs)} runs to time at batch {args.batch} with {args.threads} thread(s)")
        time_runs(store, runs, args.batch, threads=args.threads, repeats=args.repeats,
                  force=args.force, recalibrate=args.recalibrate)
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from .rescore import rescore_runs

    if not args.store.is_file():
        raise FileNotFoundError(f"no run store at {args.store}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    with RunStore(args.store) as store:
        counts = rescore_runs(store, runs_dir=args.runs_dir, device=args.device,
                              threads=args.threads, recompute=args.recompute)
    print(f"{args.store}: {counts.rescored} runs given metrics, {counts.complete} with nothing "
          f"to add, {counts.no_files} without their run directory or model and "
          f"{counts.unreadable} unreadable (both left as they are)")
    return 0


def _add_one_shot(subparsers: argparse._SubParsersAction) -> None:
    one = subparsers.add_parser(
        "one-shot",
        help="prune a store's trained dense models once (Wanda, SparseGPT, magnitude), as runs",
        description="For each finished dense run of the store whose model is on disk, prunes a "
                    "copy at each sparsity with each one-shot technique, from calibration "
                    "batches of the run's own training data, optionally fine-tunes it a few "
                    "steps with the mask fixed, evaluates it on the run's validation and test "
                    "splits and stores the result as a run (the report draws them on the "
                    "frontiers). Rows already stored are skipped, and several processes may "
                    "share one store: each row is pruned by the one that claims it.",
    )
    one.add_argument("--store", type=Path, required=True, help="SQLite run store")
    one.add_argument("--method", nargs="+", required=True,
                     help="one-shot techniques (e.g. wanda sparsegpt omp)")
    one.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9],
                     help="targets (default 0.5 0.7 0.8 0.9)")
    one.add_argument("--calibration-batches", type=int, default=8,
                     help="training batches to calibrate on (default 8)")
    one.add_argument("--fine-tune-steps", type=int, default=0,
                     help="steps of training with the mask fixed after pruning (default 0)")
    one.add_argument("--runs-dir", type=Path, default=None,
                     help="where the run directories are (default: each run's own run_dir)")
    one.add_argument("--include", nargs="+", default=None, metavar="PATTERN",
                     help="the weights to prune (select_layers glob patterns; default: those "
                          "the store's runs of the same task that prune while they train "
                          "prune, so one-shot and joint runs count sparsity over the same "
                          "weights)")
    one.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN",
                     help="weights to leave dense (default as --include)")
    one.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    one.add_argument("--threads", type=int, default=None, help="torch threads")
    one.set_defaults(func=_one_shot)


def _one_shot(args: argparse.Namespace) -> int:
    from .one_shot import one_shot_runs

    if not args.store.is_file():
        raise FileNotFoundError(f"no run store at {args.store}.")
    with RunStore(args.store) as store:
        try:
            counts = one_shot_runs(store, methods=args.method, sparsities=args.sparsity,
                                   calibration_batches=args.calibration_batches,
                                   fine_tune_steps=args.fine_tune_steps,
                                   runs_dir=args.runs_dir, device=args.device,
                                   threads=args.threads, include=args.include,
                                   exclude=args.exclude)
        except KeyboardInterrupt:
            print("one-shot pruning stopped; the rows it finished are stored, the one in "
                  "progress is pruned again next time", file=sys.stderr)
            return 130
    elsewhere = (f", {counts.elsewhere} being pruned by another process" if counts.elsewhere
                 else "")
    print(f"{args.store}: {counts.stored} one-shot runs stored, {counts.present} already there, "
          f"{counts.no_model} dense runs without their model file{elsewhere}")
    return 0

