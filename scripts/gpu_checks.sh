#!/bin/bash
# The checks that need a CUDA GPU (CI never has one), in one go:
#   1. the CUDA tests: every technique trains on the GPU; compiled sparse / block layers run
#      torch's sparse products there without densifying;
#   2. benchmarks/block_sparse_cuda.py: block and CSR layers against dense cuBLAS, at 4096x1024
#      and at 16384x8192;
#   3. the runner on the GPU: a short fmnist-resnet magnitude run with run.device=cuda (skipped
#      when Fashion-MNIST is not installed), its seconds per step beside the CPU's.
# Needs a python3 whose torch sees a GPU; the package runs from src/ (no install).
#   bash scripts/gpu_checks.sh OUTDIR
set -uo pipefail
out=${1:-gpu_checks}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, '|',
  torch.cuda.get_device_name())"; } 2>&1 | tee "$out/device.txt"

echo "=== CUDA tests $(date -u +%T)"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_training.py \
  tests/inference/test_torch_sparse_path.py tests/train/test_runner.py -k "cuda or torch_sparse" \
  2>&1 | tee "$out/pytest_cuda.txt"

echo "=== block benchmark $(date -u +%T)"
python3 benchmarks/block_sparse_cuda.py --blocks 1x1 4x4 8x8 16x16 32x32 16x1 \
  --batches 1 16 128 2>&1 | tee "$out/block_sparse_cuda.txt"
# A layer large enough that batch 1 is bound by memory bandwidth rather than kernel launches.
python3 benchmarks/block_sparse_cuda.py --out 16384 --in 8192 --blocks 1x1 16x16 32x32 \
  --batches 1 128 2>&1 | tee "$out/block_sparse_cuda_large.txt"

if [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "=== runner on cuda $(date -u +%T)"
  run=$(mktemp -d)/gpu-run
  python3 -m sparsebench train --task fmnist-resnet --method magnitude --sparsity 0.9 \
    --steps 300 --out "$run" --no-progress --set run.device=cuda --set run.log_every=100 \
    2>&1 | tail -n 20 | tee "$out/runner_cuda.txt"
  python3 - "$run/result.json" <<'EOF' 2>&1 | tee -a "$out/runner_cuda.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"status {r['status']} steps {r['steps']} sparsity {r['sparsity']:.4f} "
      f"{r['metric']['name']} {r['metric']['test']:.4f} seconds/step {r['seconds_per_step']:.4f} "
      f"device {r['config']['run']['device']}")
EOF
fi
echo "=== done $(date -u +%T)"
