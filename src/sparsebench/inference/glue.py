"""Faster stand-ins for the dense operations between the sparse layers.

Once the products are sparse, what torch does around them can take a large share of the time.
``compile_sparse`` swaps in the replacements here; each computes what it replaces (the layer
norm within float rounding).

* ``nn.MaxPool2d`` (without indices): torch's NCHW max pooling is slow on the CPU. In a
  90%-sparse ResNet-50 at batch 1 on one core (``benchmarks/end_to_end_profile.py --model
  resnet50``) the stem's pooling took 6.1 ms, about a fifth of the whole compiled model.
  Square windows without dilation or ceil mode run the extension's NCHW kernel
  (``max_pool2d_nchw``: 0.41 ms at batch 1, 3.4 ms at batch 8, one thread); other settings,
  or no compiled kernels, pool a channels-last copy and return NCHW again (1.2 ms and 13 ms:
  the pooling is fast there, the two copies are not).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from sparsebench.inference import _extension


def _square(value: int | tuple[int, ...]) -> int | None:
    """Return the common value of a pooling argument given as an int or a pair, else None."""
    if isinstance(value, int):
        return value
    return value[0] if len(set(value)) == 1 else None


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed by the extension's NCHW kernel where it applies, else on a
    channels-last copy of a 4-D input (same result either way)."""

    def _nchw_kernel_args(self, x: Tensor) -> tuple[int, int, int] | None:
        k, s = _square(self.kernel_size), _square(self.stride)
        p, d = _square(self.padding), _square(self.dilation)
        if (x.dtype != torch.float32 or x.device.type != "cpu" or self.ceil_mode or d != 1
                or (x.requires_grad and torch.is_grad_enabled())
                or None in (k, s, p) or 2 * p > k or not x.is_contiguous()):
            return None
        if x.shape[2] + 2 * p < k or x.shape[3] + 2 * p < k:
            return None
        return k, s, p

    def forward(self, x: Tensor) -> Tensor:
        """Return the max pooling of ``x``, in ``x``'s memory format."""
        if x.dim() == 4 and (args := self._nchw_kernel_args(x)) is not None:
            ext = _extension.load_extension()
            if ext is not None and hasattr(ext, "max_pool2d_nchw"):
                return ext.max_pool2d_nchw(x, *args)
        if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        nhwc = x.contiguous(memory_format=torch.channels_last)
        y = F.max_pool2d(nhwc, self.kernel_size, self.stride, self.padding, self.dilation,
                         self.ceil_mode)
        return y.contiguous()

    @classmethod
    def from_module(cls, pool: nn.MaxPool2d) -> ChannelsLastMaxPool2d:
        """Return the replacement for ``pool``."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   ceil_mode=pool.ceil_mode)


#: Whether ``RowLayerNorm`` runs the extension's kernel (a switch for timing both side by side:
#: ``benchmarks/switch_ab.py --switch layer-norm``).
LAYER_NORM_KERNEL = True


class RowLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension computed by the extension's kernel
    (``csrc/layer_norm.h``: each row normalized while it sits in L1) for contiguous float32
    CPU inputs a multiple of 16 wide, without gradients; otherwise torch's."""

    @classmethod
    def from_module(cls, norm: nn.LayerNorm) -> RowLayerNorm:
        """The same normalization, sharing ``norm``'s parameters."""
        new = cls(norm.normalized_shape, norm.eps, norm.elementwise_affine,
                  bias=norm.bias is not None, device="meta")
        new.weight, new.bias = norm.weight, norm.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Return the layer norm of ``x``, as ``nn.LayerNorm`` does."""
        if (LAYER_NORM_KERNEL and len(self.normalized_shape) == 1 and x.dim() >= 1
                and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
                and x.shape[-1] % 16 == 0 and x.numel() > 0
                and not (torch.is_grad_enabled() and (x.requires_grad or any(
                    p.requires_grad for p in self.parameters())))
                and not torch.compiler.is_compiling()):
            ext = _extension.load_extension()
            if ext is not None and hasattr(ext, "layer_norm_rows"):
                return ext.layer_norm_rows(
                    x, None if self.weight is None else self.weight.detach(),
                    None if self.bias is None else self.bias.detach(), self.eps)
        return super().forward(x)


def replace_glue(model: nn.Module) -> int:
    """Swap in the faster stand-ins throughout ``model``, in place; return how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d and not child.return_indices:
                setattr(parent, name, ChannelsLastMaxPool2d.from_module(child))
                swapped += 1
            elif type(child) is nn.LayerNorm:
                setattr(parent, name, RowLayerNorm.from_module(child))
                swapped += 1
    return swapped


#: Queries from which :func:`attention` runs the extension's kernel. Each head's K is
#: transposed first, which a few queries do not repay: 12 heads of 64 against 128 keys at
#: batch 8, one thread, torch's SDPA over ours (medians of 40 interleaved calls, a script,
#: not kept): 0.88 with one query (a decoder's step), 0.99 with 4, 1.08 with 8, 1.13 with
#: 16; and 1.31, 1.35 and 1.66 for self-attention over 128, 100 and 77 tokens.
ATTENTION_MIN_QUERIES = 8


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Return ``softmax(q k^T * scale) v`` for ``q`` ``(batch, heads, queries, head)`` and
    ``k``, ``v`` ``(batch, heads, keys, head)``, no mask or dropout (``scale`` defaults to
    ``head ** -0.5``, as in ``F.scaled_dot_product_attention``).

    Float32 CPU inputs whose head size is a multiple of 16 run the extension's kernel
    (``csrc/attention.h``): one head per call of a register-tiled loop, six query rows at a
    time through scores, softmax and output, with the next head's rows prefetched; any
    number of keys (K^T padded to a multiple of 16), and ``ATTENTION_MIN_QUERIES`` queries or
    more. On BERT-base's heads at batch 8 (12 layers of 12 heads of 64 over 128 tokens,
    split from the projections' outputs as the model does) it took 63.7 ms against 82.0 for
    torch's SDPA, one thread, medians of 15 interleaved rounds (a script, not kept).
    Anything else goes to ``F.scaled_dot_product_attention``; ``compile_sparse`` routes a
    model's own calls here (``route_attention``).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    ext = _extension.load_extension()
    usable = (ext is not None and hasattr(ext, "attention_forward") and q.dim() == 4
              and k.dim() == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
              and q.shape[3] == k.shape[3] and q.shape[3] % 16 == 0
              and q.shape[2] >= ATTENTION_MIN_QUERIES and k.shape[2] > 0
              and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(3) == 1
                      and not (t.requires_grad and torch.is_grad_enabled()) for t in (q, k, v)))
    if not usable:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return ext.attention_forward(q, k, v, scale)


#: Whether the attention modules ``route_attention`` found run :func:`attention` (a switch for
#: timing both side by side: ``benchmarks/switch_ab.py --switch attention``).
ATTENTION_KERNEL = True


class _AttentionRouting(TorchFunctionMode):
    """While active, ``F.scaled_dot_product_attention`` calls without mask, dropout, causal
    masking or grouped heads go to :func:`attention`; every other call passes through."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0  # forwards of the calling module under way
        self.entered = False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) == 3 \
                and set(kwargs) <= {"attn_mask", "dropout_p", "is_causal", "scale"} \
                and kwargs.get("attn_mask") is None and not kwargs.get("dropout_p") \
                and not kwargs.get("is_causal"):
            return attention(*args, scale=kwargs.get("scale"))
        return func(*args, **kwargs)


def _attention_callers(model: nn.Module,
                       example_input: object) -> list[tuple[nn.Module, nn.Module | None]]:
    """Return the innermost modules that call ``F.scaled_dot_product_attention`` directly in
    one forward of ``example_input``, each with the last of its children that finished before
    the call (None if none did): the query/key/value projections, in a Transformer."""
    stack: list[nn.Module] = []
    last_done: dict[int, nn.Module] = {}
    found: dict[int, tuple[nn.Module, nn.Module | None]] = {}

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is F.scaled_dot_product_attention and stack:
                caller = stack[-1]
                found.setdefault(id(caller), (caller, last_done.get(id(caller))))
            return func(*args, **(kwargs or {}))

    def push(module: nn.Module, _args: tuple) -> None:
        stack.append(module)
        last_done.pop(id(module), None)

    def pop(_module: nn.Module, _args: tuple, _out: object) -> None:  # None: output unchanged
        done = stack.pop()
        if stack:
            last_done[id(stack[-1])] = done

    hooks = []
    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(push))
        hooks.append(module.register_forward_hook(pop, always_call=True))
    try:
        with torch.no_grad(), Record():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return list(found.values())


def _arm_routing(mode: _AttentionRouting, _module: nn.Module, _args: tuple) -> None:
    mode.armed += 1  # the caller's forward has begun


def _enter_routing(mode: _AttentionRouting, _module: nn.Module, *_: object) -> None:
    if mode.armed and not mode.entered and ATTENTION_KERNEL \
            and not torch.compiler.is_compiling():
        mode.__enter__()
        mode.entered = True


def _leave_routing(mode: _AttentionRouting, _module: nn.Module, _args: tuple,
                   _out: object) -> None:
    mode.armed -= 1
    if mode.entered:
        mode.entered = False
        mode.__exit__(None, None, None)


def route_attention(model: nn.Module, example_input: object) -> int:
    """Make the modules of ``model`` that call ``F.scaled_dot_product_attention`` (found in
    one forward of ``example_input``) run :func:`attention` for the calls it takes, in place;
    return how many modules. Only the end of their forward pays for the interception: a
    ``TorchFunctionMode`` entered when the last child module that ran before the call
    finishes (in a Transformer, the value projection) and left by the module's forward hook
    (also when the forward raises). Entered for the whole forward, every tensor operation of
    BERT's query/key/value products went through it in Python, and the forward gained 5 ms
    of the 20 the kernel saves. Traced under ``torch.compile``, the modules call torch as before;
    ``ATTENTION_KERNEL = False`` sends them back to torch too."""
    ext = _extension.load_extension()
    if example_input is None or ext is None or not hasattr(ext, "attention_forward"):
        return 0
    callers = _attention_callers(model, example_input)
    for module, child in callers:
        mode = _AttentionRouting()
        module.register_forward_pre_hook(functools.partial(_arm_routing, mode))
        if child is None:
            module.register_forward_pre_hook(functools.partial(_enter_routing, mode))
        else:
            child.register_forward_hook(functools.partial(_enter_routing, mode))
        module.register_forward_hook(functools.partial(_leave_routing, mode), always_call=True)
    return len(callers)
