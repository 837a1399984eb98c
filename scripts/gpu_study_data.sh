#!/bin/bash
# Gathers into .gpudata (ignored; carry it to the device machine) what scripts/gpu_study.sh
# needs there and the repo does not hold: Fashion-MNIST, the Ding dictionary (copied with its
# mtime, which keys the corpus cache), the built corpus and tokenizer, and sources.tar.gz: the
# mask, config and result of the run each phase-2 point derives from (the best finished
# magnitude run at each retraining or small-dense sparsity, as the sweep would pick it), so
# phase 2 can start there from sources that finished here. Masks compress well (mostly
# zeros), which keeps the carried tree under the device tool's 64 MiB.
#   bash scripts/gpu_study_data.sh [STUDY_DIR]
# STUDY_DIR (default results/study) holds NAME.db and runs/; sweeps/NAME-study.yaml is the
# sweep each store's phase 2 comes from.
set -euo pipefail
study=$(realpath "${1:-results/study}")
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
grep -qx '/.gpudata/' "$exclude" 2>/dev/null || echo /.gpudata/ >> "$exclude"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p .gpudata/cache
cp -r /usr/share/datasets/fashion-mnist .gpudata/
cp -p /usr/share/dictd/freedict-eng-deu.dict.dz .gpudata/
# The built corpus replaces the old copy only once it is copied whole.
cp -r "${SPARSEBENCH_DATA:-$HOME/.cache/sparsebench}/ding" "$stage/ding"
rm -rf .gpudata/cache/ding && mv "$stage/ding" .gpudata/cache/ding
mkdir "$stage/sources"
for db in "$study"/*.db; do
  name=$(basename "$db" .db)
  sweep=sweeps/$name-study.yaml
  [ -f "$sweep" ] || continue
  PYTHONPATH=src "${PYTHON:-.venv/bin/python}" - "$db" "$sweep" "$study/runs" "$stage/sources/runs-$name" <<'PY'
import shutil
import sys
from pathlib import Path

from sparsebench.study.store import RunStore
from sparsebench.study.sweep import best_magnitude_runs, load_sweep, plan_phase1

db, spec, runs, out = sys.argv[1], load_sweep(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
targets = set(spec.retraining.sparsities if spec.retraining is not None else [])
targets |= set(spec.small_dense.sparsities if spec.small_dense is not None else [])
with RunStore(db) as store:
    best = best_magnitude_runs(store, spec, plan_phase1(spec))
sources = [run for target, run in sorted(best.items()) if target in targets]
for run in sources:
    (out / run.id).mkdir(parents=True)
    for name in ("mask.safetensors", "config.yaml", "result.json"):
        if (runs / run.id / name).is_file():
            shutil.copy2(runs / run.id / name, out / run.id / name)
print(f"{db}: {len(sources)} phase-2 sources ({', '.join(r.id for r in sources) or 'none yet'})")
PY
done
tar -czf .gpudata/sources.tar.gz -C "$stage/sources" .
du -sh .gpudata/*
