#!/bin/bash
# The study's sweeps (issue 7) continued on a GPU machine for a fixed time: a copy of each
# committed store goes on there with `--device cuda` and several runs at once; then each store
# and the files of the runs that ended there are packed into OUT (scripts/pack_study_runs.py).
# Back here, `bash scripts/import_study_runs.sh DIR` merges them into the stores and run folders.
# The points, their ids and the commands are the CPU study's: only where they train changes.
#
#   bash scripts/gpu_study.sh OUT [SECONDS] [WORKERS] [SWEEP:STORE ...]
#
# SECONDS (default 420) is the sweeping time; a run still going then is stopped and stays
# pending. WORKERS (default 6) runs per task at once. Default pairs: both study sweeps with
# their stores in results/study. DEVICE=cpu tries the script without a GPU.
# On the device machine the data travels in .gpudata (ignored, built by
# scripts/gpu_study_data.sh): fashion-mnist/, freedict-eng-deu.dict.dz, cache/ding (the built
# corpus; SPARSEBENCH_DATA points there) and sources.tar.gz (retraining sources' masks).
set -uo pipefail
out=${1:?usage: gpu_study.sh OUT [SECONDS] [WORKERS] [SWEEP:STORE ...]}
seconds=${2:-420}
workers=${3:-6}
shift $(( $# < 3 ? $# : 3 ))
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(sweeps/fmnist-resnet-study.yaml:results/study/fmnist-resnet.db
                                 sweeps/ding-transformer-study.yaml:results/study/ding-transformer.db)
device=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpudata ]; then  # the device machine: put the data where the tasks look for it
  [ -d .gpudata/fashion-mnist ] && mkdir -p /usr/share/datasets &&
    cp -r .gpudata/fashion-mnist /usr/share/datasets/
  [ -f .gpudata/freedict-eng-deu.dict.dz ] && mkdir -p /usr/share/dictd &&
    cp -p .gpudata/freedict-eng-deu.dict.dz /usr/share/dictd/  # its mtime keys the corpus cache
  [ -d .gpudata/cache ] && export SPARSEBENCH_DATA="$PWD/.gpudata/cache"
fi
work=$(mktemp -d)
# Phase-2 sources that finished before (scripts/gpu_study_data.sh): their masks and results go
# where the sweeps' runs folders look for them, and are not sent back.
[ -f .gpudata/sources.tar.gz ] && tar -xzf .gpudata/sources.tar.gz -C "$work"
# The committed masks of phase-2 sources (sparsebench.study.source_masks): with them a sweep
# rebuilds a source's directory it does not have. New ones written there come back in OUT/masks.
for pair in "${pairs[@]}"; do
  kept=$(dirname "${pair#*:}")/masks
  [ -d "$kept" ] && mkdir -p "$work/masks" && cp -n "$kept"/*.safetensors "$work/masks/" 2>/dev/null
done
ls "$work/masks" > "$work/carried-masks.txt" 2>/dev/null || : > "$work/carried-masks.txt"
for pair in "${pairs[@]}"; do
  name=$(basename "${pair#*:}" .db)
  ls "$work/runs-$name" > "$work/carried-$name.txt" 2>/dev/null || : > "$work/carried-$name.txt"
done
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee "$out/device.txt"

# Build each task's data once (corpus, tokenizer) before the workers start side by side.
for pair in "${pairs[@]}"; do
  python3 - "${pair%%:*}" <<'EOF'
import sys
from sparsebench.study.sweep import load_sweep
from sparsebench.train import build_config
from sparsebench.train.loop import prepare
prepare(build_config(load_sweep(sys.argv[1]).task))
EOF
done

pids=()
for pair in "${pairs[@]}"; do
  sweep=${pair%%:*}; store=${pair#*:}; name=$(basename "$store" .db)
  python3 - "$store" "$work/$name.db" <<'EOF'  # a consistent copy, WAL included
import sqlite3, sys
sqlite3.connect(sys.argv[1]).execute("VACUUM INTO ?", (sys.argv[2],))
EOF
  echo "=== $(date -u +%T) $sweep on $device, $workers at once, $seconds s" | tee -a "$out/sweeps.log"
  timeout -s TERM "$seconds" python3 -m sparsebench sweep "$sweep" --store "$work/$name.db" \
    --runs-dir "$work/runs-$name" --device "$device" --workers "$workers" --threads 1 \
    > "$work/$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for pair in "${pairs[@]}"; do
  sweep=${pair%%:*}; store=${pair#*:}; name=$(basename "$store" .db)
  grep -v "sparsebench.train: step" "$work/$name.log" >> "$out/sweeps.log"
  python3 scripts/pack_study_runs.py "$work/$name.db" "$work/runs-$name" "$sweep" "$out/$name" \
    "$work/carried-$name.txt" 2>&1 | tee -a "$out/sweeps.log"
done
for kept in "$work"/masks/*.safetensors; do
  [ -f "$kept" ] || continue
  grep -qx "$(basename "$kept")" "$work/carried-masks.txt" && continue
  mkdir -p "$out/masks" && cp "$kept" "$out/masks/"
done
ls -la "$out"
