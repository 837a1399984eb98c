"""Faster stand-ins for the dense operations between the sparse layers.

Once the products are sparse, what torch does around them can take a large share of the time.
``compile_sparse`` swaps in the replacements here; each computes exactly what it replaces.

* ``nn.MaxPool2d`` (without indices) pools a channels-last copy of its input and returns NCHW
  again: torch's NCHW max pooling is slow on the CPU. In a 90%-sparse ResNet-50 at batch 1 on
  one core (``benchmarks/end_to_end_profile.py --model resnet50``) the stem's pooling took
  6.1 ms, about a fifth of the whole compiled model; channels-last it takes 0.65 ms, plus two
  copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed on a channels-last copy of a 4-D input (same result)."""

    def forward(self, x: Tensor) -> Tensor:
        """Return the max pooling of ``x``, in ``x``'s memory format."""
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
