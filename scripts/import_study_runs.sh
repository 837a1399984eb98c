#!/bin/bash
# Brings back what scripts/gpu_study.sh packed on another machine: for each NAME.db in DIR,
# the runs that ended there go into results/study/NAME.db (`sparsebench import-runs`: runs
# already ended here are kept) and their files into results/study/runs/. Safe while the
# sweeps run here.
#   bash scripts/import_study_runs.sh DIR [STUDY_DIR]
set -euo pipefail
dir=${1:?usage: import_study_runs.sh DIR [STUDY_DIR]}
study=${2:-results/study}
cd "$(dirname "$0")/.."
SB=${SB:-.venv/bin/sparsebench}
if [ -d "$dir/masks" ]; then  # masks of phase-2 sources kept there: commit them with the stores
  mkdir -p "$study/masks"
  cp -n "$dir"/masks/*.safetensors "$study/masks/" 2>/dev/null || true
fi
for db in "$dir"/*.db; do
  name=$(basename "$db" .db)
  if [ -f "$dir/$name-runs.tar.gz" ]; then
    mkdir -p "$study/runs"
    tar -xzf "$dir/$name-runs.tar.gz" -C "$study/runs"
  fi
  $SB import-runs --from "$db" --into "$study/$name.db" --runs-dir "$study/runs"
done
