"""N:M structured sparsity: at most N nonzeros in every group of M consecutive input weights.

The groups run along the input dimension of a weight's (out, in) matrix view, the one sparse
tensor cores (Ampere's 2:4) and the one-shot papers (SparseGPT, Wanda) use: an nn.Linear weight
is its own matrix; a Conv2d weight (out, in, kh, kw) is the (out, in·kh·kw) matrix an im2col
convolution multiplies by, so a group spans M consecutive (input channel, kernel tap)
positions; a weight stored (in, out), as transformers' ``Conv1D`` keeps it, is read turned.

A layer's sparsity under N:M is fixed at 1 − N/M. A width that is not a multiple of M is
refused rather than padded: a partial last group would hold a different share of zeros, and
hardware that runs N:M needs whole groups anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["as_matrix", "check_nm", "check_nm_width", "from_matrix", "nm_mask", "nm_sparsity"]


def check_nm(nm: Sequence[int], what: str = "nm") -> tuple[int, int]:
    """Returns ``nm`` as a tuple ``(N, M)`` after checking 1 <= N <= M.

    Raises:
        ValueError: one sentence naming the value, when it is not two integers with
            1 <= N <= M.
    """
    valid = (isinstance(nm, (tuple, list)) and len(nm) == 2
             and all(isinstance(v, int) and not isinstance(v, bool) for v in nm))
    if not valid or not 1 <= nm[0] <= nm[1]:
        raise ValueError(f"{what} = {nm!r} is invalid: it must be two integers (N, M) with "
                         f"1 <= N <= M, N nonzeros in every group of M weights, e.g. (2, 4).")
    return int(nm[0]), int(nm[1])


def nm_sparsity(nm: Sequence[int]) -> float:
    """Returns the sparsity N:M fixes: 1 − N/M (0.5 for 2:4 and 4:8)."""
    n, m = check_nm(nm)
    return 1.0 - n / m


def check_nm_width(name: str, shape: Sequence[int], nm: Sequence[int],
                   transposed: bool = False) -> None:
    """Checks that the input width of the weight ``name`` is a whole number of groups.

    Raises:
        ValueError: naming the layer, its input width and M, when M does not divide it.
    """
    n, m = check_nm(nm)
    width = shape[0] if transposed else math.prod(shape[1:])
    if width % m:
        raise ValueError(f"Layer {name} has {width} inputs per output (shape {tuple(shape)}), "
                         f"not a multiple of M = {m}, so it cannot be {n}:{m} sparse; "
                         f"exclude it.")


def as_matrix(tensor: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """Returns the (out, in) matrix view of a weight-shaped tensor (a view where possible)."""
    return tensor.t() if transposed else tensor.reshape(tensor.shape[0], -1)


def from_matrix(matrix: torch.Tensor, shape: Sequence[int],
                transposed: bool = False) -> torch.Tensor:
    """Returns a (out, in) matrix laid out as the stored weight of ``shape`` again."""
    return matrix.t().reshape(shape) if transposed else matrix.reshape(shape)


def nm_mask(scores: torch.Tensor, nm: Sequence[int], pruned: int | None = None) -> torch.Tensor:
    """Returns the keep-mask (bool, shape of ``scores``) that keeps the N highest scores of
    every group of M consecutive columns of the (rows, cols) matrix ``scores``.

    ``pruned`` prunes that many per group instead of M − N (a gradual schedule on its way to
    N:M). Within a group the lowest scores go first, ties to the earlier position (a stable
    sort), as in ``PruningMethod``, so masks are deterministic.

    Raises:
        ValueError: when the width is not a multiple of M.
    """
    n, m = check_nm(nm)
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of M = {m}; N:M groups must be "
                         f"whole.")
    pruned = m - n if pruned is None else min(max(int(pruned), 0), m)
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :pruned], False)
    return keep.reshape(rows, cols)
