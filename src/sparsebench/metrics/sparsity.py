"""Sparsity and FLOP counting for any model, ShrinkBench-style: count the real zeros in the
weights (not mask bookkeeping), and the multiply-accumulates a forward pass would do with and
without them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..layer_kinds import is_transposed_linear

__all__ = ["LayerStats", "SparsityReport", "sparsity_report"]


@dataclass
class LayerStats:
    """One weight's counts. FLOPs count a multiply-add as 2 and are None without inputs."""

    name: str
    kind: str
    shape: tuple[int, ...]
    size: int
    nonzeros: int
    dense_flops: int | None = None
    sparse_flops: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.size if self.size else 0.0


@dataclass
class SparsityReport:
    """Per-layer and total counts for a model (see ``sparsity_report``)."""

    layers: list[LayerStats]
    total_parameters: int
    total_nonzero_parameters: int
    #: FLOPs of work that has no weight to sparsify (attention's QKᵀ and AV), if inputs given.
    other_flops: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Returns the fraction of zeros over the reported layers' weights."""
        return 1.0 - self.nonzeros / self.size if self.size else 0.0

    @property
    def dense_flops(self) -> int | None:
        if self.layers and self.layers[0].dense_flops is None:
            return None
        return sum(layer.dense_flops or 0 for layer in self.layers) + (self.other_flops or 0)

    @property
    def sparse_flops(self) -> int | None:
        if self.layers and self.layers[0].sparse_flops is None:
            return None
        return sum(layer.sparse_flops or 0 for layer in self.layers) + (self.other_flops or 0)

    @property
    def theoretical_speedup(self) -> float | None:
        """Returns dense / sparse FLOPs: the most a perfect sparse kernel could gain."""
        dense, sparse = self.dense_flops, self.sparse_flops
        return None if dense is None or not sparse else dense / sparse

    def to_dict(self) -> dict[str, Any]:
        """Returns plain data for result.json."""
        return {
            "sparsity": self.sparsity,
            "size": self.size,
            "nonzeros": self.nonzeros,
            "total_parameters": self.total_parameters,
            "total_nonzero_parameters": self.total_nonzero_parameters,
            "dense_flops": self.dense_flops,
            "sparse_flops": self.sparse_flops,
            "layers": [asdict(layer) | {"sparsity": layer.sparsity} for layer in self.layers],
        }

    def to_csv(self) -> str:
        """Returns the per-layer table as CSV text."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["layer", "kind", "shape", "size", "nonzeros", "sparsity",
                         "dense_flops", "sparse_flops"])
        for s in self.layers:
            writer.writerow([s.name, s.kind, "x".join(map(str, s.shape)), s.size, s.nonzeros,
                             f"{s.sparsity:.6f}", s.dense_flops, s.sparse_flops])
        return out.getvalue()

    def format_table(self) -> str:
        """Returns a fixed-width table for a terminal."""
        width = max([len(s.name) for s in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'shape':>16}  {'nonzeros':>10}  {'size':>10}  "
                 f"{'sparsity':>8}"]
        for s in self.layers:
            shape = "x".join(map(str, s.shape))
            lines.append(f"{s.name:<{width}}  {shape:>16}  {s.nonzeros:>10}  {s.size:>10}  "
                         f"{s.sparsity:>8.2%}")
        lines.append(f"{'total':<{width}}  {'':>16}  {self.nonzeros:>10}  {self.size:>10}  "
                     f"{self.sparsity:>8.2%}")
        if self.theoretical_speedup is not None:
            lines.append(f"FLOPs: dense {self.dense_flops:,}  sparse {self.sparse_flops:,}  "
                         f"(theoretical speed-up {self.theoretical_speedup:.2f}x)")
        return "\n".join(lines)


_Use = tuple[str, nn.Module, str, nn.Module]  # (kind, module, weight attribute, caller)


def _identity(module: nn.Module, attr: str) -> int:
    """Returns what tells one weight from another: its Parameter (the original behind a
    parametrization), so a tied weight held by several modules is one weight."""
    if attr in getattr(module, "parametrizations", {}):
        return id(module.parametrizations[attr].original)
    return id(getattr(module, attr))


def _weights(model: nn.Module) -> list[tuple[str, str, nn.Module, str, list[_Use]]]:
    """Returns one entry per weight, a tied weight once under its first name: (module name,
    kind, module, weight attribute, its uses). Each use is (kind, module, attribute, the module
    whose calls multiply by it)."""
    parents = {id(c): m for m in model.modules() for c in m.children()}
    found: dict[int, tuple[str, str, nn.Module, str, list[_Use]]] = {}
    for module_name, module in model.named_modules():
        uses: list[tuple[str, str]] = []  # (kind, attribute)
        caller = module
        if isinstance(module, nn.MultiheadAttention):
            attrs = (["in_proj_weight"] if module.in_proj_weight is not None
                     else ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
            uses = [("attention", a) for a in attrs]
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_transposed_linear(module):
            conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
            uses = [("conv" if conv else "linear", "weight")]
            # nn.MultiheadAttention reads out_proj.weight itself; out_proj.forward never runs.
            parent = parents.get(id(module))
            caller = parent if isinstance(parent, nn.MultiheadAttention) else module
        elif isinstance(module, nn.Embedding):
            # A lookup does no multiply-adds; a module that multiplies by the embedding's
            # weight (a tied output projection, ``tied_weight_module``) uses it as a Linear.
            users = [m for m in model.modules()
                     if getattr(m, "tied_weight_module", None) is module]
            uses = [("linear" if users else "embedding", "weight")]
            caller = users[0] if users else module
        for kind, attr in uses:
            key = _identity(module, attr)
            if key not in found:
                found[key] = (module_name, kind, module, attr, [])
            elif found[key][1] == "embedding" and kind != "embedding":
                found[key] = (*found[key][:1], kind, *found[key][2:])  # multiplied somewhere
            found[key][4].append((kind, module, attr, caller))
    return list(found.values())


def _attention_score_flops(module: nn.MultiheadAttention, args: Sequence[Any],
                           kwargs: dict[str, Any]) -> int:
    """Returns the FLOPs of QKᵀ and attention·V in one nn.MultiheadAttention call."""
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    query_tokens = query.numel() // query.shape[-1]
    key_length = key.shape[1] if module.batch_first and key.dim() == 3 else key.shape[0]
    return 2 * 2 * query_tokens * key_length * module.embed_dim


def _uses(kind: str, module: nn.Module, attr: str, weight: torch.Tensor, args: Sequence[Any],
          kwargs: dict[str, Any], output: Any) -> tuple[int, int]:
    """Returns (dense, sparse) multiply-adds of one call of ``module`` for its weight ``attr``.

    A Linear uses each weight once per row of its output, a convolution once per output
    position (grouped convolutions included), an attention input projection once per query,
    key or value token for its third of the weight.
    """
    out = output[0] if isinstance(output, tuple) else output
    if kind == "embedding":
        return 0, 0
    if kind == "linear":
        rows = out.numel() // out.shape[-1]
        return rows * weight.numel(), rows * int(weight.count_nonzero())
    if kind == "conv":
        positions = out.numel() // out.shape[1]
        return positions * weight.numel(), positions * int(weight.count_nonzero())
    names = ("query", "key", "value")
    streams = [args[i] if i < len(args) else kwargs[names[i]] for i in range(3)]
    tokens = [t.numel() // t.shape[-1] for t in streams]
    if attr == "in_proj_weight":
        parts = list(zip(tokens, weight.chunk(3, dim=0), strict=True))
    else:
        parts = [(tokens["qkv".index(attr[0])], weight)]
    dense = sum(n * w.numel() for n, w in parts)
    sparse = sum(n * int(w.count_nonzero()) for n, w in parts)
    return dense, sparse


def _effective_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Returns the model's parameters as evaluation would use them: a sparsified weight counts
    once, as its parametrized value, and the technique's own parameters are left out."""
    tensors = [p for name, p in model.named_parameters() if ".parametrizations." not in
               f".{name}"]
    seen: set[int] = set()
    for module in model.modules():
        for attr in getattr(module, "parametrizations", {}):
            if _identity(module, attr) not in seen:  # a tied weight is parametrized per use
                seen.add(_identity(module, attr))
                tensors.append(getattr(module, attr))
    return tensors


@torch.no_grad()
def sparsity_report(model: nn.Module, *inputs: Any, **kwargs: Any) -> SparsityReport:
    """Returns per-layer nonzeros, size and — when example inputs are given — dense and sparse
    FLOPs for one forward pass on them. Works on any model, plain or still sparsified (a
    sparsified layer is counted as it would be at evaluation).

    FLOPs count 2 per multiply-add of the Linear, Conv and attention-projection weights; a
    module may add weightless work (e.g. attention's QKᵀ and AV) through a method
    ``extra_flops(inputs, output) -> int``, counted in ``other_flops``. The model runs in eval
    mode for the count and its modes are restored afterwards.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        entries = _weights(model)
        stats: list[LayerStats] = []
        for module_name, kind, module, attr, _ in entries:
            weight = getattr(module, attr)
            name = f"{module_name}.{attr}" if module_name else attr
            stats.append(LayerStats(name=name, kind=kind, shape=tuple(weight.shape),
                                    size=weight.numel(), nonzeros=int(weight.count_nonzero())))
        other = 0
        if inputs or kwargs:
            calls: dict[int, list[tuple[Sequence[Any], dict[str, Any], Any]]] = {}

            def record(module, args, call_kwargs, output):
                calls.setdefault(id(module), []).append((args, call_kwargs, output))

            counted = {id(use[3]): use[3] for *_, uses in entries for use in uses}
            extra = [m for m in model.modules() if hasattr(m, "extra_flops")]
            counted.update({id(m): m for m in extra})
            handles = [m.register_forward_hook(record, with_kwargs=True)
                       for m in counted.values()]
            try:
                model(*inputs, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            for stat, (*_, uses) in zip(stats, entries, strict=True):
                stat.dense_flops = stat.sparse_flops = 0
                for kind, module, attr, caller in uses:
                    weight = getattr(module, attr)
                    for args, call_kwargs, output in calls.get(id(caller), []):
                        dense, sparse = _uses(kind, module, attr, weight, args, call_kwargs,
                                              output)
                        stat.dense_flops += 2 * dense
                        stat.sparse_flops += 2 * sparse
            for module in extra:
                for args, _, output in calls.get(id(module), []):
                    other += int(module.extra_flops(args, output))
            for module in model.modules():
                if isinstance(module, nn.MultiheadAttention):
                    for args, call_kwargs, _ in calls.get(id(module), []):
                        other += _attention_score_flops(module, args, call_kwargs)
        effective = _effective_parameters(model)
        total = sum(t.numel() for t in effective)
        nonzero = sum(int(t.count_nonzero()) for t in effective)
        return SparsityReport(stats, total, nonzero, other if (inputs or kwargs) else None)
    finally:
        for module, mode in modes.items():
            module.train(mode)
