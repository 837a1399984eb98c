"""Block-sparse (BSR) kernels vs dense and vs torch's BSR, side by side in one process.

Issue 10's benchmark: a 4096x1024 Linear and a CPU ResNet 3x3 convolution (64->64 channels on
32x32 maps, padding 1) at 90% and 95% sparsity whose zeros form whole blocks of 1x1, 4x4, 8x8,
16x16, 32x32 and 16x1, at batch 1/16/128. For each cell, dense (``F.linear`` / ``F.conv2d``),
torch's BSR (``torch.sparse.mm`` on ``to_sparse_bsr``; for the convolution on the unfolded
input) and ours (``SparseLinear`` / ``SparseConv2d`` with that block size; 1x1 is our CSR
kernel) run interleaved, round by round, and the table shows ratios of medians with the
range over both sides' quartiles; one warning line at the end names the cells that the spread
of their rounds or the machine's load makes unreliable. Threads default to the idle cores.

    .venv/bin/python benchmarks/block_sparse.py                      # everything (~5 min)
    .venv/bin/python benchmarks/block_sparse.py --layers linear --batches 128
    .venv/bin/python benchmarks/block_sparse.py --threads 1          # one thread, as asked

torch's CPU BSR goes through MKL sparse, which refuses non-square blocks (16x1): "n/a".
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import (
    BLOCK_SIZES,
    SparseConv2d,
    SparseLinear,
    kernel_path,
    machine_context,
)
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line


def block_weight(out_f: int, in_f: int, block: tuple[int, int], sparsity: float) -> torch.Tensor:
    """Return a random weight whose zeros form whole blocks, exactly ``sparsity`` of them."""
    bh, bw = block
    rows, cols = -(-out_f // bh), -(-in_f // bw)
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols)[: round((1 - sparsity) * rows * cols)]] = True
    keep = keep.view(rows, cols).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return torch.randn(out_f, in_f) * keep[:out_f, :in_f]


def _torch_bsr(matrix: torch.Tensor, block: tuple[int, int]) -> torch.Tensor | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return matrix.to_sparse_bsr(block)


def _try(fn: Callable[[], object]) -> Callable[[], object] | None:
    """Return ``fn`` if one call works, else None (torch BSR refuses some block shapes)."""
    try:
        fn()
    except RuntimeError:
        return None
    return fn


def linear_cell(block, sparsity, batch) -> tuple[dict[str, Callable[[], object]], float]:
    """Return the candidates for one Linear cell and our max relative error against dense."""
    w = block_weight(4096, 1024, block, sparsity)
    ours = SparseLinear.from_dense(w, block=block)
    wb = _torch_bsr(w, block)
    x = torch.randn(batch, 1024)
    ref = F.linear(x, w)
    err = ((ours(x) - ref).abs().max() / ref.abs().max()).item()
    cands = {"dense": lambda: F.linear(x, w), "ours": lambda: ours(x)}
    if (tb := _try(lambda: torch.sparse.mm(wb, x.t()).t().contiguous())) is not None:
        cands["torch_bsr"] = tb
    return cands, err


def conv_cell(block, sparsity, batch) -> tuple[dict[str, Callable[[], object]], float]:
    """Return the candidates for one 3x3 conv cell and our max relative error against dense."""
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(block_weight(64, 576, block, sparsity).view_as(conv.weight))
    ours = SparseConv2d.from_conv(conv, block)
    w = conv.weight.detach()
    wb = _torch_bsr(w.reshape(64, 576), block)
    x = torch.randn(batch, 64, 32, 32)
    ref = F.conv2d(x, w, padding=1)
    err = ((ours(x) - ref).abs().max() / ref.abs().max()).item()

    def torch_bsr() -> torch.Tensor:
        cols = F.unfold(x, 3, padding=1)  # (N, 576, 1024)
        y = torch.sparse.mm(wb, cols.transpose(0, 1).reshape(576, -1))  # (64, N*1024)
        return y.view(64, batch, 32, 32).transpose(0, 1)

    cands = {"dense": lambda: F.conv2d(x, w, padding=1), "ours": lambda: ours(x)}
    if (tb := _try(torch_bsr)) is not None:
        cands["torch_bsr"] = tb
    return cands, err


def main() -> None:
    """Parse arguments, run the measurements and print the ratio tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", nargs="+", default=["linear", "conv"], choices=["linear", "conv"])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--blocks", nargs="+", default=[f"{h}x{w}" for h, w in BLOCK_SIZES])
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds per cell")
    p.add_argument("--budget", type=float, default=3.0, help="max seconds of timing per cell")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    args = p.parse_args()
    watch = LoadWatch(args.threads)
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks]
    print(watch.choice.describe())
    print(f"kernel path: {kernel_path()}")
    print(f"before: {machine_context()}")
    torch.manual_seed(0)
    start = time.time()
    rows = []
    for layer in args.layers:
        for s in args.sparsities:
            for block in blocks:
                for batch in args.batches:
                    make = linear_cell if layer == "linear" else conv_cell
                    cands, err = make(block, s, batch)
                    r = interleaved_rounds(cands, repeats=args.repeats, budget_s=args.budget)
                    vs = {k: Comparison.of(r[k], r["ours"], (k, "ours")) for k in r if k != "ours"}
                    rows.append((layer, s, block, batch, vs, err))
                    times = "  ".join(
                        f"{k} {c.baseline.median * 1e3:8.3f} ms ({c.baseline.relative:.0%})"
                        for k, c in vs.items()
                    )
                    times += f"  ours {vs['dense'].candidate.median * 1e3:8.3f} ms"
                    print(
                        f"  {layer} s={s:.2f} block {block[0]}x{block[1]} batch {batch:4d}: "
                        f"{times}  max rel err {err:.1e}",
                        flush=True,
                    )
    print(f"after:  {machine_context()}  ({time.time() - start:.0f} s)")
    print()
    print("Linear 4096x1024 / Conv 64->64 3x3 on 32x32, fp32; ratios of medians of interleaved")
    print("rounds [range over both sides' quartiles], ! where the rounds do not support them")
    print("cells: dense/ours  torch-BSR/ours (n/a: torch refuses the block shape)")
    head = "".join(f" | b{b:<4} {'dense':>22} {'tBSR':>22}" for b in args.batches)
    print(f"{'layer':<7} {'sparsity':>8} {'block':>6}{head}")
    for layer in args.layers:
        for s in args.sparsities:
            for block in blocks:
                cells = []
                for batch in args.batches:
                    vs = next(r[4] for r in rows if r[:4] == (layer, s, block, batch))
                    tb = vs["torch_bsr"].cell() if "torch_bsr" in vs else "n/a"
                    cells.append(f" | {'':5} {vs['dense'].cell():>22} {tb:>22}")
                name = f"{block[0]}x{block[1]}"
                print(f"{layer:<7} {s:8.2f} {name:>6}{''.join(cells)}")
    problems = {
        f"{layer} s={s:.2f} {block[0]}x{block[1]} b{batch} {k}/ours": c.problems()
        for layer, s, block, batch, vs, _ in rows
        for k, c in vs.items()
    }
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
