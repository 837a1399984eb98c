#!/bin/bash
# Issue 25's CPU work, resumable: each step skips what is done, so run it again to go on where
# it stopped.
#   1. the study's dense seeds of each task trained again where their folders are gone
#      (one-shot pruning needs the trained models; the store keeps only their metrics);
#   2. one-shot pruning of them at the study's sparsities, without and with a short
#      fine-tuning (mask fixed), each row pruning the weights the task's joint runs prune
#      (`sparsebench one-shot` reads them from the store: on translation the shared
#      embedding / softmax matrix too);
#   3. the translation new-techniques sweep and IMP at its own cost.
# One worker does it all, translation first:
#   nohup bash scripts/run_new_techniques.sh > /dev/null 2>&1 &    # log: results/study/new-techniques.log
# Two workers (one per core) split it by task: each does steps 1-2 and IMP at its own cost for
# its task only (retraining a lost dense seed is not shared out: two processes would train it
# twice), and both take runs of the translation sweep (a sweep hands each run to one process,
# as `sparsebench one-shot` does each row):
#   nohup bash scripts/run_new_techniques.sh ding-transformer > /dev/null 2>&1 &
#   nohup bash scripts/run_new_techniques.sh fmnist-resnet > /dev/null 2>&1 &
# Stop them with `bash scripts/stop_study.sh`.
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
case "${1:-}" in
  "") TASKS="ding-transformer fmnist-resnet" ;;
  ding-transformer|fmnist-resnet) TASKS=$1 ;;
  *) echo "usage: $0 [ding-transformer|fmnist-resnet]" >&2; exit 2 ;;
esac
WORKER="worker ${1:-(all tasks)}"

one_shot() {  # task: dense seeds back, then its one-shot rows and the fine-tuned ones
  local task=$1 store=$STUDY/$1.db
  echo "=== $(date -u +%FT%TZ) $WORKER: $task dense seeds, one-shot pruning"
  $PY scripts/retrain_lost_runs.py --store "$store" || return
  $SB one-shot --store "$store" --method omp wanda sparsegpt --sparsity $LEVELS --threads 1 &&
    $SB one-shot --store "$store" --method omp sparsegpt --sparsity ${TUNED[$task]} \
      --fine-tune-steps $FINE_TUNE --threads 1
}

imp_own_cost() {  # task: IMP at its own cost (a multiple of the study's steps)
  echo "=== $(date -u +%FT%TZ) $WORKER: $1 IMP at its own cost"
  $SB sweep "sweeps/$1-imp-own-cost.yaml" --store "$STUDY/$1.db" --threads 1
}

translation_sweep() {
  echo "=== $(date -u +%FT%TZ) $WORKER: translation new-techniques sweep"
  $SB sweep sweeps/ding-transformer-new-techniques.yaml --store "$STUDY/ding-transformer.db" \
    --threads 1
}

# A sweep exits non-zero when one of its runs failed or diverged; the next step still runs.
{
  for task in $TASKS; do one_shot "$task"; done
  if [ "$TASKS" = fmnist-resnet ]; then  # the image worker: its own IMP, then help translation
    imp_own_cost fmnist-resnet
    translation_sweep
  else
    translation_sweep
    for task in $TASKS; do imp_own_cost "$task"; done
  fi
} >> "$STUDY/new-techniques.log" 2>&1
