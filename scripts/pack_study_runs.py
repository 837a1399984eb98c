"""Packs what a study continued on another machine (scripts/gpu_study.sh) must bring back:
the store, and of each run finished there the files a later step here reads. That is, within
the device tool's limits on returned files (few files, 16 MiB each):

* ``result.json`` and ``config.yaml`` of every run (the store already holds their numbers);
* ``mask.safetensors`` of the magnitude runs at the retraining sparsities (the sources of
  scratch / lottery / augmented retraining; their ``init.safetensors`` is written again here
  from the config when a lottery ticket needs it);
* ``model.safetensors`` of the runs ``sparsebench bench-runs`` would time (the best model of
  each technique at 90% and 95%).

    python3 scripts/pack_study_runs.py STORE RUNS_DIR SWEEP_FILE OUT_PREFIX [CARRIED]

writes ``OUT_PREFIX.db`` (the store, its WAL merged) and ``OUT_PREFIX-runs.tar.gz``. CARRIED
names a file of run ids (one per line) whose folders came with the data and did not run
there: the phase-2 sources of scripts/gpu_study_data.sh. They are left out.
"""

from __future__ import annotations

import sqlite3
import sys
import tarfile
from pathlib import Path

from sparsebench.rundir import CONFIG_FILE, MASK_FILE, MODEL_FILE, RESULT_FILE
from sparsebench.study.speed import runs_to_time
from sparsebench.study.store import RunStore
from sparsebench.study.sweep import load_sweep


def main(store_path: str, runs_dir: str, sweep_file: str, prefix: str,
         carried_file: str | None = None) -> None:
    runs_dir_path, out = Path(runs_dir), Path(prefix)
    carried = set(Path(carried_file).read_text().split()) if carried_file else set()
    spec = load_sweep(sweep_file)
    sources = set(spec.retraining.sparsities) if spec.retraining is not None else set()
    with RunStore(store_path) as store:
        ended = [r for r in store.runs(source="ours", status=["finished", "failed", "diverged"])
                 if (runs_dir_path / r.id / RESULT_FILE).is_file() and r.id not in carried]
        to_time = {r.id for r in runs_to_time(store)}
    with tarfile.open(f"{out}-runs.tar.gz", "w:gz") as tar:
        for run in ended:
            names = [RESULT_FILE, CONFIG_FILE]
            if run.technique == "magnitude" and run.target_sparsity in sources:
                names.append(MASK_FILE)
            if run.id in to_time:
                names.append(MODEL_FILE)
            for name in names:
                path = runs_dir_path / run.id / name
                if path.is_file():
                    tar.add(path, arcname=f"{run.id}/{name}")
    # One self-contained file: the WAL merged into the database.
    db = sqlite3.connect(store_path)
    db.execute("VACUUM INTO ?", (f"{out}.db",))
    db.close()
    print(f"{out}.db: {len(ended)} runs ended on this machine, "
          f"{sum(r.id in to_time for r in ended)} of them with their model")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    main(*sys.argv[1:])
