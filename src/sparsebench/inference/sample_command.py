"""``sparsebench sample``: text from a trained character language model (``gru-lm``).

    sparsebench sample RUN_DIR --prompt "ROMEO:" --chars 400 --seed 0
    sparsebench sample RUN_DIR --dense          # the finalized model's weights, no compiling

The run's finalized model is compiled for batch 1 (``compile_sparse``: each matrix CSR, BSR or
dense, as the performance model predicts faster) and sampled by :class:`GRUSampler` in one
compiled loop; the text goes to standard output, the time and the formats to standard error.
The characters come from the run's corpus (its ``data.root``, or the cached Shakespeare
corpus): the vocabulary is the training text's, as when the run trained.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import rundir
from ..models.gru import GRULanguageModel


def register(subparsers: Any) -> None:
    """Add the ``sample`` subcommand to the ``sparsebench`` parser."""
    p = subparsers.add_parser(
        "sample",
        help="sample text from a trained character language model run",
        description=(
            "Sample characters from RUN_DIR's finalized GRU language model, one at a time at "
            "batch 1, the model compiled sparse (--dense: as trained). The same --seed gives "
            "the same text, compiled or not. Text to stdout; time and formats to stderr."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run directory")
    p.add_argument("--prompt", default="\n", help="text the sample continues (default: a "
                   "newline)")
    p.add_argument("--chars", type=int, default=400, help="characters to sample")
    p.add_argument("--seed", type=int, default=0, help="seeds the draws")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature, > 0 (lower: more likely characters)")
    p.add_argument("--dense", action="store_true", help="sample the finalized model as it is, "
                   "without compile_sparse")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from ..data.shakespeare import build_shakespeare_corpus
    from .compile import compile_sparse
    from .gru_sampler import GRUSampler

    if args.chars < 0:
        raise ValueError(f"--chars must be >= 0, got {args.chars}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if not args.prompt:
        raise ValueError("--prompt must hold at least one character")
    model = rundir.load_finalized_model(args.run_dir)
    if not isinstance(model, GRULanguageModel):
        raise ValueError(f"{args.run_dir} holds a {type(model).__name__}; sample takes a run of "
                         "a character language model (task shakespeare-gru, model gru-lm)")
    data = (rundir.read_result(args.run_dir).get("config") or {}).get("data") or {}
    vocab = build_shakespeare_corpus(data.get("root")).vocabulary()
    if len(vocab.chars) + 1 != model.vocab_size:
        raise ValueError(f"the corpus' vocabulary has {len(vocab.chars) + 1} ids but the model "
                         f"of {args.run_dir} has {model.vocab_size}: it trained on another text")
    runnable = model if args.dense else compile_sparse(model, batch_hint=1)
    sampler = GRUSampler(runnable)
    prompt = vocab.encode(args.prompt)
    start = time.perf_counter()
    ids = sampler.generate(prompt, args.chars, torch.Generator().manual_seed(args.seed),
                           args.temperature)
    seconds = time.perf_counter() - start
    print(args.prompt + vocab.decode(ids))
    rate = f"{args.chars / seconds:,.0f} characters per second" if seconds > 0 else "no time"
    formats = ", ".join(f"{name} {fmt}" for name, fmt in sampler.formats.items())
    loop = "compiled loop" if sampler.compiled else "Python loop (no compiled kernels)"
    print(f"{args.chars} characters in {seconds:.3f} s ({rate}; {loop}; {formats})",
          file=sys.stderr)
    return 0
