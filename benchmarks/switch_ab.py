"""A compiled model with one of our kernel choices on and off, side by side.

Builds one of ``end_to_end.py``'s workloads (random weights, pruned), compiles it once with
``compile_sparse`` and times the same compiled model in interleaved rounds with the switch on
(the default) and off. Only our own model runs in the process, so the ratio is free of other
engines' thread pools. The switches:

* ``layout``: the count-class layout of the CSR weights: sparse Linears take it from
  ``PANEL_LAYOUT_MIN_ROWS`` rows on, sparse convolutions where the kernels say it pays
  (``sparse_conv.CONV_LAYOUT``); off, neither ever does.
* ``compiled``: CSR Linears' products of many rows through code compiled for their pattern
  (``sparse_linear.PATTERN_KERNEL``); off, through the count-class layout.
* ``torch-compile``: the compiled model run through ``torch.compile`` (its sparse products
  are custom ops, ``inference/ops.py``, so inductor takes the model whole); off, eagerly.
* ``attention``: the modules that call torch's scaled dot product attention run the
  extension's attention kernel instead (``glue.route_attention``); off, torch's.
* ``layer-norm``: ``nn.LayerNorm`` layers run the extension's row kernel
  (``glue.RowLayerNorm``); off, torch's.
* ``chain``: a sparse Linear whose output feeds only another (a transformer's feed-forward
  block) computed with it in one call (``chains.chain_linears``,
  ``sparse_linear.CHAIN_PRODUCTS``); off, one product after the other.
* ``conv-pattern``: CSR convolutions with enough nonzeros per row through code compiled for
  their pattern (``sparse_conv.CONV_PATTERN``); off, through the count-class layout or
  ``conv_rows``.
* ``norm-epilogue``: a post-norm Transformer's ``norm(linear(x) + r)`` computed by the
  sparse Linear's kernel as it writes its rows (``fusion.fuse_residual_norm``,
  ``sparse_linear.NORM_EPILOGUE``); off, as a sum and a layer norm after the product.
* ``few-rows``: BSR weights of 16x1 blocks at 2-16 batch rows multiplied with the block's 16
  rows as the vector (``set_bsr_few_rows``); off, through the register tile over the batch.
* ``stream``: outputs larger than the kernels' threshold written by non-temporal stores
  (``set_stream_min_bytes``); off, never.

    .venv-bench/bin/python -W ignore benchmarks/switch_ab.py --model bert --batch 8 --threads 2
    .venv-bench/bin/python -W ignore benchmarks/switch_ab.py --model resnet50 --batch 8 \\
        --switch stream
    .venv-bench/bin/python -W ignore benchmarks/switch_ab.py --model bert --switch compiled
    .venv-bench/bin/python -W ignore benchmarks/switch_ab.py --model bert --switch torch-compile

Prints both medians and off / on (above 1: the switch makes the model faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end as e2e  # noqa: E402

from sparsebench.inference import (  # noqa: E402
    _extension,
    compile_sparse,
    glue,
    retain_freed_memory,
    sparse_conv,
    sparse_linear,
)
from sparsebench.inference.timing import machine_context  # noqa: E402

DEFAULT_MIN_ROWS = sparse_linear.PANEL_LAYOUT_MIN_ROWS


def _layout(on: bool) -> None:
    sparse_linear.PANEL_LAYOUT_MIN_ROWS = DEFAULT_MIN_ROWS if on else 1 << 62
    sparse_conv.CONV_LAYOUT = on


def _stream(on: bool) -> None:
    ext = _extension.load_extension()
    if ext is None or not hasattr(ext, "set_stream_min_bytes"):
        raise SystemExit("this build has no non-temporal output stores to switch")
    ext.set_stream_min_bytes(-1 if on else 1 << 62)


def _few_rows(on: bool) -> None:
    ext = _extension.load_extension()
    if ext is None or not hasattr(ext, "set_bsr_few_rows"):
        raise SystemExit("this build has no few-rows kernel for 16x1 blocks to switch")
    ext.set_bsr_few_rows(on)


def _compiled(on: bool) -> None:
    ext = _extension.load_extension()
    if ext is None or not getattr(ext, "HAVE_PATTERN_KERNEL", False):
        raise SystemExit("this build has no pattern kernels to switch")
    sparse_linear.PATTERN_KERNEL = on


def _conv_pattern(on: bool) -> None:
    sparse_conv.CONV_PATTERN = on


def _norm_epilogue(on: bool) -> None:
    sparse_linear.NORM_EPILOGUE = on


def _chain(on: bool) -> None:
    sparse_linear.CHAIN_PRODUCTS = on


def _attention(on: bool) -> None:
    glue.ATTENTION_KERNEL = on


def _layer_norm(on: bool) -> None:
    glue.LAYER_NORM_KERNEL = on


SWITCHES: dict[str, Callable[[bool], None]] = {"layout": _layout, "compiled": _compiled,
                                               "attention": _attention, "chain": _chain,
                                               "layer-norm": _layer_norm,
                                               "torch-compile": lambda on: None,
                                               "stream": _stream,
                                               "conv-pattern": _conv_pattern,
                                               "norm-epilogue": _norm_epilogue,
                                               "few-rows": _few_rows}


def main() -> None:
    """Compile the workload, then time it with the switch on and off, side by side."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=list(e2e.BUILDERS), default="bert")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--switch", choices=list(SWITCHES), default="layout")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    opts = e2e.Options(models=(args.model,), batches=(args.batch,), threads=(args.threads,),
                       engines=("torch", "sparse"))
    work = e2e.BUILDERS[args.model](opts)
    inputs = work.inputs(args.batch)
    print(f"{work.describe}; {work.pruned}; batch {args.batch}, {args.threads} thread(s); "
          f"switch: {args.switch}")
    print(machine_context())
    fast = compile_sparse(work.module, batch_hint=args.batch * work.rows_per_sample,
                          example_input=inputs)
    switch = SWITCHES[args.switch]
    run = {True: fast, False: fast}
    if args.switch == "torch-compile":
        with torch.no_grad():
            fast(*inputs)  # the eager layouts, which the traced graph reads
        run[True] = torch.compile(fast)
        t0 = time.perf_counter()
        with torch.no_grad():
            run[True](*inputs)
        print(f"   torch.compile: first call (tracing, inductor) {time.perf_counter() - t0:.0f} s")
    times: dict[bool, list[float]] = {True: [], False: []}
    backoff = {True: [0, 0, 0], False: [0, 0, 0]}
    try:
        with torch.no_grad():
            for on in times:  # warm: layouts built, caches filled
                switch(on)
                run[on](*inputs)
            for _ in range(args.rounds):
                for on in times:
                    switch(on)
                    before = _adaptive_stats()
                    t0 = time.perf_counter()
                    run[on](*inputs)
                    times[on].append(time.perf_counter() - t0)
                    backoff[on] = [a + n - b for a, n, b in
                                   zip(backoff[on], _adaptive_stats(), before, strict=True)]
    finally:
        switch(True)
    med = {on: statistics.median(t) for on, t in times.items()}
    for on, t in times.items():
        print(f"   {args.switch} {'on ' if on else 'off'} {med[on] * 1e3:9.1f} ms median of "
              f"{args.rounds} (rounds spread {(max(t) - min(t)) / med[on]:.0%})")
    print(f"   off / on: {med[False] / med[True]:.2f}x")
    if args.threads > 1:
        for on, (jobs, stalls, serial) in backoff.items():
            print(f"   {args.switch} {'on ' if on else 'off'} adaptive threading: {jobs} parallel "
                  f"jobs, {stalls} found the cores busy, {serial} run serially after that")


def _adaptive_stats() -> tuple[int, int, int]:
    """The extension's adaptive threading counters (parallel jobs, stalls, serial jobs)."""
    ext = _extension.load_extension()
    return tuple(ext.adaptive_stats()) if ext is not None else (0, 0, 0)


if __name__ == "__main__":
    main()
