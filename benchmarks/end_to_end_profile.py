"""Where the time of one end-to-end model goes: its layers against everything between them.

Builds one of ``end_to_end.py``'s workloads (random weights, pruned), compiles it with
``compile_sparse``, and for the dense and the compiled model prints the median wall time of a
forward, the part spent inside Linear/Conv2d layers (dense or sparse, timed by forward hooks),
and torch's profiler table of the operations outside them, largest first. Use it to decide
what to speed up next: the sparse kernels, or the glue around them.

It also states the bytes bound: the bytes of the layers' weights as stored (values, indices
and biases of the sparse ones), which a forward at batch 1 must read at least once, against
this machine's copy bandwidth (a 256 MB ``copy_``, read + write). A forward that streams its
weights from memory cannot be faster than bytes / bandwidth; decoding one token is the case
where that bound matters.

    .venv-bench/bin/python -W ignore benchmarks/end_to_end_profile.py --model bert --batch 8
    .venv-bench/bin/python -W ignore benchmarks/end_to_end_profile.py --model resnet50 --batch 1

Times are from one process on a machine that may be shared: read shares, not milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end as e2e  # noqa: E402

from sparsebench.inference import (  # noqa: E402
    SparseConv2d,
    SparseLinear,
    compile_sparse,
    retain_freed_memory,
)
from sparsebench.inference.timing import machine_context  # noqa: E402
from sparsebench.layer_kinds import is_transposed_linear  # noqa: E402

BUILDERS = {"bert": e2e.build_bert, "resnet50": e2e.build_resnet, "gpt2-decode": e2e.build_gpt2}
LAYERS = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)  # timed by hooks (and Conv1D)


def _layer_time(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int
) -> tuple[float, float]:
    """Return (median forward seconds, median seconds inside the model's layers)."""
    spent = [0.0]
    starts: dict[int, float] = {}
    handles = []
    for module in model.modules():
        if isinstance(module, LAYERS) or is_transposed_linear(module):
            handles.append(module.register_forward_pre_hook(
                lambda m, _i: starts.__setitem__(id(m), time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, _i, _o: spent.__setitem__(0, spent[0] + time.perf_counter()
                                                    - starts[id(m)])))
    totals, inside = [], []
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            t0 = time.perf_counter()
            model(*inputs)
            totals.append(time.perf_counter() - t0)
            inside.append(spent[0])
    finally:
        for h in handles:
            h.remove()
    return statistics.median(totals), statistics.median(inside)


def _multiply_adds(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Return the multiply-adds a layer does for input ``x`` and output ``y``: per stored
    weight for the sparse layers (their nonzeros), per weight for the dense ones."""
    if isinstance(module, SparseLinear):
        return module.nnz * (x.numel() // module.in_features)
    if isinstance(module, SparseConv2d):
        return module.values.numel() * y[0, 0].numel() * y.shape[0]
    if isinstance(module, nn.Conv2d):
        return module.weight.numel() * y[0, 0].numel() * y.shape[0]
    return module.weight.numel() * (x.numel() // x.shape[-1])  # Linear, or Conv1D


def _describe_layer(module: nn.Module, x: torch.Tensor) -> str:
    if isinstance(module, (SparseConv2d, nn.Conv2d)):
        kind = "sparse conv" if isinstance(module, SparseConv2d) else "dense conv"
        k, st = module.kernel_size, module.stride
        return (f"{kind} {module.in_channels}->{module.out_channels} {k[0]}x{k[1]}/{st[0]} "
                f"on {x.shape[2]}x{x.shape[3]}")
    kind = "sparse linear" if isinstance(module, SparseLinear) else "dense linear"
    w = getattr(module, "weight", None)
    shape = (f"{module.out_features}x{module.in_features}" if hasattr(module, "in_features")
             else "x".join(map(str, w.shape)) if w is not None else "?")
    return f"{kind} {shape}, {x.numel() // x.shape[-1]} rows"


def per_layer_table(model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int,
                    rows: int) -> str:
    """Return the ``rows`` layer kinds (same description, summed over their layers) that take
    longest in a forward: median milliseconds per forward, share of the layers' time, and the
    rate in GFLOP/s (two per multiply-add of a kept weight)."""
    spent: dict[str, list[float]] = {}
    work: dict[str, int] = {}
    starts: dict[int, float] = {}
    handles = []

    def after(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        t = time.perf_counter() - starts[id(m)]
        what = _describe_layer(m, inp[0])
        spent.setdefault(what, [0.0])[-1] += t
        work[what] = work.get(what, 0) + _multiply_adds(m, inp[0], out)

    for module in model.modules():
        if isinstance(module, LAYERS) or is_transposed_linear(module):
            handles.append(module.register_forward_pre_hook(
                lambda m, _i: starts.__setitem__(id(m), time.perf_counter())))
            handles.append(module.register_forward_hook(after))
    try:
        for _ in range(repeats):
            for times in spent.values():
                times.append(0.0)
            work.clear()
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    median = {what: statistics.median(t) for what, t in spent.items()}
    total = sum(median.values())
    lines = [f"   {'layers (summed per kind)':<52} {'ms':>8} {'share':>6} {'GFLOP/s':>8}"]
    for what, sec in sorted(median.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"   {what:<52} {sec * 1e3:8.2f} {sec / total:6.1%} "
                     f"{2 * work[what] / sec / 1e9:8.1f}")
    return "\n".join(lines)


def layer_weight_bytes(model: nn.Module) -> int:
    """Return the bytes of the Linear/Conv2d weights (and biases) as ``model`` stores them."""
    total = 0
    for module in model.modules():
        if isinstance(module, (SparseLinear, SparseConv2d)):
            parts = [module.values, module.col_indices, module.crow_indices, module.bias]
        elif isinstance(module, (nn.Linear, nn.Conv2d)) or is_transposed_linear(module):
            parts = [module.weight, module.bias]  # transformers' Conv1D: a Linear stored (in, out)
        else:
            continue
        total += sum(t.numel() * t.element_size() for t in parts if t is not None)
    return total


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Return bytes per second moved by copying a buffer of ``megabytes`` (read + write)."""
    src = torch.ones(megabytes << 18)  # 4-byte floats
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def main() -> None:
    """Profile the dense and the compiled model of one workload and print both."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=list(BUILDERS), default="bert")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.9,
                   help="fraction of each pruned weight's entries set to zero")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=12, help="operations listed per model")
    p.add_argument("--layers", type=int, default=0,
                   help="also list the compiled model's N slowest layer kinds with their rate")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (as in end_to_end.py)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        print(f"allocator: freed memory kept in the process: {retain_freed_memory()}")
    opts = e2e.Options(models=(args.model,), batches=(args.batch,), threads=(args.threads,),
                       sparsity=args.sparsity,
                       engines=("torch", "sparse"))
    work = BUILDERS[args.model](opts)
    inputs = work.inputs(args.batch)
    print(f"{work.describe}; {work.pruned}; batch {args.batch}, {args.threads} thread(s)")
    print(machine_context())
    fast = compile_sparse(work.module, batch_hint=args.batch * work.rows_per_sample,
                          example_input=inputs)
    print(f"compile_sparse: {e2e._sparse_layers(work.module, fast)}")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write, {args.threads} thread(s))")
    with torch.no_grad():
        for name, model in (("dense torch", work.module), ("compile_sparse", fast)):
            model(*inputs)  # warm: kernels built, caches filled
            total, inside = _layer_time(model, inputs, args.repeats)
            weights = layer_weight_bytes(model)
            print(f"\n== {name}: {total * 1e3:.1f} ms per forward, {inside * 1e3:.1f} ms in its "
                  f"layers, {(total - inside) * 1e3:.1f} ms between them "
                  f"({(total - inside) / total:.0%})\n   layer weights {weights / 1e6:.1f} MB: "
                  f"read once at the copy bandwidth, {weights / bandwidth * 1e3:.1f} ms "
                  f"({weights / bandwidth / total:.0%} of the forward)")
            with profile() as prof:
                model(*inputs)
            table = prof.key_averages().table(sort_by="self_cpu_time_total",
                                              row_limit=args.rows)
            print(table)
            if args.layers and model is fast:
                print(per_layer_table(model, inputs, args.repeats, args.layers))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
