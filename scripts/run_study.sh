#!/bin/bash
# The CPU-scale study of issues 7 and 10, start to finish, resumable: each task's sweeps run in
# order on its own store with one thread (the two tasks side by side on a 2-core machine), then
# the models are timed on a quiet machine and the report is written to results/.
#   bash scripts/run_study.sh            # run (or resume) everything
#   bash scripts/run_study.sh report     # only time what is not timed yet and rewrite the report
# Stop it at any time (Ctrl-C, or `bash scripts/stop_study.sh` from another shell, which also
# readies the stores for a commit); run it again to go on where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
SB=.venv/bin/sparsebench
STUDY=results/study

run_task() {  # run_task STORE SWEEP...
  local store=$1; shift
  for sweep in "$@"; do
    echo "=== $(date -u +%FT%TZ) $sweep"
    $SB sweep "$sweep" --store "$STUDY/$store" --threads 1
  done
}

if [ "${1:-}" != "report" ]; then
  # The budget probe keeps a store of its own: its runs train twice as long as the study's.
  # A sweep exits non-zero when one of its runs failed or diverged; the next still runs.
  { run_task fmnist-resnet.db sweeps/fmnist-resnet-blocks.yaml sweeps/fmnist-resnet-wider.yaml \
      sweeps/fmnist-resnet-seeds.yaml sweeps/fmnist-resnet-study.yaml ||
      echo "=== some image runs failed or diverged (sparsebench status lists them)"
    run_task fmnist-resnet-budget.db sweeps/fmnist-resnet-budget.yaml
  } >> "$STUDY/fmnist-resnet.log" 2>&1 &
  image=$!
  run_task ding-transformer.db sweeps/ding-transformer-blocks.yaml \
    sweeps/ding-transformer-seeds.yaml sweeps/ding-transformer-study.yaml \
    >> "$STUDY/ding-transformer.log" 2>&1 &
  translation=$!
  trap 'kill $image $translation 2>/dev/null; wait' INT TERM
  echo "training: logs in $STUDY/fmnist-resnet.log and $STUDY/ding-transformer.log"
  wait $image $translation
fi
for store in fmnist-resnet.db ding-transformer.db; do
  $SB bench-runs --store "$STUDY/$store" --threads 1
done
# The character model (issue 27) is timed as it is used: sampling at batch 1.
$SB bench-runs --store "$STUDY/shakespeare-gru.db" --threads 1 --batch 1 --levels 0.9 0.95 0.98
$SB report --store "$STUDY/fmnist-resnet.db" "$STUDY/ding-transformer.db" \
  "$STUDY/shakespeare-gru.db" --published --budget "$STUDY/fmnist-resnet-budget.db" --out results
