"""End-to-end inference benchmark: a dense model against its compiled sparse copy.

Used by ``sparsebench bench-inference RUN_DIR`` and ``benchmarks/inference_end_to_end.py``.
For each batch size the model is compiled for that batch (the per-layer dense/CSR/BSR choice
depends on it), then dense and sparse are timed interleaved, round by round, in this process:
one forward of a batch of images for classifiers, greedy decoding of a batch of generated
source sentences for a Transformer, and for a character language model sampling characters one
at a time at batch 1 in :class:`GRUSampler`'s compiled loop (batch 1 only; no per-layer times:
its layers are not called as modules). Each batch keeps every round of both sides, so the table
prints medians with their spread, the ratio with its range over both sides' quartiles,
and flags a ratio its rounds do not support
(:class:`~sparsebench.inference.timing.Comparison`). Per-layer times come from separate
interleaved rounds with timing hooks (the hooks' own cost stays out of the end-to-end numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsebench.inference.compile import MIN_SPEEDUP, LayerDecision, compile_sparse, plan_sparse
from sparsebench.inference.gru_sampler import GRUSampler
from sparsebench.inference.perf_model import PerformanceModel
from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import SparseLinear
from sparsebench.inference.timing import Comparison, interleaved_rounds, unreliable_line
from sparsebench.models.gru import GRULanguageModel

_LAYER_TYPES = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)


@dataclass
class Workload:
    """What one timed call does for a model family.

    ``make_input(batch)`` returns the positional arguments of one call, ``run(model, args)``
    performs it, ``rows_per_sample`` is how many rows a Linear sees per sample (the source
    length for a Transformer encoder), and ``describe`` says what a call is.
    """

    describe: str
    make_input: Callable[[int], tuple[Any, ...]]
    run: Callable[[nn.Module, tuple[Any, ...]], Any]
    rows_per_sample: int = 1
    #: The batch sizes the workload can run (None: any); ``bench_model`` skips the others.
    batches: tuple[int, ...] | None = None
    #: Whether a call runs the layers as modules, so that per-layer hooks can time them.
    per_layer: bool = True

    def batch_hint(self, batch: int) -> list[int]:
        """Return the Linear row counts a call at ``batch`` produces (for ``compile_sparse``)."""
        return sorted({batch, batch * self.rows_per_sample})


def workload_for(
    model: nn.Module,
    options: dict[str, Any] | None = None,
    *,
    image_size: int | None = None,
    src_len: int = 16,
    max_len: int = 24,
    seed: int = 0,
) -> Workload:
    """Return the workload for ``model``: greedy decoding for a Transformer, else images.

    Args:
        model: the dense model.
        options: the model's registry options (``in_channels``, ``image_size``, ``stem``...).
        image_size: square image side; default: the model's option, 224 for an ImageNet stem,
            else 32.
        src_len: length of the generated source sentences (Transformer).
        max_len: decoding steps at most (Transformer).
        seed: seed of the generated inputs.
    """
    options = dict(options or {})
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, GRULanguageModel):
        return _sampling_workload(seed)
    if hasattr(model, "greedy_decode") and hasattr(model, "config"):
        cfg = model.config
        first = max(cfg.pad_id, cfg.bos_id, cfg.eos_id, cfg.unk_id) + 1

        def sentences(batch: int) -> tuple[Any, ...]:
            src = torch.randint(first, cfg.vocab_size, (batch, src_len), generator=gen)
            lengths = torch.randint(src_len // 2, src_len + 1, (batch,), generator=gen)
            for i, n in enumerate(lengths.tolist()):  # sentences of different lengths
                src[i, n - 1] = cfg.eos_id
                src[i, n:] = cfg.pad_id
            return (src,)

        return Workload(
            f"greedy decoding of generated source sentences (length <= {src_len}, "
            f"at most {max_len} tokens)",
            sentences,
            lambda m, args: m.greedy_decode(args[0], max_len=max_len),
            rows_per_sample=src_len,
        )
    channels = int(options.get("in_channels", 1 if _first_linear_only(model) else 3))
    if image_size is None:
        image_size = options.get("image_size") or (224 if options.get("stem") == "imagenet" else 0)
        if not image_size:
            image_size = _side_from_first_linear(model, channels) or 32
    side = int(image_size)
    return Workload(
        f"forward of {channels}x{side}x{side} images",
        lambda b: (torch.randn(b, channels, side, side, generator=gen),),
        lambda m, args: m(*args),
    )


#: Characters a timed sampling call generates (after a one-character prompt).
SAMPLED_CHARACTERS = 200


def _sampling_workload(seed: int) -> Workload:
    """A character language model is timed as it is used: sampling one character at a time at
    batch 1, the whole generation in :class:`GRUSampler`'s compiled loop (the dense model's
    matrices there too), from the same seed on both sides."""
    samplers: dict[int, tuple[nn.Module, GRUSampler]] = {}

    def sample(model: nn.Module, args: tuple[Any, ...]) -> Any:
        # Built once per model, outside the timed calls (a compiled model's sampler times its
        # formats in the loop when built).
        if id(model) not in samplers or samplers[id(model)][0] is not model:
            samplers[id(model)] = (model, GRUSampler(model))
        return samplers[id(model)][1].generate(args[0], SAMPLED_CHARACTERS,
                                                torch.Generator().manual_seed(seed))

    return Workload(f"sampling {SAMPLED_CHARACTERS} characters at batch 1 (GRUSampler)",
                    lambda batch: ([1],), sample, batches=(1,), per_layer=False)


def _first_linear_only(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.Conv2d) for m in model.modules())


def _side_from_first_linear(model: nn.Module, channels: int) -> int | None:
    if not _first_linear_only(model):
        return None
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        return None
    side = round((first.in_features / channels) ** 0.5)
    return side if side * side * channels == first.in_features else None


@dataclass
class BatchResult:
    """End-to-end medians at one batch size, their spread (``comparison``: quartiles of both
    sides' rounds and the ratio's range over them), and the per-layer times and plan behind
    them."""

    batch: int
    dense_s: float
    sparse_s: float
    plan: list[LayerDecision]
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (dense, sparse)
    comparison: Comparison | None = None
    layer_spread: dict[str, Comparison] = field(default_factory=dict)  # name -> its rounds

    @property
    def ratio(self) -> float:
        """Return dense time / sparse time (above 1: the sparse model is faster)."""
        return self.dense_s / self.sparse_s


def _layer_timers(model: nn.Module) -> tuple[dict[str, float], list[Any]]:
    """Attach hooks that add each layer's forward time to a dict; return it and the hooks."""
    acc: dict[str, float] = {}
    start: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, _LAYER_TYPES):

            def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
                start[name] = time.perf_counter()

            def post(_m: nn.Module, _a: Any, _o: Any, name: str = name) -> None:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - start[name]

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return acc, hooks


def per_layer_rounds(
    dense: nn.Module, sparse: nn.Module, call: Callable[[nn.Module], Any], repeats: int
) -> dict[str, Comparison]:
    """Return layer name → the comparison of its dense and sparse times per call, from
    ``repeats`` interleaved rounds (layers seen on one side only are left out)."""
    d_acc, d_hooks = _layer_timers(dense)
    s_acc, s_hooks = _layer_timers(sparse)
    samples: dict[str, tuple[list[float], list[float]]] = {}
    try:
        with torch.no_grad():
            call(dense), call(sparse)  # warm-up
            for r in range(repeats):
                for which, model, acc in ((0, dense, d_acc), (1, sparse, s_acc))[
                    :: 1 - 2 * (r % 2)
                ]:
                    acc.clear()
                    call(model)
                    for name, t in acc.items():
                        samples.setdefault(name, ([], []))[which].append(t)
    finally:
        for h in d_hooks + s_hooks:
            h.remove()
    return {n: Comparison.of(d, s) for n, (d, s) in samples.items() if d and s}


def per_layer_times(
    dense: nn.Module, sparse: nn.Module, call: Callable[[nn.Module], Any], repeats: int
) -> dict[str, tuple[float, float]]:
    """Return layer name → (dense median s, sparse median s) per call, interleaved rounds."""
    return {
        n: (c.baseline.median, c.candidate.median)
        for n, c in per_layer_rounds(dense, sparse, call, repeats).items()
    }


def bench_model(
    model: nn.Module,
    workload: Workload,
    batches: Sequence[int],
    *,
    repeats: int = 15,
    budget_s: float = 20.0,
    layer_repeats: int = 7,
    perf_model: PerformanceModel | None = None,
    min_speedup: float = MIN_SPEEDUP,
) -> list[BatchResult]:
    """Compile ``model`` for each batch and time dense vs sparse side by side.

    ``layer_repeats=0`` skips the per-layer rounds (for callers that print no per-layer table).

    Returns:
        One ``BatchResult`` per batch size, in the given order.
    """
    model = model.eval()
    pm = perf_model if perf_model is not None else PerformanceModel()
    results = []
    if workload.batches is not None:
        batches = [b for b in batches if b in workload.batches]
    for batch in batches:
        args = workload.make_input(batch)
        example = None
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):  # convs need input sizes
            one = workload.make_input(1)
            example = one if len(one) > 1 else one[0]
        plan = plan_sparse(
            model,
            batch_hint=workload.batch_hint(batch),
            perf_model=pm,
            min_speedup=min_speedup,
            example_input=example,
        )
        sparse = compile_sparse(model, plan=plan)
        rounds = interleaved_rounds(
            {
                "dense": lambda a=args: workload.run(model, a),
                "sparse": lambda a=args, s=sparse: workload.run(s, a),
            },
            repeats=repeats,
            budget_s=budget_s,
        )
        comparison = Comparison.of(rounds["dense"], rounds["sparse"])
        spread: dict[str, Comparison] = {}
        if layer_repeats > 0 and workload.per_layer:
            call = lambda m, a=args: workload.run(m, a)  # noqa: E731
            spread = per_layer_rounds(model, sparse, call, layer_repeats)
        layers = {n: (c.baseline.median, c.candidate.median) for n, c in spread.items()}
        results.append(
            BatchResult(
                batch,
                comparison.baseline.median,
                comparison.candidate.median,
                plan,
                layers,
                comparison,
                spread,
            )
        )
    return results


def results_warning(results: Sequence[BatchResult], load: str | None = None) -> str | None:
    """Return the one-line warning for the batches whose ratios are unreliable (see
    :func:`~sparsebench.inference.timing.unreliable_line`), or None when all are sound."""
    problems = {
        f"batch {r.batch}": r.comparison.problems() for r in results if r.comparison is not None
    }
    return unreliable_line(problems, load)


def format_results(
    results: Sequence[BatchResult],
    *,
    per_layer: bool = True,
    load: str | None = None,
    warn: bool = True,
) -> str:
    """Return the end-to-end table (medians, their spread, the ratio with its range over both
    sides' quartiles), with ``warn`` the one-line warning when a ratio is unreliable (``load``: the
    machine's own reason, from :func:`~sparsebench.inference.timing.load_problem`; a caller
    printing several tables passes ``warn=False`` and warns once for all) and, optionally,
    the per-layer tables, as text."""
    lines = [
        "batch |  dense ms  iqr | sparse ms  iqr | dense/sparse [range over quartiles] "
        "| dense samples/s | sparse samples/s",
    ]
    for r in results:
        if r.comparison is None:  # built by hand, without rounds: no spread to show
            spread_d = spread_s = "   -"
            ratio = f"{r.ratio:.2f}x [no rounds]"
        else:
            spread_d = f"{r.comparison.baseline.relative:4.0%}"
            spread_s = f"{r.comparison.candidate.relative:4.0%}"
            ratio = r.comparison.cell()
        lines.append(
            f"{r.batch:5d} | {r.dense_s * 1e3:9.3f} {spread_d} | {r.sparse_s * 1e3:9.3f} "
            f"{spread_s} | {ratio:<34} | {r.batch / r.dense_s:15.1f} | "
            f"{r.batch / r.sparse_s:16.1f}"
        )
    lines.append(
        "(ms: medians of the rounds; iqr: their interquartile range as a share of the median; "
        "dense/sparse: ratio of the medians [dense q1 / sparse q3 - dense q3 / sparse q1]; "
        "!: the rounds do not support the ratio)"
    )
    warning = results_warning(results, load) if warn else None
    if warning is not None:
        lines.append(warning)
    if per_layer:
        for r in results:
            lines += ["", f"per layer at batch {r.batch} (medians per call, hooks on):"]
            lines.append(
                f"  {'layer':<34} {'kind':<6} {'density':>7} {'format':>8} "
                f"{'dense us':>10} {'sparse us':>10} ratio [range over quartiles]"
            )
            decisions = {d.name: d for d in r.plan}
            for name, (d, s) in r.layers.items():
                dec = decisions.get(name)
                fmt = "dense"
                if dec is not None and dec.use_sparse:
                    fmt = "csr" if dec.block == (1, 1) else f"bsr{dec.block[0]}x{dec.block[1]}"
                density = f"{dec.density:.3f}" if dec is not None else "-"
                kind = dec.kind if dec is not None else "-"
                spread = r.layer_spread.get(name)
                ratio = spread.cell() if spread is not None and s > 0 else "-"
                lines.append(
                    f"  {name:<34} {kind:<6} {density:>7} {fmt:>8} "
                    f"{d * 1e6:10.1f} {s * 1e6:10.1f} {ratio}"
                )
    return "\n".join(lines)
