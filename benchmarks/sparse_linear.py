"""Sparse Linear vs dense and vs torch's CSR, measured side by side in one process.

For a ``out x in`` layer (default 4096x1024, issue 6) at several sparsities and batch sizes,
times dense ``F.linear``, torch's CSR (``torch.sparse.mm`` with int32 indices, its fastest
setting here) and sparsebench's ``SparseLinear`` interleaved round by round, and prints
ratios of medians with their range over both sides' quartiles: dense / ours and torch-CSR /
ours. The machine is shared, so the context line (load average, threads, kernel path) is part
of the result, threads default to the idle cores, and one warning line at the end names the
ratios that the spread of their rounds or the machine's load makes unreliable.

    .venv/bin/python benchmarks/sparse_linear.py                 # the issue-6 table (~2 min)
    .venv/bin/python benchmarks/sparse_linear.py --repeats 9     # quicker, noisier
    .venv/bin/python benchmarks/sparse_linear.py --threads 1     # one thread, as asked
    .venv/bin/python benchmarks/sparse_linear.py --variants      # + OpenMP/serial/gather columns

``--variants`` adds our kernel with plain OpenMP, with our own pool (the calling thread works
and waits only for chunks a helper has started) and with the calling thread only ("ours" is
the default, adaptive OpenMP that backs off to serial runs after a stall), and at batch 1 the
AVX-512 gather SpMV, all in the same interleaved rounds.

On a shared 2-core machine a neighbour's job can stall any 2-thread parallel region (ours and
MKL's alike) for a scheduler time slice (~12 ms), which swamps a 50 us product; that is why
the default is never more threads than idle cores.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from sparsebench.inference import (
    SparseLinear,
    kernel_path,
    load_extension,
    machine_context,
)
from sparsebench.inference.sparse_linear import set_kernel_options, sparse_mm_torch
from sparsebench.inference.timing import Comparison, LoadWatch, interleaved_rounds, unreliable_line


def _with(layer: SparseLinear, x: torch.Tensor, **options: str):  # noqa: ANN202
    """Return a callable that runs ``layer(x)`` under the given kernel options."""

    def call() -> torch.Tensor:
        old = set_kernel_options(**options)
        try:
            return layer(x)
        finally:
            set_kernel_options(**old)

    return call


def main() -> None:
    """Parse arguments, run the measurements and print the ratio table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=int, default=4096, help="out_features")
    p.add_argument("--in", dest="in_f", type=int, default=1024, help="in_features")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--repeats", type=int, default=31, help="interleaved rounds per cell")
    p.add_argument("--budget", type=float, default=4.0, help="max seconds of timing per cell")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    p.add_argument("--variants", action="store_true", help="also time threading/SpMV variants")
    args = p.parse_args()
    watch = LoadWatch(args.threads)
    print(watch.choice.describe())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
    print(f"kernel path: {kernel_path()}")
    print(f"before: {machine_context()}")
    torch.manual_seed(0)
    start = time.time()
    rows = []
    for s in args.sparsities:
        w = torch.randn(args.out, args.in_f)
        w[torch.rand_like(w) < s] = 0
        b = torch.randn(args.out)
        ours = SparseLinear.from_dense(w, b)
        w_csr = ours.torch_csr()
        for batch in args.batches:
            x = torch.randn(batch, args.in_f)
            ref = F.linear(x, w, b)
            err = ((ours(x) - ref).abs().max() / ref.abs().max()).item()
            cands = {
                "dense": lambda x=x, w=w, b=b: F.linear(x, w, b),
                "torch_csr": lambda x=x, w_csr=w_csr, b=b: sparse_mm_torch(w_csr, x, b),
                "ours": lambda x=x, ours=ours: ours(x),
            }
            if args.variants and kernel_path() == "cpp":
                cands["openmp"] = _with(ours, x, threading="openmp")
                cands["pool"] = _with(ours, x, threading="pool")
                cands["serial"] = _with(ours, x, threading="serial")
                if batch == 1:
                    cands["gather16"] = _with(ours, x, spmv="gather16")
            r = interleaved_rounds(cands, repeats=args.repeats, budget_s=args.budget)
            vs = {k: Comparison.of(r["dense"], r[k], ("dense", k)) for k in r if k != "dense"}
            vs["torch_csr/ours"] = Comparison.of(r["torch_csr"], r["ours"], ("torch_csr", "ours"))
            t = {k: statistics.median(v) for k, v in r.items()}
            rows.append((s, batch, vs, err))
            extra = "".join(
                f"  {k} {v * 1e6:8.1f} us"
                for k, v in t.items()
                if k not in ("dense", "torch_csr", "ours")
            )
            print(
                f"  sparsity {s:.2f} batch {batch:4d}: dense {t['dense'] * 1e6:9.1f} us  "
                f"torch-csr {t['torch_csr'] * 1e6:9.1f} us  ours {t['ours'] * 1e6:9.1f} us"
                f"{extra}  max rel err {err:.1e}",
                flush=True,
            )
    print(f"after:  {machine_context()}  ({time.time() - start:.0f} s)")
    ext = load_extension()
    if ext is not None and hasattr(ext, "adaptive_stats"):
        for name in ("adaptive", "pool"):
            jobs, stalls, serial = getattr(ext, f"{name}_stats")()
            print(
                f"{name}: {jobs} parallel jobs, {stalls} stalls seen, {serial} run serially after"
            )
    print()
    print(f"Linear {args.out}x{args.in_f} fp32, ratios of medians of up to {args.repeats} "
          "interleaved rounds [range over both sides' quartiles], ! where the rounds do not "
          "support them")
    head = "".join(f" | b{b:<4} {'dense/ours':>22} {'csr/ours':>22}" for b in args.batches)
    print(f"sparsity{head}")
    for s in args.sparsities:
        cells = []
        for batch in args.batches:
            vs = next(r[2] for r in rows if r[0] == s and r[1] == batch)
            cells.append(f" | {'':5} {vs['ours'].cell():>22} {vs['torch_csr/ours'].cell():>22}")
        print(f"{s:8.2f}{''.join(cells)}")
    if args.variants:
        print()
        print("variants: dense / variant (same rounds); ours = adaptive OpenMP + scalar SpMV")
        for s, batch, vs, _ in rows:
            cells = "  ".join(f"{k} {c.cell()}" for k, c in vs.items() if k != "torch_csr/ours")
            print(f"  sparsity {s:.2f} batch {batch:4d}: {cells}")
    problems = {f"s={s:.2f} b{batch} {k}": c.problems() for s, batch, vs, _ in rows
                for k, c in vs.items() if args.variants or k in ("ours", "torch_csr/ours")}
    warning = unreliable_line(problems, watch.problem())
    if warning is not None:
        print(warning)


if __name__ == "__main__":
    main()
