#!/bin/bash
# The budget sweep of issue 28, resumable: the image task's arms at 600, 1,200 and 2,400 steps
# in results/study/fmnist-resnet-budget.db, the shortest budget first so that each budget's
# comparison is complete before the next starts. The image study's 600-step runs with the
# same ids are copied in first (never trained twice). WORKERS processes share each sweep
# (default 2, one thread each: both cores of this machine); with 1, the machine keeps a core.
#   bash scripts/run_budget.sh                 # run or resume, log in results/study/fmnist-resnet-budget.log
#   WORKERS=1 bash scripts/run_budget.sh
# Stop it with `bash scripts/stop_study.sh` (runs back to pending, store ready to commit).
set -euo pipefail
cd "$(dirname "$0")/.."
SB=.venv/bin/sparsebench
STUDY=results/study
STORE=$STUDY/fmnist-resnet-budget.db
WORKERS=${WORKERS:-2}
log=$STUDY/fmnist-resnet-budget.log

{
  $SB import-runs --from "$STUDY/fmnist-resnet.db" --into "$STORE" \
    --sweep sweeps/fmnist-resnet-budget-600.yaml
  for steps in 600 1200 2400; do
    sweep=sweeps/fmnist-resnet-budget-$steps.yaml
    echo "=== $(date -u +%FT%TZ) $sweep"
    $SB status --store "$STORE"
    pids=()
    for _ in $(seq "$WORKERS"); do
      # A sweep exits non-zero when one of its runs failed or diverged; the next still runs.
      $SB sweep "$sweep" --store "$STORE" --threads 1 &
      pids+=($!)
      sleep 20  # the first claims its run before the next looks
    done
    wait "${pids[@]}" || echo "=== some runs of $sweep failed or diverged (sparsebench status lists them)"
  done
} >> "$log" 2>&1
