"""Initialization for retraining a sparse architecture from scratch.

The study's "augmented" initialization (Gale et al. 2019, section 5) scales each unit's
initial weights for the inputs it actually keeps: a unit with k of its n inputs left draws its
weights with variance multiplied by n / k, so its pre-activation variance matches a dense unit's
(the argument behind He / Glorot initialization, with the sparse fan-in in place of the dense).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["rescale_for_sparse_fan_in"]


@torch.no_grad()
def rescale_for_sparse_fan_in(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict:
    """Multiplies each masked weight's rows by sqrt(n / k), where n is a row's dense fan-in
    (in_features, or in_channels/groups × kh × kw) and k its kept inputs; rows with nothing
    kept are left alone. Returns the per-weight scale tensors (one per output unit).

    Raises:
        ValueError: when a mask names no parameter of ``model`` or its shape differs.
    """
    params = dict(model.named_parameters())
    scales = {}
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"Mask {name!r} names no parameter of the model.")
        weight = params[name]
        if weight.shape != mask.shape:
            raise ValueError(f"Mask {name!r} has shape {tuple(mask.shape)}, the weight "
                             f"{tuple(weight.shape)}.")
        # Masks load on the CPU; the model may already sit on a GPU.
        rows = mask.to(weight.device).reshape(mask.shape[0], -1)
        kept = rows.sum(dim=1).to(weight.dtype)
        scale = torch.where(kept > 0, (rows.shape[1] / kept.clamp(min=1)).sqrt(),
                            torch.ones_like(kept))
        weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
        scales[name] = scale
    return scales
