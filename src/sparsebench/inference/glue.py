"""Faster stand-ins for the dense operations between the sparse layers.

Once the products are sparse, what torch does around them can take a large share of the time.
``compile_sparse`` swaps in the replacements here; each computes exactly what it replaces.

* ``nn.MaxPool2d`` (without indices): torch's NCHW max pooling is slow on the CPU. In a
  90%-sparse ResNet-50 at batch 1 on one core (``benchmarks/end_to_end_profile.py --model
  resnet50``) the stem's pooling took 6.1 ms, about a fifth of the whole compiled model.
  Square windows without dilation or ceil mode run the extension's NCHW kernel
  (``max_pool2d_nchw``: 0.41 ms at batch 1, 3.4 ms at batch 8, one thread); other settings,
  or no compiled kernels, pool a channels-last copy and return NCHW again (1.2 ms and 13 ms:
  the pooling is fast there, the two copies are not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def replace_glue(model: nn.Module) -> int:
    """Swap in the faster stand-ins throughout ``model``, in place; return how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d and not child.return_indices:
                setattr(parent, name, ChannelsLastMaxPool2d.from_module(child))
                swapped += 1
    return swapped


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Return ``softmax(q k^T * scale) v`` for ``(batch, heads, seq, head)`` tensors, no mask
    or dropout (``scale`` defaults to ``head ** -0.5``, as in
    ``F.scaled_dot_product_attention``).

    Float32 CPU inputs whose sequence length and head size are multiples of 16 run the
    extension's kernel (``csrc/attention.h``): one head per call of a register-tiled loop, its
    score rows put through the softmax where they lie. On a BERT-base layer at batch 8 (12
    heads of 64 over 128 tokens) it took 4.82 ms against 6.01 for torch's SDPA, one thread
    (a script, not kept). Anything else goes to ``F.scaled_dot_product_attention``. Compiled
    models do not call it yet: routing a model's own attention here is the next step.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    ext = _extension.load_extension()
    usable = (ext is not None and hasattr(ext, "attention_forward") and q.dim() == 4
              and q.shape == k.shape == v.shape and q.shape[2] % 16 == 0
              and q.shape[3] % 16 == 0
              and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(3) == 1
                      and not (t.requires_grad and torch.is_grad_enabled()) for t in (q, k, v)))
    if not usable:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return ext.attention_forward(q, k, v, scale)

