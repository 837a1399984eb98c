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
for db in "$dir"/*.db; do
  name=$(basename "$db" .db)
  if [ -f "$dir/$name-runs.tar.gz" ]; then
    mkdir -p "$study/runs"
    tar -xzf "$dir/$name-runs.tar.gz" -C "$study/runs"
  fi
  $SB import-runs --from "$db" --into "$study/$name.db" --runs-dir "$study/runs"
done
