"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", arXiv:2301.00774): layer-wise reconstruction by Optimal Brain Surgeon
updates, following the paper's Algorithm 1.

For a layer with (out, in) weight W and calibration inputs X (N rows), the Hessian of the
reconstruction error is H = 2XᵀX/N, dampened by λ = percdamp · mean(diag H) (§4, "1% of the
average diagonal"). The columns are pruned left to right; once column j is done it is frozen, so
the later columns see the inverse Hessian of the remaining columns only, and the rows of the upper
Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) give every one of those inverses at once (§3.3):

    pruning w = W[:, j] to q (0 where pruned) costs Σ (w − q)² / U_jj², and
    W[:, j:] −= ((w − q) / U_jj) ⊗ U[j, j:]          (the OBS update of the columns not frozen)

Lazy batch updates (§3.4): inside a block of ``block_size`` columns the updates are applied
column by column; the columns after the block get them all at once, as one matrix product. The
mask is chosen adaptively (§3.5), every ``mask_block_size`` columns, from the weights as updated
so far, by the OBS error w² / U_jj²: the lowest ``s`` share of the block is pruned (the whole
block of rows × columns, as the reference implementation does). Under N:M the mask of each group
of M columns is chosen when the group begins: the M − N lowest per row.

``block_size`` changes only the speed: the mask block's columns are brought up to date before
its mask is chosen, so any ``block_size`` gives the unblocked result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nm import nm_mask
from ..schedules import exact_zero_count
from .base import MethodConfig
from .calibration import Hessian
from .one_shot import OneShotPruner, prune_lowest

__all__ = ["SparseGPT", "SparseGPTConfig", "sparsegpt_prune"]

#: The paper's damping: 1% of the mean diagonal of H.
PERCDAMP = 0.01
#: The reference implementation's block of columns, for both lazy updates and mask selection.
BLOCK_SIZE = 128


@dataclass(frozen=True)
class SparseGPTConfig(MethodConfig):
    """Attributes:
    damping: λ as a fraction of mean(diag H) added to H's diagonal (percdamp), > 0.
    block_size: columns per lazy batch update (B): a speed knob, the result does not change.
    mask_block_size: columns per adaptive mask choice (B_s); ignored under N:M (M is used).
    """

    damping: float = PERCDAMP
    block_size: int = BLOCK_SIZE
    mask_block_size: int = BLOCK_SIZE

    def __post_init__(self) -> None:
        self._require(isinstance(self.damping, (int, float)) and self.damping > 0, "damping",
                      "a number > 0 (a fraction of the Hessian's mean diagonal, e.g. 0.01)")
        for name in ("block_size", "mask_block_size"):
            value = getattr(self, name)
            self._require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                          name, "an integer >= 1")


def _inverse_cholesky(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (U, dead): the upper Cholesky factor of (H + λI)⁻¹, and the inputs that never
    carried a nonzero value (diag H = 0), whose diagonal is set to 1 so H can be inverted."""
    hessian = hessian.clone()
    diag = torch.diagonal(hessian)
    dead = diag == 0
    diag[dead] = 1
    diag += damping * diag.mean()
    lower, info = torch.linalg.cholesky_ex(hessian)
    if info == 0:
        lower, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if info != 0:
        raise ValueError(f"the Hessian is not positive definite with damping={damping}; "
                         f"raise damping")
    return lower, dead


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    nm: tuple[int, int] | None = None, *, damping: float = PERCDAMP,
                    block_size: int = BLOCK_SIZE, mask_block_size: int = BLOCK_SIZE,
                    keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (pruned weight, keep-mask) for the (out, in) ``weight`` and (in, in) ``hessian``.

    ``keep`` fixes the mask instead of choosing it (OBS reconstruction for a given mask). The
    layer prunes exactly ``round(s·out·in)`` weights, shared among the mask blocks. Weights of
    dead inputs are scored 0, so they are pruned first and cost nothing; unlike the reference,
    those beyond the target keep their (harmless) values, so the achieved sparsity is the target.

    Raises:
        ValueError: when H + λI is not positive definite (raise ``damping``).
    """
    W = weight.clone()
    rows, cols = W.shape
    U, dead = _inverse_cholesky(hessian.to(W.dtype), damping)
    d = torch.diagonal(U)
    pruned = torch.zeros_like(W, dtype=torch.bool) if keep is None else ~keep.to(torch.bool)
    group = nm[1] if nm is not None else mask_block_size
    # Block b prunes round(s·rows·end_b) − round(s·rows·start_b): the layer's count exactly.
    zeros = [exact_zero_count(sparsity, rows * min(j + group, cols))
             - exact_zero_count(sparsity, rows * j) for j in range(0, cols, group)]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i
            if keep is None and j % group == 0:
                end = min(j + group, cols)
                current = W1[:, i:end - i1]
                if end > i2:  # bring the mask block's later columns up to date
                    later = W[:, i2:end] - Err1[:, :i] @ U[i1:j, i2:end]
                    current = torch.cat([current, later], dim=1)
                scores = (current / d[j:end]) ** 2
                scores[:, dead[j:end]] = 0
                if nm is not None:
                    block_keep = nm_mask(scores, nm)
                else:
                    block_keep = prune_lowest(scores.reshape(1, -1), zeros[j // group])
                pruned[:, j:end] = ~block_keep.view(rows, end - j)
            w = W1[:, i]
            q = w.masked_fill(pruned[:, j], 0)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = q  # exact zeros, not w − err·U_jj
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W, ~pruned


class SparseGPT(OneShotPruner):
    """SparseGPT one-shot pruning with OBS weight reconstruction."""

    name = "sparsegpt"
    config_class = SparseGPTConfig
    statistic = Hessian

    def prune(self, weight, statistic, sparsity, nm):
        c = self.config
        return sparsegpt_prune(weight, statistic, sparsity, nm, damping=c.damping,
                               block_size=c.block_size, mask_block_size=c.mask_block_size)
