"""Block-sparse Linear on a CUDA GPU: torch's BSR (cuSPARSE) and CSR products through
SparseLinear's GPU path against dense cuBLAS, side by side in one process (issue 10).

    .venv/bin/python benchmarks/block_sparse_cuda.py            # 4096x1024, 90/95%, batch 1/128

Exits with a message where no CUDA GPU is present (CI never has one).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from sparsebench.inference import SparseLinear


def _weight(out_f: int, in_f: int, block: tuple[int, int], sparsity: float) -> torch.Tensor:
    bh, bw = block
    keep = torch.rand(-(-out_f // bh), -(-in_f // bw)) >= sparsity
    keep = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out_f, :in_f]
    return torch.randn(out_f, in_f) * keep


def _time(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` with CUDA events, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=int, default=4096)
    p.add_argument("--in", dest="in_f", type=int, default=1024)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    p.add_argument("--blocks", nargs="+", default=["1x1", "16x16", "32x32"])
    p.add_argument("--repeats", type=int, default=51)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (the CPU benchmarks are block_sparse.py and "
              "sparse_linear.py)")
        return 0
    print(f"device: {torch.cuda.get_device_name()} torch={torch.__version__}")
    print("layer   sparsity  block | batch  dense ms  sparse ms  dense/sparse  max rel err")
    for sparsity in args.sparsities:
        for text in args.blocks:
            block = tuple(int(v) for v in text.split("x"))
            w = _weight(args.out, args.in_f, block, sparsity)
            layer = SparseLinear.from_dense(w, block=block).cuda()
            wc = w.cuda()
            for batch in args.batches:
                x = torch.randn(batch, args.in_f, device="cuda")
                with torch.no_grad():
                    ref = F.linear(x, wc)
                    err = ((layer(x) - ref).abs().max() / ref.abs().max()).item()
                    dense = _time(lambda x=x, wc=wc: F.linear(x, wc), args.repeats)
                    sparse = _time(lambda x=x, layer=layer: layer(x), args.repeats)
                print(f"linear  {sparsity:8.2f} {text:>6} | {batch:5d} {dense:9.3f} "
                      f"{sparse:10.3f} {dense / sparse:12.2f}x {err:12.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
