"""What each of compile_sparse's fusions buys on a real-size model: the compiled model against
copies compiled from the same plan with one fusion left out, timed side by side in one process.

The models are ``end_to_end.py``'s (random weights, 90% unstructured). Left out in turn:

- ``activations``: ``fuse_activations`` (a Linear's ReLU/GELU applied by its kernel);
- ``residual``: ``fuse_residual_relu`` (a ResNet block's sum and ReLU in its last convolution);
- ``relu``: ``fuse_relu`` (a convolution's ReLU applied by its kernel);
- ``pooling``: the NCHW max-pooling kernel (the channels-last stand-in pools instead).

A fusion that finds nothing in a model is skipped, with a line saying so. Each line prints
the variant's median over the fused model's (above 1: the fusion makes the model faster) with
its range over both sides' quartiles. Freed memory stays in the process, as in
``end_to_end.py``, unless ``--default-malloc``.

    .venv-bench/bin/python -W ignore benchmarks/fusion_ab.py --model bert --batch 8
    .venv-bench/bin/python -W ignore benchmarks/fusion_ab.py --model resnet50 --batch 1 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end as e2e  # noqa: E402

from sparsebench.inference import (  # noqa: E402
    SparseConv2d,
    SparseLinear,
    compile_sparse,
    glue,  # noqa: E402
    plan_sparse,
    retain_freed_memory,
)
from sparsebench.inference.timing import (  # noqa: E402
    Comparison,
    interleaved_rounds,
    machine_context,
    unreliable_line,
)

BUILDERS = {"bert": e2e.build_bert, "resnet50": e2e.build_resnet, "gpt2-decode": e2e.build_gpt2}


def _counts(model: nn.Module) -> dict[str, int]:
    """Return how many places each fusion changed in a compiled model."""
    return {
        "activations": sum(isinstance(m, SparseLinear) and m.activation != "none"
                           for m in model.modules()),
        "residual": sum("forward" in vars(m) for m in model.modules()),
        "relu": sum(isinstance(m, SparseConv2d) and m.relu for m in model.modules()),
        "pooling": sum(isinstance(m, glue.ChannelsLastMaxPool2d) for m in model.modules()),
    }


def _without(fusion: str) -> mock._patch:
    """Return a patch under which compile_sparse leaves ``fusion`` out."""
    if fusion == "pooling":
        return mock.patch.object(glue.ChannelsLastMaxPool2d, "_nchw_kernel_args",
                                 lambda self, x: None)
    target = {"activations": "fuse_activations", "residual": "fuse_residual_relu",
              "relu": "fuse_relu"}[fusion]
    return mock.patch(f"sparsebench.inference.compile.{target}", lambda model: 0)


def main() -> None:
    """Time the fused model against each variant with one fusion left out."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=list(BUILDERS), default="resnet50")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else retain_freed_memory()
    print(f"allocator: {'freed memory kept (retain_freed_memory)' if kept else 'defaults'}")
    opts = e2e.Options(models=(args.model,), batches=tuple(args.batch),
                       threads=(args.threads,), engines=("torch", "sparse"))
    work = BUILDERS[args.model](opts)
    print(f"{work.describe}; {work.pruned}; {args.threads} thread(s)")
    for batch in args.batch:
        inputs = work.inputs(batch)
        rows = batch * work.rows_per_sample
        plan = plan_sparse(work.module, batch_hint=rows, example_input=inputs)
        fused = compile_sparse(work.module, plan=plan)
        counts = _counts(fused)
        candidates: dict[str, Callable[[], object]] = {
            "fused": lambda m=fused, x=inputs: m(*x)}
        for fusion, n in counts.items():
            if n == 0:
                print(f"   {fusion}: nothing to fuse in this model")
                continue
            with _without(fusion):
                variant = compile_sparse(work.module, plan=plan)
                candidates[f"without {fusion}"] = (
                    lambda m=variant, x=inputs: m(*x)) if fusion != "pooling" else (
                    lambda m=variant, f=fusion, x=inputs: _run_without(f, m, x))
        print(f"-- batch {batch}: {machine_context()}")
        print(f"   fused places: {counts}")
        rounds = interleaved_rounds(candidates, repeats=args.rounds)
        problems = {}
        for name in candidates:
            if name == "fused":
                continue
            c = Comparison.of(rounds[name], rounds["fused"], (name, "fused"))
            problems[f"b{batch} {name}"] = c.problems()
            print(f"   {name:<22} {c.baseline.median * 1e3:9.2f} ms against "
                  f"{c.candidate.median * 1e3:.2f} ms fused: {c.cell()}")
        warning = unreliable_line(problems)
        if warning is not None:
            print(warning)


def _run_without(fusion: str, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> object:
    """Run ``model`` with ``fusion`` left out at call time (pooling is chosen per call)."""
    with _without(fusion):
        return model(*inputs)


if __name__ == "__main__":
    main()
