#!/bin/bash
# Issue 25's CPU work, resumable, one worker (the budget sweep of issue 28 takes the other
# core): each step skips what is done, so run it again to go on where it stopped.
#   1. the study's dense seeds of each task trained again where their folders are gone
#      (one-shot pruning needs the trained models; the store keeps only their metrics);
#   2. one-shot pruning of them, translation then image, at the study's sparsities, without
#      and with a short fine-tuning (mask fixed), each row pruning the weights the task's joint
#      runs prune (`sparsebench one-shot` reads them from the store: on translation the shared
#      embedding / softmax matrix too);
#   3. the translation new-techniques sweep, then IMP at its own cost (image, translation).
#   nohup bash scripts/run_new_techniques.sh > /dev/null 2>&1 &    # log: results/study/new-techniques.log
# Stop it with `bash scripts/stop_study.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
SB=.venv/bin/sparsebench
PY=.venv/bin/python
STUDY=results/study
LEVELS="0.5 0.7 0.8 0.9 0.95 0.98"
FINE_TUNE=100  # steps with the mask fixed: a tenth of the translation budget, a sixth of the image's
# Fine-tuning for the best one-shot method and one-shot magnitude only, at fewer levels: a
# translation row costs about 4 minutes of evaluation (beam search over 3,234 sentences).
declare -A TUNED=([ding-transformer]="0.7 0.9" [fmnist-resnet]="0.5 0.7 0.9 0.95")

{
  for task in ding-transformer fmnist-resnet; do
    store=$STUDY/$task.db
    echo "=== $(date -u +%FT%TZ) $task: dense seeds, one-shot pruning"
    $PY scripts/retrain_lost_runs.py --store "$store" || continue
    $SB one-shot --store "$store" --method omp wanda sparsegpt --sparsity $LEVELS --threads 1 &&
      $SB one-shot --store "$store" --method omp sparsegpt --sparsity ${TUNED[$task]} \
        --fine-tune-steps $FINE_TUNE --threads 1
  done
  echo "=== $(date -u +%FT%TZ) sweeps"
  # A sweep exits non-zero when one of its runs failed or diverged; the next still runs.
  $SB sweep sweeps/ding-transformer-new-techniques.yaml --store "$STUDY/ding-transformer.db" \
    --threads 1
  $SB sweep sweeps/fmnist-resnet-imp-own-cost.yaml --store "$STUDY/fmnist-resnet.db" --threads 1
  $SB sweep sweeps/ding-transformer-imp-own-cost.yaml --store "$STUDY/ding-transformer.db" \
    --threads 1
} >> "$STUDY/new-techniques.log" 2>&1
