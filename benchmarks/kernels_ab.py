"""A/B of the compiled kernels: this checkout's against those of an earlier git revision.

Both builds are loaded into one process and timed side by side (interleaved rounds, medians),
each on its own copy of the same weights so neither finds the other's data in cache. Use it to
show what a kernel change buys before keeping it:

    .venv/bin/python benchmarks/kernels_ab.py HEAD~1                 # Linear CSR, BSR and conv
    .venv/bin/python benchmarks/kernels_ab.py 0cb1db0 --only conv --batches 16 128

Prints, per case, dense/old, dense/new and old/new (above 1: the new kernels are faster) as
ratios of medians with their range over both sides' quartiles, and the new build's largest
relative error against the dense layer; one warning line at the end names the ratios that the
spread of their rounds or the machine's load makes unreliable. Threads default to the idle
cores.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.inference import _extension
from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import (
    PANEL_LAYOUT_MIN_ROWS,
    PATTERN_KERNEL_MIN_ROWS,
    SparseLinear,
)
from sparsebench.inference.timing import (
    Comparison,
    LoadWatch,
    interleaved_rounds,
    machine_context,
    unreliable_line,
)

SOURCE = "src/sparsebench/inference/csrc/csr_linear.cpp"


def _block_mask(rows: int, cols: int, block: tuple[int, int], sparsity: float) -> torch.Tensor:
    keep = (torch.rand(-(-rows // block[0]), -(-cols // block[1])) >= sparsity).float()
    return keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:rows, :cols]


def _linear_case(ext, layer: SparseLinear, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The call SparseLinear makes with this build: CSR from PATTERN_KERNEL_MIN_ROWS rows on
    through code compiled for the pattern where the build has it, from PANEL_LAYOUT_MIN_ROWS
    through the count-class layout where it has one (either built here, outside the timing,
    as SparseLinear caches it), else plain CSR; or BSR."""
    if layer.block == (1, 1):
        args = (x, layer.crow_indices, layer.col_indices, layer.values, layer.bias,
                layer.in_features, -1, -1)
        if hasattr(ext, "csr_panel_layout") and x.shape[0] >= PANEL_LAYOUT_MIN_ROWS:
            threads = torch.get_num_threads()
            parts = 1 if threads == 1 else 2 * threads
            if getattr(ext, "HAVE_PATTERN_KERNEL", False) \
                    and x.shape[0] >= PATTERN_KERNEL_MIN_ROWS:
                layout = ext.csr_pattern_kernel(layer.crow_indices, layer.col_indices,
                                                layer.values, layer.in_features, -1, -1, parts)
            else:
                layout = ext.csr_panel_layout(layer.crow_indices, layer.col_indices,
                                              layer.values, layer.in_features, -1, parts)
            return lambda: ext.csr_linear(*args, 0, layout)
        return lambda: ext.csr_linear(*args)
    return lambda: ext.bsr_linear(x, layer.crow_indices, layer.col_indices, layer.values,
                                  layer.bias, layer.out_features, layer.in_features, -1)


def _conv_case(ext, conv: SparseConv2d, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The call SparseConv2d makes with this build: the CSR convolution of any stride where
    the build has it (through code compiled for the pattern where the build takes it and the
    rows hold enough nonzeros, ``SparseConv2d._pattern_pays``; else through the count-class
    layout where the build has one and says it pays), else the direct stride-1 kernel (1x1:
    subsample first) or im2col."""
    if conv.block == (1, 1) and hasattr(ext, "csr_conv2d"):
        geometry = [*conv.kernel_size, *conv.stride, *conv.padding, *conv.dilation]
        offsets = ext.conv_offsets(conv.col_indices, conv.in_channels, x.shape[2], x.shape[3],
                                   geometry)
        args = (x, conv.crow_indices, offsets, conv.values, conv.bias, conv.out_channels,
                geometry, False, -1)
        positions = x.shape[0] * math.prod(conv.output_size(x.shape[2], x.shape[3]))
        if getattr(ext, "HAVE_CONV_PATTERN", False) and conv._pattern_pays(positions):
            kernel = ext.csr_pattern_kernel(conv.crow_indices, conv.col_indices, conv.values,
                                            conv.cols, -1, -1, 1)
            return lambda: ext.csr_conv2d(*args, None, kernel)
        if hasattr(ext, "conv_layout_pays") and ext.conv_layout_pays(
                conv.values.numel(), conv.in_channels, x.shape[2], x.shape[3], geometry):
            layout = ext.csr_panel_layout(conv.crow_indices, conv.col_indices, conv.values,
                                          conv.cols, -1, 1)
            return lambda: ext.csr_conv2d(*args, None, layout)
        return lambda: ext.csr_conv2d(*args)
    values = conv.values if conv.values.dim() == 3 else conv.values.view(-1, 1, 1)
    xs, stride = x, conv.stride
    if conv.kernel_size == (1, 1) and conv.padding == (0, 0) and stride != (1, 1):
        xs, stride = x[:, :, :: stride[0], :: stride[1]].contiguous(), (1, 1)
    if stride == (1, 1):
        return lambda: ext.bsr_conv2d_s1(xs, conv.crow_indices, conv.col_indices, values,
                                         conv.bias, conv.out_channels, *conv.kernel_size,
                                         *conv.padding, *conv.dilation, -1)
    ho, wo = conv.output_size(x.shape[2], x.shape[3])

    def im2col() -> torch.Tensor:
        cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        y = ext.bsr_matmul_cols(cols, conv.crow_indices, conv.col_indices, values, conv.bias,
                                conv.out_channels, -1)
        return y.view(x.shape[0], conv.out_channels, ho, wo)

    return im2col


def _revision_source(root: Path, revision: str) -> str:
    """The kernels' source at ``revision`` as one translation unit: its ``csr_linear.cpp`` with
    each local ``#include "name.h"`` replaced by that revision's header, as the package's own
    build does with the checked-out files."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout

    folder = SOURCE.rsplit("/", 1)[0]
    return re.sub(r'^#include "([A-Za-z0-9_]+\.h)"$', lambda m: show(f"{folder}/{m.group(1)}"),
                  show(SOURCE), flags=re.MULTILINE)


def main() -> None:
    """Build both revisions' kernels, time every case and print the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("revision", help="git revision whose kernels are the 'old' side")
    p.add_argument("--only", choices=["linear", "conv"], default=None)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--blocks", nargs="+", default=["1x1", "4x4", "8x8", "16x16"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--budget", type=float, default=4.0, help="max seconds of timing per case")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    p.add_argument("--linear-shapes", nargs="+", default=["4096x1024"], metavar="OUTxIN",
                   help="Linear weights to time (e.g. 768x3072 for BERT's FFN output)")
    p.add_argument("--conv", nargs="+", default=["64x64x3x1x32"], metavar="CINxCOUTxKxSxHW",
                   help="convolutions: in/out channels, kernel side, stride, input side")
    args = p.parse_args()
    watch = LoadWatch(args.threads)
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
    root = Path(__file__).resolve().parents[1]
    old_src = _revision_source(root, args.revision)
    old, new = _extension._build(old_src), _extension.load_extension()
    if new is None:
        raise SystemExit("the compiled kernels are unavailable here; nothing to compare")
    print(f"old: {args.revision}  new: working tree\n{watch.choice.describe()}\n"
          f"{machine_context()}")
    problems: dict[str, list[str]] = {}
    torch.manual_seed(0)
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks]
    shapes = [tuple(int(v) for v in t.split("x")) for t in args.linear_shapes]
    convs = [tuple(int(v) for v in t.split("x")) for t in args.conv]
    for kind in ("linear", "conv"):
        if args.only not in (None, kind):
            continue
        for block, sparsity, shape in itertools.product(
            blocks, args.sparsities, shapes if kind == "linear" else convs
        ):
            if kind == "linear":
                out_f, in_f = shape
                w = torch.randn(out_f, in_f) * _block_mask(out_f, in_f, block, sparsity)
                b = torch.randn(out_f)
                sides = [SparseLinear.from_dense(w.clone(), b.clone(), block=block)
                         for _ in range(2)]
                dense = lambda x, w=w, b=b: F.linear(x, w, b)  # noqa: E731
                make_x = lambda n, i=in_f: torch.randn(n, i)  # noqa: E731
                case = _linear_case
                what = f"{out_f}x{in_f}"
            else:
                cin, cout, k, stride, side = shape
                conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
                cols = cin * k * k
                with torch.no_grad():
                    conv.weight.mul_(
                        _block_mask(cout, cols, block, sparsity).view(cout, cin, k, k))
                sides = [SparseConv2d.from_conv(conv, block) for _ in range(2)]
                dense = conv
                make_x = lambda n, c=cin, s=side: torch.randn(n, c, s, s)  # noqa: E731
                case = _conv_case
                what = f"{cin}->{cout} {k}x{k}/{stride} {side}px"
            for batch in args.batches:
                x = make_x(batch)
                with torch.no_grad():
                    ref = dense(x)
                    got = case(new, sides[1], x)()
                    err = ((got - ref).abs().max() / ref.abs().max()).item()
                    r = interleaved_rounds(
                        {"dense": lambda x=x, f=dense: f(x), "old": case(old, sides[0], x),
                         "new": case(new, sides[1], x)},
                        repeats=args.repeats, budget_s=args.budget)
                vs = {f"{a}/{b}": Comparison.of(r[a], r[b], (a, b))
                      for a, b in (("dense", "old"), ("dense", "new"), ("old", "new"))}
                label = (f"{kind:6} {what} {block[0]}x{block[1]:<3} s={sparsity:.2f} "
                         f"b={batch:<4}")
                problems.update({f"{' '.join(label.split())} {k}": c.problems()
                                 for k, c in vs.items()})
                cells = "  ".join(f"{k} {c.cell():<24}" for k, c in vs.items())
                print(f"{label} {cells} err {err:.1e}", flush=True)
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
