#!/bin/bash
# Gathers into .gpudata (ignored; carry it to the device machine) what scripts/gpu_study.sh
# needs there and the repo does not hold: Fashion-MNIST, the Ding dictionary (copied with its
# mtime, which keys the corpus cache), the built corpus and tokenizer, and sources.tar.gz: the
# mask and config of every finished magnitude run at a retraining sparsity, so retraining
# (phase 2) can start there from a source that finished here (sweeps/NAME-study.yaml names
# the retraining sparsities of results/study/NAME.db). Masks compress well (mostly
# zeros), which keeps the carried tree under the device tool's 64 MiB.
#   bash scripts/gpu_study_data.sh [STUDY_DIR]
set -euo pipefail
study=${1:-results/study}
cd "$(dirname "$0")/.."
grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo /.gpudata/ >> .git/info/exclude
mkdir -p .gpudata
cp -r /usr/share/datasets/fashion-mnist .gpudata/
cp -p /usr/share/dictd/freedict-eng-deu.dict.dz .gpudata/
mkdir -p .gpudata/cache
rm -rf .gpudata/cache/ding
cp -r "${SPARSEBENCH_DATA:-$HOME/.cache/sparsebench}/ding" .gpudata/cache/
stage=$(mktemp -d)
for db in "$study"/*.db; do
  name=$(basename "$db" .db)
  sweep=sweeps/$name-study.yaml
  [ -f "$sweep" ] || continue
  PYTHONPATH=src .venv/bin/python - "$db" "$sweep" "$study/runs" "$stage/runs-$name" <<'PY'
import shutil
import sys
from pathlib import Path

from sparsebench.study.store import RunStore
from sparsebench.study.sweep import load_sweep

db, sweep, runs, out = sys.argv[1], load_sweep(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
targets = sweep.retraining.sparsities if sweep.retraining is not None else []
with RunStore(db) as store:
    sources = [r for r in store.runs(technique="magnitude", source="ours", status="finished")
               if any(abs((r.target_sparsity or -1) - t) < 1e-9 for t in targets)]
copied = 0
for run in sources:
    for name in ("mask.safetensors", "config.yaml"):
        if (runs / run.id / name).is_file():
            (out / run.id).mkdir(parents=True, exist_ok=True)
            shutil.copy2(runs / run.id / name, out / run.id / name)
            copied += name == "mask.safetensors"
print(f"{db}: {copied} retraining sources")
PY
done
tar -czf .gpudata/sources.tar.gz -C "$stage" .
rm -rf "$stage"
du -sh .gpudata/*
