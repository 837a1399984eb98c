"""Link two sparse Linears whose first feeds only the second, so one call computes both.

A transformer's feed-forward block is a Linear, an activation and a Linear, the activations
between them four times as wide as the block's input: 12 MB at BERT-base's 1,024 rows (batch
8 of 128 tokens). Run as two products, the first writes them out (transposed back from its
sums) and the second reads and packs them again. ``csr_pattern_chain`` computes both products
panel by panel instead, the first product's sums, in the L2, being the second's packed input.

The two layers usually sit in different modules (transformers' ``BertIntermediate`` and
``BertOutput``; GPT-2's ``c_fc`` and ``c_proj`` inside its MLP's own forward), so which layer
feeds which cannot be read from one module's graph. ``chain_linears`` runs the example input
once and watches: a pair is linked when the first layer's output (with its activation
already fused, ``fusion.fuse_activations``) is passed, as the same tensor, to the second and
to nothing else: no torch function outside the second layer takes it (a dropout, a view, a
reshape or a size query would), no sparse layer takes it as a residual, and the model does
not return it. Then the first layer hands
its input through unchanged and the second computes both (``SparseLinear.chained``). A forward
whose control flow changes with its input could route the first layer's output elsewhere on
another input than the example; such models should not be compiled with an example that
misrepresents them. The layers keep their weights, names and saved form: a file saved from a
chained model loads as two ordinary layers, which compute the same.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from sparsebench.inference.sparse_linear import SparseLinear


class _OutputUses(TorchFunctionMode):
    """Counts the torch function calls, outside any SparseLinear's own forward, that take a
    watched tensor (an output of a SparseLinear) as an argument."""

    def __init__(self, made: dict[int, tuple[str, Tensor]]) -> None:
        super().__init__()
        self.made = made
        self.depth = 0  # SparseLinear forwards being run
        self.uses: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if self.depth == 0:
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor) and id(leaf) in self.made:
                    self.uses[self.made[id(leaf)][0]] += 1
        return func(*args, **kwargs)


def _pairs(model: nn.Module, example_input: object) -> list[tuple[str, str]]:
    """Return (first, second) names of the SparseLinear pairs that can be chained."""
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, SparseLinear) and m.block == (1, 1) and m.chained is None}
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    linears = {name: m for name, m in linears.items() if counts[id(m)] == 1}
    if len(linears) < 2:
        return []
    made: dict[int, tuple[str, Tensor]] = {}  # outputs kept alive, so no id is reused
    fed: dict[str, list[str]] = defaultdict(list)
    watch = _OutputUses(made)
    calls: Counter[str] = Counter()

    def before(name: str):  # noqa: ANN202
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] += 1
            if args and isinstance(args[0], Tensor) and id(args[0]) in made:
                fed[made[id(args[0])][0]].append(name)
            # Anything else a layer takes (a residual, fusion.fuse_residual_norm) is a use
            # outside the pair.
            for leaf in tree_leaves((args[1:], kwargs)):
                if isinstance(leaf, Tensor) and id(leaf) in made:
                    watch.uses[made[id(leaf)][0]] += 1
            watch.depth += 1
        return hook

    def after(name: str):  # noqa: ANN202
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            watch.depth -= 1
            if isinstance(output, Tensor):
                made[id(output)] = (name, output)
        return hook

    handles = []
    for name, m in linears.items():
        handles.append(m.register_forward_pre_hook(before(name), with_kwargs=True))
        handles.append(m.register_forward_hook(after(name)))
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.no_grad(), watch:
            result = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    returned = {made[id(t)][0] for t in tree_leaves(result)
                if isinstance(t, Tensor) and id(t) in made}
    pairs = []
    for first, consumers in fed.items():
        second = consumers[0]
        if (len(consumers) == 1 and calls[first] == 1 and calls[second] == 1
                and first != second and watch.uses[first] == 0 and first not in returned
                and linears[second].in_features == linears[first].out_features):
            pairs.append((first, second))
    # A layer is in at most one pair: a second that is also a first stays unchained as a first.
    seconds = {s for _, s in pairs}
    return [(f, s) for f, s in pairs if f not in seconds]


def chain_linears(model: nn.Module, example_input: object) -> int:
    """Link each pair of sparse Linears (CSR) of ``model`` whose first feeds only the second,
    as seen on ``example_input`` (see the module's doc); return how many pairs. Without an
    example nothing is linked."""
    if example_input is None:
        return 0
    pairs = _pairs(model, example_input)
    for first_name, second_name in pairs:
        first, second = model.get_submodule(first_name), model.get_submodule(second_name)
        # A tuple, not a module attribute: neither becomes the other's child.
        first._chain = second._chain = (first, second)
    return len(pairs)


def unchain_linears(model: nn.Module) -> int:
    """Undo ``chain_linears``: every layer computes its own product again. Return how many
    pairs were unlinked."""
    undone = 0
    for m in model.modules():
        if isinstance(m, SparseLinear) and m.chained is not None:
            undone += m.chained[0] is m
            m._chain = None
    return undone
