"""Trains again, into their run folders, finished runs of a store whose folders are gone.

A store keeps each run's metrics and full config but not its weights; the weights live in the
run folder, and a folder lost with a machine cannot be read back. `sparsebench one-shot` needs
the trained dense models, so this retrains them from the stored config (same seed, same data
order) and says how the retrained metric compares with the stored one: training here is
deterministic on one thread, so they should agree to rounding. The store is not changed.

    .venv/bin/python scripts/retrain_lost_runs.py --store results/study/ding-transformer.db
    .venv/bin/python scripts/retrain_lost_runs.py --store S --technique dense magnitude --dry-run

Resumable: a folder that already holds a result is not trained again, and an interrupted one
continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sparsebench.rundir import MODEL_FILE
from sparsebench.study.store import RunStore
from sparsebench.train.config import RunConfig
from sparsebench.train.loop import train


def lost_runs(store: RunStore, techniques: list[str]) -> list:
    """Returns the finished runs of ours with these techniques whose model file is gone."""
    return [run for technique in techniques
            for run in store.runs(source="ours", status="finished", technique=technique)
            if run.run_dir and not (Path(run.run_dir) / MODEL_FILE).is_file()]


def retrain(run, threads: int = 1) -> float | None:
    """Trains ``run`` again from its stored config into its run folder; returns the test
    metric the retraining reached (None if the result has none)."""
    config = RunConfig.from_dict(run.config)
    config.run.threads = threads
    if "memory_format" not in run.config.get("run", {}):
        # A run from before ``run.memory_format`` trained NCHW; its default since ("auto")
        # trains conv models channels-last, whose rounding differs enough that a 600-step
        # ResNet ended 1.2 points of top-1 away from the stored run (session 26).
        config.run.memory_format = "contiguous"
    result = train(config, run.run_dir, progress=False)
    return result.get("metrics", {}).get("test", {}).get(run.metric_name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="SQLite run store")
    p.add_argument("--technique", nargs="+", default=["dense"], help="which runs (default dense)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; the study's runs used 1 (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with RunStore(args.store) as store:
        lost = lost_runs(store, args.technique)
    print(f"{len(lost)} finished run(s) without their model on disk", flush=True)
    for run in lost:
        print(f"  {run.id} -> {run.run_dir}", flush=True)
        if args.dry_run:
            continue
        retrained = retrain(run, args.threads)
        print(f"    stored {run.metric_name} {run.metric_value:.4f}, retrained "
              f"{'none' if retrained is None else f'{retrained:.4f}'}", flush=True)


if __name__ == "__main__":
    main()
