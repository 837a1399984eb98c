"""Block structure: weights seen as matrices cut into ``bh × bw`` blocks.

A Linear weight is its own (out, in) matrix; a Conv2d weight (out, in, kh, kw) is read as the
(out, in·kh·kw) matrix a direct or im2col convolution multiplies by, so a block spans ``bh``
output channels and ``bw`` consecutive (input channel, kernel tap) positions. When a side is not
a multiple of the block, the last row or column of blocks is partial ("edge blocks"): they are
ranked like the others by their existing weights and count as one block each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["BLOCK_SCORES", "block_grid", "block_keep", "block_scores", "check_block",
           "expand_blocks"]

BLOCK_SCORES = ("l2", "mean_abs")


def block_grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int, int, int]:
    """Returns (rows, cols, block rows, block cols) of a weight's matrix view."""
    rows, cols = shape[0], math.prod(shape[1:])
    return rows, cols, math.ceil(rows / block[0]), math.ceil(cols / block[1])


def check_block(name: str, shape: tuple[int, ...], block: tuple[int, int]) -> None:
    """Checks that ``block`` fits the weight ``name`` of ``shape`` at least on one side.

    A block taller *and* wider than the weight's whole matrix makes the layer a single block,
    kept or pruned whole: at any target of 50% or more the layer loses every weight (the image
    study's 32x32 blocks emptied 19 of its 54 layers so), which is never what block structure
    is meant to do.

    Raises:
        ValueError: naming the layer, its shape and the block, when it does not fit.
    """
    rows, cols, _, _ = block_grid(shape, block)
    if block[0] > rows and block[1] > cols:
        raise ValueError(
            f"block {tuple(block)} is larger than the whole {rows}x{cols} matrix of layer "
            f"{name} (shape {tuple(shape)}), which would be kept or pruned as one block; "
            f"choose a block at most {rows}x{cols} on one side, or exclude the layer.")


def _blocked(matrix: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Returns the zero-padded matrix as (block rows, bh, block cols, bw)."""
    rows, cols = matrix.shape
    bh, bw = block
    padded = F.pad(matrix, (0, -cols % bw, 0, -rows % bh))
    return padded.view(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw)


def block_scores(scores: torch.Tensor, block: tuple[int, int], reduce: str = "l2") -> torch.Tensor:
    """Returns one score per block from per-weight scores (e.g. |w|): the L2 norm of the block,
    or its mean, over the weights the block really holds."""
    matrix = scores.reshape(scores.shape[0], -1).float()
    if reduce == "l2":
        return _blocked(matrix * matrix, block).sum(dim=(1, 3)).sqrt()
    counts = _blocked(torch.ones_like(matrix), block).sum(dim=(1, 3))
    return _blocked(matrix, block).sum(dim=(1, 3)) / counts


def expand_blocks(block_mask: torch.Tensor, shape: tuple[int, ...],
                  block: tuple[int, int]) -> torch.Tensor:
    """Returns the per-weight mask of ``shape`` that a (block rows, block cols) mask means."""
    rows, cols, _, _ = block_grid(shape, block)
    full = block_mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return full[:rows, :cols].reshape(shape)


def block_keep(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Returns, per block, whether any of its weights is kept."""
    matrix = mask.reshape(mask.shape[0], -1).float()
    return _blocked(matrix, block).sum(dim=(1, 3)) > 0
