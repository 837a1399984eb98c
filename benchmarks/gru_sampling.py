"""Sampling speed of a sparse GRU language model, the Sparse WaveRNN claim (issue 27): is the
time to generate one character at batch 1 proportional to the nonzero weights, and how fast is
a large sparse GRU against a dense one of the same size and one of the same nonzeros?

Models: ``gru-lm`` (``sparsebench.models.gru``: embedding, one GRU layer whose input and
recurrent matrices are ``nn.Linear``, a softmax layer) at ``--hidden`` with every Linear
pruned by magnitude to each ``--sparsities`` (random weights: the time does not depend on
their values), compiled with ``compile_sparse`` at batch 1; the dense model at ``--hidden``;
and for each sparsity the dense model whose hidden size gives the same number of nonzero
parameters (``width_for_parameters``, as the study's small-dense baseline). Each model
generates ``--chars`` characters one at a time from the same prompt and seed two ways: the
model's own ``generate`` (a Python loop of torch calls per character) and ``GRUSampler`` (the
whole loop compiled, each matrix dense or CSR as the model holds it). All candidates run in
interleaved rounds in one process, and each pair is checked to give the same ids.

Prints, per model and loop, microseconds and characters per second beside the nonzero count and
the ratio to the dense model of the same size sampled the same way, and the time per nonzero;
and, per loop, the least-squares line time = a + b · nonzeros over the sparse models: the share
of the intercept ``a`` (what does not scale with the weights: Python, the gates, the draw) in
each time says how far "time proportional to nonzeros" holds. The load average before and
after.
Writes no files.

    .venv/bin/python benchmarks/gru_sampling.py [--hidden 1024] [--sparsities 0.9 0.95 0.98]
        [--chars 200] [--rounds 5] [--threads 1] [--block 16x1]

``--block 16x1`` prunes whole blocks of 16 rows by 1 column, as Sparse WaveRNN did, so the
compiled layers can run the block kernels (``compile_sparse`` picks the format).
"""

from __future__ import annotations

import argparse
import os

import torch

import sparsebench as sb
from sparsebench.inference import GRUSampler, compile_sparse, kernel_path
from sparsebench.inference.timing import LoadWatch, interleaved_rounds
from sparsebench.study.report.sampling import fit as fit_line
from sparsebench.study.sweep import width_for_parameters

VOCAB = 80  # about the corpus' characters
EMBED = 64


def _options(hidden: int) -> dict[str, int]:
    return {"vocab_size": VOCAB, "embed_dim": EMBED, "hidden_size": hidden}


def _nonzeros(model: torch.nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


PROMPT = [1, 2, 3]
LOOPS = ("generate", "GRUSampler")


def _sampler(model, chars: int):
    def call() -> torch.Tensor:
        return model.generate(PROMPT, chars, torch.Generator().manual_seed(0))
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    parser.add_argument("--chars", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--block", default=None, metavar="HxW",
                        help="prune whole blocks (Sparse WaveRNN's 16x1), e.g. 16x1")
    args = parser.parse_args()
    block = (1, 1)
    if args.block is not None:
        try:
            block = tuple(int(v) for v in args.block.lower().split("x"))
        except ValueError:
            parser.error(f"--block takes HxW, e.g. 16x1; got {args.block!r}")
        if len(block) != 2:
            parser.error(f"--block takes HxW, e.g. 16x1; got {args.block!r}")
    if any(not 0 < s < 1 for s in args.sparsities):
        parser.error("--sparsities must lie in (0, 1)")
    watch = LoadWatch(args.threads)
    print(f"torch {torch.__version__}; kernels={kernel_path()}; {watch.choice.describe()}; "
          f"loadavg(1/5/15m) before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    torch.manual_seed(0)
    dense = sb.models.create("gru-lm", **_options(args.hidden)).eval()
    models = {f"dense h{args.hidden}": dense}
    # Counted before compiling: compiled layers keep their weights in buffers, not parameters.
    nonzeros = {f"dense h{args.hidden}": _nonzeros(dense)}
    for s in args.sparsities:
        pruned = sb.models.create("gru-lm", **_options(args.hidden))
        pruned.load_state_dict(dense.state_dict())
        plain = sb.sparsify(pruned, "magnitude", sparsity=s, block=block).finalize()
        name = f"sparse h{args.hidden} {s:.0%}" + (f" {args.block} blocks" if args.block else "")
        models[name] = compile_sparse(plain.eval(), batch_hint=1)
        nonzeros[name] = _nonzeros(plain)
        hidden, count = width_for_parameters("gru-lm", _options(args.hidden), "hidden_size",
                                             nonzeros[name])
        name = f"dense h{hidden} (same nonzeros as {s:.0%})"
        models[name] = sb.models.create("gru-lm", **_options(hidden)).eval()
        nonzeros[name] = count
    samplers = {}
    for name, model in models.items():
        compiled = GRUSampler(model)
        same = torch.equal(_sampler(model, args.chars)(), _sampler(compiled, args.chars)())
        if not same:
            print(f"NOTE: {name}: the two loops drew different ids (a uniform within float "
                  "rounding of a boundary)")
        samplers[(name, "generate")] = _sampler(model, args.chars)
        samplers[(name, "GRUSampler")] = _sampler(compiled, args.chars)
    print("formats in GRUSampler: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in GRUSampler(m).formats.items())
        for name, m in models.items() if "sparse" in name))
    times = interleaved_rounds({f"{n} | {loop}": fn for (n, loop), fn in samplers.items()},
                               repeats=args.rounds, warmup=1)
    print(f"one GRU layer, vocabulary {VOCAB}, embedding {EMBED}; {args.chars} characters at "
          f"batch 1 per call, median of {args.rounds} interleaved rounds")
    fit = [name for name in models if name.startswith("sparse")]
    median = {key: sorted(t)[len(t) // 2] for key, t in times.items()}
    for loop in LOOPS:
        per_char = {name: median[f"{name} | {loop}"] / args.chars for name in models}
        base = per_char[f"dense h{args.hidden}"]
        print(f"{loop}:")
        for name in models:
            print(f"  {name:40s} {nonzeros[name]:>10,d} nonzeros  {1e6 * per_char[name]:8.1f} "
                  f"us/char  {1 / per_char[name]:8.0f} chars/s  {base / per_char[name]:5.2f}x "
                  f"the dense h{args.hidden}  {1e9 * per_char[name] / nonzeros[name]:.3f} "
                  "ns per nonzero")
        line = fit_line([(nonzeros[n], per_char[n]) for n in fit])
        if line is not None:
            a, b = line
            print(f"  fit over the sparse models: time/char = {1e6 * a:.1f} us + "
                  f"{1e9 * b:.3f} ns x nonzeros; the constant is "
                  + ", ".join(f"{a / per_char[n]:.0%}" for n in fit) + " of their times")
    ratio = {name: median[f"{name} | generate"] / median[f"{name} | GRUSampler"]
             for name in models}
    speedups = ", ".join(f"{name} {value:.1f}x" for name, value in ratio.items())
    print(f"GRUSampler against generate, same model: {speedups}")
    print("loadavg(1/5/15m) after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    problem = watch.problem()
    if problem:
        print(f"WARNING: {problem}")
    watch.restore()


if __name__ == "__main__":
    main()
