"""Fold what follows a convolution into it: BatchNorm into the weights, ReLU into the kernel.

A module's forward is Python, so which layer feeds which is read from its graph: children of an
``nn.Sequential`` run in order; for any other module that has a convolution among its children,
``torch.fx`` traces its forward one level deep (every child a leaf). A convolution is fused with
what follows only when its output goes nowhere else: a chain conv -> (Identity ...) ->
BatchNorm2d / ReLU, each module called once in the whole model. Modules whose forward cannot be
traced are left as they are.

* ``fold_batchnorm``: an eval-mode ``BatchNorm2d`` after a dense ``nn.Conv2d`` becomes part of the
  convolution's weight and bias (each output channel scaled, so zeros stay zeros) and is
  replaced by ``nn.Identity``. It changes the weights, so call it on the model you compile and
  export, before ``compile_sparse``.
* ``fuse_relu``: a ``ReLU`` after a ``SparseConv2d`` is applied by the kernel as it writes the
  output (``SparseConv2d.relu``), and the ``ReLU`` becomes ``nn.Identity``. ``compile_sparse``
  does this itself. A model rebuilt around the saved layers that still has its ReLU applies it
  twice, which changes nothing.
* ``fuse_activations``: the same for a ``SparseLinear`` followed by ReLU or GELU (exact or
  tanh form; ``SparseLinear.activation``). Besides ``nn.ReLU`` and ``nn.GELU``, an activation
  module from another library (transformers' ``GELUActivation``, ``NewGELUActivation``) is
  recognised by what it computes: a module without parameters, buffers or children whose
  output on a probe (2,001 points in [-10, 10] and a few up to 1e6 either way; the module is
  run on it, hooks included) equals one of the three within 1e-6.
* ``fuse_residual_relu``: a ResNet block's ``relu(conv(x) + shortcut)``, where the sum is
  written in a module's own forward, becomes one call of the sparse convolution with the
  shortcut as its residual (``SparseConv2d.forward(x, residual, relu=True)``). That module's
  forward is traced to the layers (``torch.fx``), rewritten, and bound to the module itself,
  so its children, state and saved form do not change; a file saved from it loads with the
  original forward, which computes the same. Only modules whose forward takes tensors alone
  (no defaulted arguments whose values a trace would freeze) are rewritten, and only where no
  in-place operation lies between the convolution and the sum. The rewritten forward calls
  the layers directly: hooks on the custom modules it traced through no longer fire.
* ``fuse_residual_norm``: a post-norm Transformer's ``norm(dropout(linear(x)) + r)`` (BERT's
  attention output and second feed-forward product), where the sum is written in a module's
  own forward and the dropout is in eval mode (it is then the identity, and the rewritten
  forward leaves it out for good: the compiled model is for inference), becomes one call
  ``linear(x, residual=r)`` of a ``SparseLinear`` that carries the ``nn.LayerNorm``
  (``SparseLinear.fused_norm``; the norm stays the module's child and keeps its state).
  The product then normalizes each panel of rows as it writes it. Rewritten as for
  ``fuse_residual_relu``, with the same conditions.
"""

from __future__ import annotations

import inspect
import operator
import types
from collections import Counter
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import SparseLinear

_CONVS = (nn.Conv2d, SparseConv2d)
_PRODUCERS = (nn.Conv2d, SparseConv2d, SparseLinear)  # layers a chain can start at


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own forward: each child is a single call, not traced into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _child_chains(parent: nn.Module) -> Iterator[list[str]]:
    """Yield chains of child names [conv, next, ...] in which each module's output feeds only
    the next one. Each chain ends at the first module that is not an Identity."""
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        names = list(children)
        for i, name in enumerate(names):
            if isinstance(children[name], _PRODUCERS):
                chain = [name]
                for follower in names[i + 1 :]:
                    chain.append(follower)
                    if not isinstance(children[follower], nn.Identity):
                        break
                if len(chain) > 1:
                    yield chain
        return
    if not any(isinstance(c, _PRODUCERS) for c in children.values()):
        return
    try:
        graph = _ChildrenAsLeaves().trace(parent)
    except Exception:  # noqa: BLE001 - any untraceable forward just stays unfused
        return
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(children.get(node.target), _PRODUCERS):
            continue
        chain, current = [node.target], node
        while True:
            users = list(current.users)
            if len(users) != 1 or users[0].op != "call_module" or users[0].args != (current,):
                break
            current = users[0]
            if "." in current.target or calls[current.target] != 1:
                break
            chain.append(current.target)
            if not isinstance(children[current.target], nn.Identity):
                break
        if len(chain) > 1 and calls[node.target] == 1:
            yield chain


def _once_in_model(model: nn.Module) -> set[int]:
    """Return the ids of modules that appear once in ``model`` (not shared between parents)."""
    seen = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return {k for k, n in seen.items() if n == 1}


def _fusions(model: nn.Module, producer_type: type, follows):  # noqa: ANN001, ANN202
    """Yield (parent, producer name, follower name) for each producer -> (Identity...) ->
    follower, where ``follows(follower)`` is true."""
    single = _once_in_model(model)
    for parent in list(model.modules()):
        for chain in list(_child_chains(parent)):
            first, last = parent.get_submodule(chain[0]), parent.get_submodule(chain[-1])
            if (
                isinstance(first, producer_type)
                and id(first) in single
                and id(last) in single
                and follows(last)
            ):
                yield parent, chain[0], chain[-1]


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d)


def _is_relu(module: nn.Module) -> bool:
    return isinstance(module, nn.ReLU)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d that directly follows an ``nn.Conv2d`` into it, in
    place; return how many were folded. BatchNorms in training mode are left alone."""
    folded = 0
    for parent, conv_name, bn_name in list(_fusions(model, nn.Conv2d, _is_batchnorm)):
        conv, bn = parent.get_submodule(conv_name), parent.get_submodule(bn_name)
        if bn.training or bn.running_mean is None or type(conv) is not nn.Conv2d:
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn)
        setattr(parent, conv_name, fused)
        setattr(parent, bn_name, nn.Identity())
        folded += 1
    return folded


def fuse_relu(model: nn.Module) -> int:
    """Let each ``SparseConv2d`` followed only by a ``ReLU`` apply it; return how many."""
    fused = 0
    for parent, conv_name, relu_name in list(_fusions(model, SparseConv2d, _is_relu)):
        parent.get_submodule(conv_name).relu = True
        setattr(parent, relu_name, nn.Identity())
        fused += 1
    return fused


_REFERENCES = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation_of(module: nn.Module) -> str | None:
    """Return the name (in ``SparseLinear.ACTIVATIONS``) of the activation ``module`` computes,
    or None. torch's own modules are read from their type and settings; any other module
    without parameters, buffers or children is run on a probe and compared with each
    activation, so that a library's own GELU class is recognised by its values, not its
    name."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if type(module).__module__.startswith("torch.") or any(
        True for _ in module.parameters()) or any(True for _ in module.buffers()) or any(
            True for _ in module.children()):
        return None
    # Wide values too: transformers' ClippedGELUActivation equals GELU inside [-10, 10].
    wide = torch.tensor([0.0, -0.0, 1e-30, 20.0, -20.0, 1e3, -1e3, 1e6, -1e6])
    probe = torch.cat([torch.linspace(-10.0, 10.0, 2001), wide])
    try:
        with torch.no_grad():
            got = module(probe.clone())
    except Exception:  # noqa: BLE001 - a module that cannot take a 1-D tensor is not one
        return None
    if not isinstance(got, torch.Tensor) or got.shape != probe.shape:
        return None
    for name, reference in _REFERENCES.items():
        if torch.allclose(got, reference(probe), rtol=0.0, atol=1e-6):
            return name
    return None


def fuse_activations(model: nn.Module) -> int:
    """Let each ``SparseLinear`` followed only by a ReLU or GELU (see ``activation_of``) apply
    it as its kernel writes the output; the activation module becomes ``nn.Identity``.
    Return how many were fused."""
    fused = 0
    found: dict[int, str | None] = {}  # each module probed once

    def known(module: nn.Module) -> str | None:
        if id(module) not in found:
            found[id(module)] = activation_of(module)
        return found[id(module)]

    for parent, linear_name, act_name in list(_fusions(model, SparseLinear, known)):
        linear = parent.get_submodule(linear_name)
        if linear.activation != "none":
            continue
        linear.activation = known(parent.get_submodule(act_name))
        setattr(parent, act_name, nn.Identity())
        fused += 1
    return fused


class _ToLayers(fx.Tracer):
    """Traces through every module but torch's own layers (and subclasses of its layer norm,
    such as ``glue.RowLayerNorm``) and the sparse ones."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (SparseConv2d, SparseLinear, nn.LayerNorm)) or super(
            ).is_leaf_module(m, module_qualified_name)


_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu, torch.relu}


def _is_add_node(node: fx.Node) -> bool:
    if node.kwargs or len(node.args) != 2:
        return False
    return (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def _is_relu_node(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function" and node.target in _RELUS:
        return len(node.args) == 1 and not node.kwargs.get("inplace", False)
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _conv_before(node: object, root: nn.Module, calls: Counter) -> tuple[fx.Node, list] | None:
    """If ``node`` is a sparse CSR convolution's output (through Identity modules), each value
    used once, return (the convolution's call, the Identity calls after it)."""
    chain = []
    while isinstance(node, fx.Node) and len(node.users) == 1 and node.op == "call_module":
        module = root.get_submodule(node.target)
        if isinstance(module, nn.Identity):
            chain.append(node)
            node = node.args[0] if node.args else None
            continue
        ok = (isinstance(module, SparseConv2d) and module.block == (1, 1) and not module.relu
              and calls[node.target] == 1 and len(node.args) == 1 and not node.kwargs)
        return (node, chain) if ok else None
    return None


_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                       operator.setitem}


def _mutates(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` may change a tensor in place (conservatively: any in-place form)."""
    if node.kwargs.get("inplace", False) or node.kwargs.get("out") is not None:
        return True
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        return node.target in _IN_PLACE_FUNCTIONS or getattr(
            node.target, "__name__", "").endswith("_")
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(node.target), "inplace", False))
    return False


def _movable(conv: fx.Node, add: fx.Node, root: nn.Module) -> bool:
    """Whether the convolution's call can move to just before ``add``: nothing in between may
    change a tensor in place (its input could be one of them)."""
    node = conv.next
    while node is not add:
        if _mutates(node, root):
            return False
        node = node.next
    return True


def _fuse_in_graph(graph: fx.Graph, root: nn.Module, single: set[int]) -> int:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    fused = 0
    for add in list(graph.nodes):
        if not _is_add_node(add) or len(add.users) != 1:
            continue
        relu = next(iter(add.users))
        if not _is_relu_node(relu, root):
            continue
        for side in (0, 1):
            found = _conv_before(add.args[side], root, calls)
            residual = add.args[1 - side]
            if found is None or not isinstance(residual, fx.Node):
                continue
            conv, chain = found
            if (id(root.get_submodule(conv.target)) not in single
                    or residual is conv or residual in chain
                    or not _movable(conv, add, root)):
                continue
            with graph.inserting_before(add):
                call = graph.call_module(conv.target, conv.args,
                                         {"residual": residual, "relu": True})
            relu.replace_all_uses_with(call)
            for dead in [relu, add, *chain, conv]:  # each after its users
                graph.erase_node(dead)
            fused += 1
            break
    return fused


def _linear_before(node: object, root: nn.Module, calls: Counter) -> tuple[fx.Node, list] | None:
    """If ``node`` is a sparse CSR Linear's output (through Identity modules and dropouts in
    eval mode), each value used once, return (the Linear's call, the calls after it)."""
    chain = []
    while isinstance(node, fx.Node) and len(node.users) == 1 and node.op == "call_module":
        module = root.get_submodule(node.target)
        if isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout)
                                               and not module.training):
            chain.append(node)
            node = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            continue
        ok = (isinstance(module, SparseLinear) and module.block == (1, 1)
              and module.fused_norm is None and calls[node.target] == 1
              and len(node.args) == 1 and not node.kwargs)
        return (node, chain) if ok else None
    return None


def _fuse_norm_in_graph(graph: fx.Graph, root: nn.Module, single: set[int]) -> int:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    fused = 0
    for norm_node in list(graph.nodes):
        if (norm_node.op != "call_module" or len(norm_node.args) != 1 or norm_node.kwargs
                or calls[norm_node.target] != 1):
            continue
        norm = root.get_submodule(norm_node.target)
        add = norm_node.args[0]
        if (not isinstance(norm, nn.LayerNorm) or id(norm) not in single
                or not isinstance(add, fx.Node) or not _is_add_node(add)
                or len(add.users) != 1):
            continue
        for side in (0, 1):
            found = _linear_before(add.args[side], root, calls)
            residual = add.args[1 - side]
            if found is None or not isinstance(residual, fx.Node):
                continue
            linear_node, chain = found
            linear = root.get_submodule(linear_node.target)
            if (id(linear) not in single or tuple(norm.normalized_shape) != (
                    linear.out_features,) or residual is linear_node or residual in chain
                    or not _movable(linear_node, add, root)):
                continue
            with graph.inserting_before(add):
                call = graph.call_module(linear_node.target, linear_node.args,
                                         {"residual": residual})
            norm_node.replace_all_uses_with(call)
            for dead in [norm_node, add, *chain, linear_node]:  # each after its users
                graph.erase_node(dead)
            linear.fuse_norm(norm)
            fused += 1
            break
    return fused


def fuse_residual_norm(model: nn.Module) -> int:
    """Rewrite each module whose forward computes ``layer_norm(sparse_linear(x) + r)`` (see
    the module docstring) to make that one call of the Linear with ``residual=r``; deepest
    modules first. Return how many were fused."""
    return _rewrite_forwards(
        model,
        lambda m: any(isinstance(c, SparseLinear) for c in m.modules())
        and any(isinstance(c, nn.LayerNorm) for c in m.modules()),
        _fuse_norm_in_graph)


def _takes_tensors_only(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is inspect.Parameter.empty and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def fuse_residual_relu(model: nn.Module) -> int:
    """Rewrite each module whose forward computes ``relu(sparse_conv(x) + r)`` to make that
    one call of the convolution with ``residual=r`` (see the module docstring); deepest
    modules first. Return how many sums were fused."""
    return _rewrite_forwards(
        model, lambda m: any(isinstance(c, SparseConv2d) for c in m.modules()), _fuse_in_graph)


def _rewrite_forwards(model: nn.Module, candidate, fuse_in_graph) -> int:  # noqa: ANN001
    """Trace each module of ``model`` that ``candidate`` accepts (deepest first; not torch's
    own, the sparse layers or containers, nor one rewritten already), rewrite its graph with
    ``fuse_in_graph(graph, module, single)`` and bind the result as the module's forward
    where it fused anything. Return how many fusions in all."""
    single = _once_in_model(model)
    fused = 0
    named = sorted(model.named_modules(), key=lambda kv: -kv[0].count("."))
    for _, module in named:
        if (isinstance(module, (SparseConv2d, SparseLinear, nn.Sequential, nn.ModuleList))
                or "forward" in vars(module)  # rewritten already (fx traces the class's)
                or type(module).__module__.startswith("torch.")
                or not candidate(module)
                or not _takes_tensors_only(module)):
            continue
        try:
            graph = _ToLayers().trace(module)
        except Exception:  # noqa: BLE001 - an untraceable forward stays as it is
            continue
        count = fuse_in_graph(graph, module, single)
        if count == 0:
            continue
        graph.lint()
        code = fx.GraphModule(module, graph)
        # The generated forward reaches layers by their paths, which are the module's own:
        # bound to the module, it runs on its children as they are.
        module.forward = types.MethodType(type(code).forward, module)
        fused += count
    return fused
