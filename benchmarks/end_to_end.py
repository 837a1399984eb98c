"""End to end against the engines a user would deploy instead (issue 26): dense torch,
``compile_sparse``, ONNX Runtime (dense) and DeepSparse (sparse), interleaved in one process.

Each model is built from a transformers config with random weights (only the sparsity pattern
matters for speed), pruned one-shot by magnitude, exported to ONNX and timed:

- ``bert``: a BERT-base encoder (``BertModel``, no pooler) on 128 tokens; every Linear pruned.
- ``resnet50``: ResNet-50 (``ResNetModel``) on 224x224 images; every convolution but the
  first pruned. BatchNorm is folded into the convolutions for every engine (ONNX Runtime and
  DeepSparse fold it themselves; torch and ``compile_sparse`` get the same advantage).
- ``gpt2-decode``: a GPT-2-small-shaped ``GPT2LMHeadModel`` generating one token with a
  key-value cache: one decoder step at batch B on ``--past`` cached tokens, exported as one graph
  whose inputs are the token and the past keys and values (one tensor each, stacked over layers)
  and whose outputs are the logits and the new token's keys and values. Every round decodes
  the same step (the cache does not grow), so the ratio is a per-token ratio at that context.
  Its Conv1D layers are pruned; the tied embedding / LM head stays dense (a third of a step's
  weights), though ``compile_sparse`` may run it in a block format where its kernel beats
  torch's dense product: each cell names such layers.

Freed memory stays in the process (``sparsebench.inference.retain_freed_memory``, glibc's
malloc thresholds raised, process-wide, so for every engine alike) unless ``--default-malloc``:
at batch 8 the convolutional model's activations are tens of megabytes, and glibc's default
returns each to the kernel when freed, so the next one faults in fresh pages. The header says
which allocator setting a run used.

``compile_sparse`` plans each cell with the cell's thread count set, as a user who runs the
model on one thread and compiles it there would (its default judges each layer at the
process's thread count and at one).

The ratios are dense torch's median over each engine's, from interleaved rounds with the engine
order rotated (``sparsebench.inference.timing``), each with its range over both sides'
quartiles; every engine's outputs are checked against dense torch's first (largest difference
relative to the largest reference value, within 1e-4), and the load average is printed before
and after each model, with one warning line at the end naming the ratios that the spread of
their rounds or the machine's load makes unreliable.

ONNX Runtime and DeepSparse are benchmark-only dependencies: ``make bench-env`` builds
``.venv-bench`` (``pip install -e .[bench]``; deepsparse 1.8.0 needs numpy<2). An engine that
cannot be imported is skipped, and the run says so.

    .venv-bench/bin/python benchmarks/end_to_end.py --threads 1 --batches 1 8
    .venv-bench/bin/python benchmarks/end_to_end.py --models bert --threads 1 2 --rounds 21
    .venv/bin/python benchmarks/end_to_end.py --quick          # tiny configs, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import sparsebench as sb
from sparsebench.inference import (
    PerformanceModel,
    SparseConv2d,
    SparseLinear,
    compile_sparse,
    fold_batchnorm,
    retain_freed_memory,
)
from sparsebench.inference.timing import (
    Comparison,
    LoadWatch,
    Spread,
    interleaved_rounds,
    machine_context,
    unreliable_line,
)

MODELS = ("bert", "resnet50", "gpt2-decode")
#: Engine keys (``--engines``) and the names the tables print.
ENGINES = {
    "torch": "torch dense",
    "sparse": "compile_sparse",
    "ort": "ORT dense",
    "deepsparse": "DeepSparse",
}
BASELINE = "torch"
#: Largest output difference allowed, relative to the largest reference value (at least 1).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Options:
    """What to measure; validated here, where it enters.

    ``seq_len``, ``image`` and ``past`` size the inputs: BERT's tokens, ResNet's image side and
    GPT-2's cached tokens. ``quick`` swaps in tiny configs and caps those sizes (16, 32, 8).
    """

    models: tuple[str, ...] = MODELS
    batches: tuple[int, ...] = (1, 8)
    threads: tuple[int, ...] = (1, 2)
    sparsity: float = 0.9
    rounds: int = 11
    warmup: int = 2
    budget_s: float = 60.0
    engines: tuple[str, ...] = tuple(ENGINES)
    quick: bool = False
    seq_len: int = 128
    image: int = 224
    past: int = 127
    out_dir: Path | None = None
    default_malloc: bool = False
    torch_compile: bool = False

    def __post_init__(self) -> None:
        for name in self.models:
            if name not in MODELS:
                raise ValueError(f"models: unknown model {name!r}; choose from {list(MODELS)}")
        for name in self.engines:
            if name not in ENGINES:
                raise ValueError(f"engines: unknown engine {name!r}; choose from {list(ENGINES)}")
        if BASELINE not in self.engines:
            raise ValueError(f"engines must include {BASELINE!r}: every ratio is against it")
        positive = {"batches": self.batches, "threads": self.threads}
        for what, values in positive.items():
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{what} must be positive integers, got {list(values)}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.rounds < 3:
            raise ValueError(f"rounds must be at least 3 (quartiles need them), got {self.rounds}")
        for what in ("seq_len", "image", "past"):
            if getattr(self, what) < 1:
                raise ValueError(f"{what} must be at least 1, got {getattr(self, what)}")


# --------------------------------------------------------------------------- models


@dataclass
class Workload:
    """One pruned model as every engine runs it: a module whose inputs and outputs are plain
    tensors (what ONNX export and the engines take), and its inputs at a batch size."""

    name: str
    describe: str
    module: nn.Module
    inputs: Callable[[int], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    #: input/output name → index of its batch dimension (exported as dynamic; 0 everywhere,
    #: since DeepSparse sets dimension 0 of every input to its batch size).
    batch_dims: dict[str, int]
    #: rows a Linear sees per sample (``compile_sparse``'s batch hint is batch x this).
    rows_per_sample: int
    #: switches the transformers model between its default attention and "eager" (export).
    attention: Callable[[str | None], None] = lambda _impl: None
    pruned: str = ""


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:  # pragma: no cover - the bench extra and dev extra both have it
        raise SystemExit(f"transformers is needed to build the models ({exc}); "
                         f"`pip install -e .[bench]`") from exc


def _attention_switch(hf_model: nn.Module) -> Callable[[str | None], None]:
    default = hf_model.config._attn_implementation

    def switch(impl: str | None) -> None:
        hf_model.set_attn_implementation(impl or default)

    return switch


class _LastHidden(nn.Module):
    """BERT encoder → last hidden state ``(batch, tokens, hidden)``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).last_hidden_state


class _Pooled(nn.Module):
    """ResNet → pooled features ``(batch, channels)``."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.resnet(pixel_values=pixel_values).pooler_output.flatten(1)


class _DecodeStep(nn.Module):
    """One greedy-decoding step of a GPT-2 LM with its key-value cache as plain tensors.

    Inputs: the new token ``(batch, 1)`` and the past keys and values, each
    ``(batch, layers, heads, past, head_dim)`` (batch first: DeepSparse sets dimension 0 of
    every input to its batch size). Outputs: the next-token logits ``(batch, vocab)`` and the
    new token's keys and values ``(batch, layers, heads, 1, head_dim)`` (what a caller appends
    to its cache).
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = _cache(self.lm, past_keys, past_values)
        logits = self.lm(input_ids=input_ids, use_cache=True, **{_cache_kwarg(self.lm): cache}
                         ).logits
        keys, values = _cache_tensors(cache, last=1)
        return logits[:, -1], keys, values


def _cache_kwarg(lm: nn.Module) -> str:
    """Return the name under which the installed transformers takes a key-value cache
    (``cache`` from 5.x on, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _cache(lm: nn.Module, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
    """Return a transformers ``DynamicCache`` holding ``keys``/``values`` (``(batch, layers,
    heads, tokens, head_dim)``), or an empty one."""
    from transformers import DynamicCache

    if keys is None:
        return DynamicCache(config=lm.config)
    pairs = [(keys[:, i], values[:, i]) for i in range(keys.shape[1])]
    return DynamicCache(ddp_cache_data=pairs, config=lm.config)


def _cache_tensors(cache: object, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a ``DynamicCache``'s keys and values, each ``(batch, layers, heads, tokens,
    head_dim)``: all its tokens, or the ``last`` ones. A decoding step returns only its new
    token's: stacking the whole cache to slice one token off it copied 75 MB at batch 8 (two
    of the step's 50 concatenations, in every engine's graph) for 0.6 MB of output."""
    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t if last is None else t[..., -last:, :]

    layers = cache.layers
    return (torch.stack([tokens(layer.keys) for layer in layers], dim=1),
            torch.stack([tokens(layer.values) for layer in layers], dim=1))


def _prune(model: nn.Module, sparsity: float, **select: object) -> str:
    """Prune ``model`` in place one-shot by magnitude; return which weights, and how sparse."""
    sp = sb.sparsify(model, "magnitude", sparsity=sparsity, **select)
    names = [layer.name for layer in sp.layers]
    sp.finalize()
    zeros = total = 0
    for name in names:
        w = model.get_parameter(name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return f"{len(names)} weights pruned, {zeros / max(total, 1):.1%} of their entries zero"


def build_bert(opts: Options) -> Workload:
    """Return the pruned BERT encoder workload (BERT-base, or a tiny one in quick mode)."""
    tf = _transformers()
    if opts.quick:
        config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, vocab_size=100, max_position_embeddings=64)
        tokens = min(opts.seq_len, 16)
    else:
        config = tf.BertConfig()  # BERT-base: 12 layers, 768 hidden, 12 heads, 3072 FFN
        tokens = opts.seq_len
    bert = tf.BertModel(config, add_pooling_layer=False).eval()
    pruned = _prune(bert, opts.sparsity)  # every Linear: all of them are the encoder's
    vocab = config.vocab_size

    def inputs(batch: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(batch)
        return (torch.randint(0, vocab, (batch, tokens), generator=g),)

    return Workload(
        name="bert",
        describe=(f"BERT encoder {config.num_hidden_layers}x{config.hidden_size} "
                  f"(FFN {config.intermediate_size}), {tokens} tokens"),
        module=_LastHidden(bert).eval(),
        inputs=inputs,
        input_names=["input_ids"],
        output_names=["last_hidden_state"],
        batch_dims={"input_ids": 0, "last_hidden_state": 0},
        rows_per_sample=tokens,
        attention=_attention_switch(bert),
        pruned=pruned,
    )


def build_resnet(opts: Options) -> Workload:
    """Return the pruned ResNet workload (ResNet-50, or a tiny one in quick mode)."""
    tf = _transformers()
    if opts.quick:
        config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1])
        side = min(opts.image, 32)
    else:
        config = tf.ResNetConfig()  # ResNet-50: bottlenecks, depths 3-4-6-3
        side = opts.image
    resnet = tf.ResNetModel(config).eval()
    pruned = _prune(resnet, opts.sparsity, exclude=["embedder.embedder.convolution"])
    folded = fold_batchnorm(resnet)  # for every engine alike

    def inputs(batch: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, 3, side, side, generator=g),)

    return Workload(
        name="resnet50",
        describe=(f"ResNet depths {'-'.join(map(str, config.depths))}, widths "
                  f"{config.hidden_sizes[-1]}, {side}x{side} images, {folded} BatchNorms folded"),
        module=_Pooled(resnet).eval(),
        inputs=inputs,
        input_names=["pixel_values"],
        output_names=["pooled"],
        batch_dims={"pixel_values": 0, "pooled": 0},
        rows_per_sample=1,
        pruned=pruned,
    )


def build_gpt2(opts: Options) -> Workload:
    """Return the pruned GPT-2 decoding-step workload (GPT-2 small, or tiny in quick mode)."""
    tf = _transformers()
    if opts.quick:
        config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64,
                               bos_token_id=0, eos_token_id=0)
        past = min(opts.past, 8)
    else:
        config = tf.GPT2Config()  # GPT-2 small: 12 layers, 768 wide, 50257 tokens
        past = opts.past
    lm = tf.GPT2LMHeadModel(config).eval()
    # Every Conv1D (attention c_attn/c_proj, MLP c_fc/c_proj); the tied LM head stays dense.
    pruned = _prune(lm, opts.sparsity, include=["transformer.h.*"])
    step = _DecodeStep(lm).eval()
    cached: dict[int, tuple[torch.Tensor, ...]] = {}

    def inputs(batch: int) -> tuple[torch.Tensor, ...]:
        # The cache of a real prompt (a prefill through the same model), then its next token.
        if batch not in cached:
            g = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, config.vocab_size, (batch, past + 1), generator=g)
            cache = _cache(lm)
            with torch.no_grad():
                lm(input_ids=prompt[:, :past], use_cache=True, **{_cache_kwarg(lm): cache})
            keys, values = _cache_tensors(cache)
            cached[batch] = (prompt[:, past:].contiguous(), keys.contiguous(),
                             values.contiguous())
        return cached[batch]

    names = ["input_ids", "past_keys", "past_values", "logits", "new_keys", "new_values"]
    dims = dict.fromkeys(names, 0)
    return Workload(
        name="gpt2-decode",
        describe=(f"GPT-2 {config.n_layer}x{config.n_embd} (vocab {config.vocab_size}), one "
                  f"decoding step on {past} cached tokens"),
        module=step,
        inputs=inputs,
        input_names=names[:3],
        output_names=names[3:],
        batch_dims=dims,
        rows_per_sample=1,
        attention=_attention_switch(lm),
        pruned=pruned,
    )


BUILDERS: dict[str, Callable[[Options], Workload]] = {
    "bert": build_bert,
    "resnet50": build_resnet,
    "gpt2-decode": build_gpt2,
}


# --------------------------------------------------------------------------- engines


def _optional_engines(requested: Sequence[str]) -> tuple[dict[str, object], list[str]]:
    """Import the ONNX engines asked for; return name → module and one line per skipped one."""
    modules, skipped = {}, []
    for key, module_name in (("ort", "onnxruntime"), ("deepsparse", "deepsparse")):
        if key not in requested:
            continue
        try:
            modules[key] = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any failure to import means "not here"
            skipped.append(f"{ENGINES[key]} skipped: `import {module_name}` failed "
                           f"({type(exc).__name__}: {exc}); `make bench-env` installs it")
    return modules, skipped


def export_onnx(work: Workload, path: Path) -> Path:
    """Export ``work.module`` to ONNX (opset 14, the TorchScript exporter, batch dynamic),
    with transformers' eager attention; return ``path``."""
    example = work.inputs(1)
    axes = {name: {dim: "batch"} for name, dim in work.batch_dims.items()}
    work.attention("eager")
    try:
        with warnings.catch_warnings():
            # The exporter's deprecation notice and tracer warnings on shape branches.
            warnings.simplefilter("ignore")
            torch.onnx.export(work.module, example, str(path), opset_version=14, dynamo=False,
                              input_names=work.input_names, output_names=work.output_names,
                              dynamic_axes=axes)
    finally:
        work.attention(None)
    return path


def ort_session(ort: object, path: Path, threads: int) -> object:
    """Return an ONNX Runtime session: ``threads`` intra-op threads, sequential execution,
    all graph optimizations (BatchNorm folding, fusions)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _arrays(out: object) -> list[np.ndarray]:
    """Return an engine's outputs as a list of numpy arrays."""
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    return [o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out]


def output_difference(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Return the largest absolute difference over all outputs, relative to the largest
    absolute reference value (or 1, when that is smaller); inf when the shapes differ."""
    if len(reference) != len(got):
        return float("inf")
    worst = 0.0
    for ref, out in zip(reference, got, strict=True):
        if ref.shape != out.shape:
            return float("inf")
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        diff = float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max(initial=0.0))
        worst = max(worst, diff / scale)
    return worst


def _sparse_layers(original: nn.Module, compiled: nn.Module) -> str:
    """Return how many layers ``compile_sparse`` made sparse and how many it left dense, and
    name the ones it runs in a sparse format although their weights are mostly nonzero (its
    kernel beat dense there, so that part of the ratio does not come from the zeros)."""
    kinds = (SparseLinear, SparseConv2d)
    sparse = [name for name, m in compiled.named_modules() if isinstance(m, kinds)]
    dense = sum(type(m) in (nn.Linear, nn.Conv2d) or type(m).__name__ == "Conv1D"
                for m in compiled.modules())
    text = f"{len(sparse)} layers sparse, {dense} dense"
    mostly_nonzero = []
    for name in sparse:
        weight = original.get_submodule(name).weight
        density = float((weight != 0).float().mean())
        if density > 0.5:
            mostly_nonzero.append(f"{name} (density {density:.2f})")
    if mostly_nonzero:
        text += f"; in a sparse format although dense: {', '.join(mostly_nonzero)}"
    return text


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Cell:
    """One (model, threads, batch) measured: each engine's comparison against dense torch."""

    model: str
    threads: int
    batch: int
    comparisons: dict[str, Comparison]
    differences: dict[str, float]
    problems: list[str]
    #: DeepSparse against compile_sparse in the same rounds (above 1: compile_sparse is faster).
    versus: Comparison | None = None

    @property
    def label(self) -> str:
        """Return the cell's name in tables and warnings."""
        return f"{self.model} t{self.threads} b{self.batch}"


def measure_cell(
    work: Workload,
    batch: int,
    threads: int,
    opts: Options,
    onnx_path: Path | None,
    engines: dict[str, object],
    perf_model: Callable[[], PerformanceModel],
) -> Cell:
    """Build each engine for one batch and thread count, check its outputs against dense
    torch, time all of them in interleaved rounds and print the result; return it."""
    watch = LoadWatch(threads)  # torch's threads, restored below
    try:
        inputs = work.inputs(batch)
        runners: dict[str, Callable[[], object]] = {
            "torch": lambda: work.module(*inputs),
        }
        notes = []
        if "sparse" in opts.engines:
            t0 = time.perf_counter()
            # Made here, with the cell's threads set: a user who runs the model on one thread
            # and compiles it there gets layers judged at one thread; made once at the
            # process's two, the one-thread cells were judged at the worse of two and one
            # (PerformanceModel.thread_counts), and ResNet-50 at batch 1 kept two convolutions
            # dense that win on one thread (3.8x and 2.9x calibrated there).
            fast = compile_sparse(work.module, batch_hint=batch * work.rows_per_sample,
                                  example_input=inputs, perf_model=perf_model())
            notes.append(f"compile_sparse: {_sparse_layers(work.module, fast)} "
                         f"(planned in {time.perf_counter() - t0:.0f} s)")
            runners["sparse"] = lambda: fast(*inputs)
            if opts.torch_compile:
                with torch.no_grad():
                    fast(*inputs)  # builds the layouts its traced graph reads
                    traced = torch.compile(fast)
                    t0 = time.perf_counter()
                    traced(*inputs)
                notes.append(f"compile_sparse under torch.compile (first call "
                             f"{time.perf_counter() - t0:.0f} s)")
                runners["sparse"] = lambda: traced(*inputs)
        feeds = {n: np.ascontiguousarray(t.numpy())
                 for n, t in zip(work.input_names, inputs, strict=True)}
        if "ort" in engines and onnx_path is not None:
            session = ort_session(engines["ort"], onnx_path, threads)
            runners["ort"] = lambda: session.run(None, feeds)
        if "deepsparse" in engines and onnx_path is not None:
            try:
                t0 = time.perf_counter()
                engine = engines["deepsparse"].compile_model(
                    str(onnx_path), batch_size=batch, num_cores=threads)
                listed = [feeds[n] for n in work.input_names]
                runners["deepsparse"] = lambda: engine.run(listed)
                notes.append(f"DeepSparse: compiled in {time.perf_counter() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001 - say why and measure the others
                notes.append(f"DeepSparse skipped here: {type(exc).__name__}: {exc}")
        with torch.no_grad():
            reference = _arrays(runners[BASELINE]())
            differences = {}
            for key, run in list(runners.items()):
                if key == BASELINE:
                    continue
                try:
                    differences[key] = output_difference(reference, _arrays(run()))
                except Exception as exc:  # noqa: BLE001 - say why and measure the others
                    notes.append(f"{ENGINES[key]} skipped here: {type(exc).__name__}: {exc}")
                    del runners[key]
        samples = interleaved_rounds(
            {ENGINES[k]: run for k, run in runners.items()},
            repeats=opts.rounds, warmup=opts.warmup, budget_s=opts.budget_s)
        base = ENGINES[BASELINE]
        comparisons = {k: Comparison.of(samples[base], samples[ENGINES[k]], (base, ENGINES[k]))
                       for k in runners if k != BASELINE}
        versus = None
        if "sparse" in runners and "deepsparse" in runners:
            names = (ENGINES["deepsparse"], ENGINES["sparse"])
            versus = Comparison.of(samples[names[0]], samples[names[1]], names)
        found = [p for c in comparisons.values() for p in c.problems()]
        found += versus.problems() if versus is not None else []
        found.append(watch.problem())
        problems = [p for p in dict.fromkeys(found) if p is not None]  # each reason once
    finally:
        watch.restore()
    cell = Cell(work.name, threads, batch, comparisons, differences, problems, versus)
    _print_cell(cell, samples, notes)
    return cell


def _print_cell(cell: Cell, samples: dict[str, list[float]], notes: list[str]) -> None:
    rounds = len(next(iter(samples.values())))
    print(f"\n-- {cell.model}, {cell.threads} thread(s), batch {cell.batch}: {rounds} "
          f"interleaved rounds; ms median [quartiles]; ratio = dense torch / engine")
    for note in notes:
        print(f"   {note}")
    base = ENGINES[BASELINE]
    for key, name in ENGINES.items():
        if name not in samples:
            continue
        c = cell.comparisons.get(key)
        side = c.candidate if c is not None else Spread.of(samples[base])
        ratio = c.cell() if c is not None else "(baseline)"
        check = ""
        if key in cell.differences:
            d = cell.differences[key]
            check = f"outputs {'ok' if d <= TOLERANCE else 'DIFFER'} ({d:.1e})"
        print(f"   {name:<15} {side.median * 1e3:9.2f} ms [{side.q1 * 1e3:.2f}-"
              f"{side.q3 * 1e3:.2f}]  {ratio:<26} {check}")


def run(opts: Options) -> list[Cell]:
    """Build, prune, export and time every model in ``opts``; print everything, including a
    summary table and the warning line; return the measured cells."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    modules, skipped = _optional_engines(opts.engines)
    print(f"end to end: models {list(opts.models)}, batches {list(opts.batches)}, threads "
          f"{list(opts.threads)}, {opts.sparsity:.0%} unstructured magnitude sparsity, fp32"
          f"{', quick (tiny configs)' if opts.quick else ''}")
    for line in skipped:
        print(line)
    versions = [f"torch {torch.__version__}", f"numpy {np.__version__}"]
    versions += [f"{m.__name__} {m.__version__}" for m in modules.values()]
    print("versions: " + ", ".join(versions))
    if opts.default_malloc:
        print("allocator: the C library's defaults (--default-malloc)")
    else:
        kept = retain_freed_memory()
        print("allocator: " + ("freed memory kept in the process (retain_freed_memory)" if kept
                               else "defaults (retain_freed_memory found no glibc mallopt)"))
    with contextlib.ExitStack() as stack:
        out_dir = opts.out_dir
        if out_dir is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="e2e-")))
        out_dir.mkdir(parents=True, exist_ok=True)
        if opts.quick:  # tiny shapes, short calibrations, kept out of the machine's cache
            perf_model = functools.partial(PerformanceModel, out_dir / "calibration.json",
                                           densities=(0.05, 0.1, 0.5, 1.0), budget_s=0.05)
        else:
            perf_model = PerformanceModel
        cells = []
        for name in opts.models:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            work = BUILDERS[name](opts)
            onnx_path = None
            if modules:
                onnx_path = export_onnx(work, out_dir / f"{name}.onnx")
            print(f"\n== {name}: {work.describe}; {work.pruned}; built"
                  f"{' and exported' if onnx_path else ''} in {time.perf_counter() - t0:.0f} s")
            print(f"   before: {machine_context()}")
            for threads in opts.threads:
                for batch in opts.batches:
                    cells.append(measure_cell(work, batch, threads, opts, onnx_path, modules,
                                              perf_model))
            print(f"   after: {machine_context()}")
            del work
    print_summary(cells)
    return cells


def print_summary(cells: Sequence[Cell]) -> None:
    """Print the summary table (each engine × dense torch, and compile_sparse against
    DeepSparse) and one warning line when a ratio is unreliable."""
    print("\nsummary: dense torch median / engine median (above 1: the engine is faster), "
          "[range over both sides' quartiles], ! where the rounds do not support it")
    keys = [k for k in ENGINES if k != BASELINE and any(k in c.comparisons for c in cells)]
    header = f"{'model':<12} {'threads':>7} {'batch':>5} " + " ".join(
        f"{ENGINES[k] + ' x torch':>26}" for k in keys)
    print(header)
    for c in cells:
        row = " ".join(f"{c.comparisons[k].cell() if k in c.comparisons else '-':>26}"
                       for k in keys)
        print(f"{c.model:<12} {c.threads:>7} {c.batch:>5} {row}")
    if any(c.versus is not None for c in cells):
        print("compile_sparse against DeepSparse: DeepSparse median / compile_sparse median "
              "(below 1: DeepSparse is faster, we lose)")
        for c in cells:
            if c.versus is not None:
                print(f"  {c.label:<22} {c.versus.cell()}")
    bad = [f"{c.label} {ENGINES[k]}" for c in cells for k, d in c.differences.items()
           if d > TOLERANCE]
    print("outputs: " + ("all within 1e-4 of dense torch" if not bad
                         else f"DIFFER beyond 1e-4: {', '.join(bad)}"))
    warning = unreliable_line({c.label: c.problems for c in cells})
    if warning is not None:
        print(warning)


def parse(argv: Sequence[str] | None = None) -> Options:
    """Return the options from the command line (``argv``; default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds per cell")
    p.add_argument("--budget", type=float, default=60.0,
                   help="stop a cell's rounds after this many seconds (at least 3 rounds)")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--quick", action="store_true",
                   help="tiny configs (a test runs it in seconds; ratios mean nothing)")
    p.add_argument("--seq-len", type=int, default=128, help="BERT tokens")
    p.add_argument("--image", type=int, default=224, help="ResNet image side")
    p.add_argument("--past", type=int, default=127, help="GPT-2 cached tokens")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="keep the ONNX files here (default: a temporary folder)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (see above)")
    p.add_argument("--torch-compile", action="store_true",
                   help="run our compiled model through torch.compile (its sparse products "
                        "are custom ops, so inductor takes the model whole)")
    a = p.parse_args(argv)
    try:
        return Options(
            models=tuple(a.models), batches=tuple(a.batches), threads=tuple(a.threads),
            sparsity=a.sparsity, rounds=a.rounds, budget_s=a.budget, engines=tuple(a.engines),
            quick=a.quick, seq_len=a.seq_len, image=a.image, past=a.past, out_dir=a.out_dir,
            warmup=1 if a.quick else 2, default_malloc=a.default_malloc,
            torch_compile=a.torch_compile)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> list[Cell]:
    """Run the benchmark from the command line; return the measured cells."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse: no network here
    return run(parse(argv))


if __name__ == "__main__":
    main()
