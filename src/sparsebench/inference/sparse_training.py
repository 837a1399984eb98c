"""Training with a fixed sparsity pattern: a Linear with a sparse forward and backward (issue 27).

``SparseTrainableLinear`` holds only the kept weights, as one ``nn.Parameter`` of shape
``(nnz,)`` in CSR order (row-major over the ``(out, in)`` weight), so the optimizer's state and
updates are per nonzero too. ``SparseLinearFunction`` computes ``y = x @ W.T + b`` and its three
gradients without a dense weight:

- forward ``Y = X·Wᵀ``: the CSR kernel ``SparseLinear`` runs at inference (``csr_linear`` of the
  compiled extension; torch's CSR product when the extension is unavailable);
- input gradient ``dX = dY·W``: the extension's ``csr_matmul_scatter`` for float32, which
  reads W's own rows (each nonzero scatters into its input's accumulators, 16 batch rows at a
  time); torch's path runs the CSR of ``Wᵀ``, whose indices are built on first use
  (:class:`CsrPattern`) with a permutation ``perm`` such that the values of ``Wᵀ`` are
  ``values[perm]``;
- weight gradient at the kept positions only, ``dW_k = Σ_b dY[b, row_k]·X[b, col_k]`` (a
  sampled dense-dense product, SDDMM): the extension's ``csr_sddmm`` for float32 (``X``
  transposed once, ``dY``'s columns 16 rows at a time, one contiguous dot product of length
  ``batch`` per nonzero, parallel over rows), else ``torch.sparse.sampled_addmm``. Extra
  memory: the output (``nnz`` values) and a transpose of ``X`` (torch's: of ``dY`` too), no
  ``(out, in)`` or ``(batch, nnz)`` intermediate, whatever the batch;
- bias gradient ``dY.sum(0)``.

float32 CPU tensors use the compiled kernels when available; float64 CPU tensors (for
``gradcheck``) always take torch's CSR path. Other dtypes and devices are refused.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sparsebench.inference import _extension
from sparsebench.inference import sparse_linear as _sl
from sparsebench.inference.sparse_linear import index_dtype_for, sparse_mm_torch

#: The dtypes the sparse training path computes in (float64 on torch's CSR kernels only).
DTYPES = (torch.float32, torch.float64)


class CsrPattern:
    """The index arrays of a fixed ``(out, in)`` sparsity pattern and of its transpose.

    Built once per mask; a mask update builds a new one. All tensors live on the CPU.

    Attributes:
        crow, col: CSR of ``W`` (int32 row pointers; int16/int32 column indices for the
            extension, and ``col32`` in int32 for torch's kernels).
        rows: the row of each nonzero (int64, ``(nnz,)``), for densifying.
        flat: the position of each nonzero in the flattened ``(out, in)`` weight (int64).
        crow_t, col_t, col_t32: CSR of ``Wᵀ`` (``(in, out)``), the same dtypes, built on
            first use (torch's path; the compiled one reads W's rows).
        perm: int64 ``(nnz,)`` with ``values_of_Wᵀ = values[perm]``, likewise.
    """

    def __init__(self, mask: Tensor) -> None:
        """Build the pattern of a boolean ``(out, in)`` mask (True: kept).

        Raises:
            ValueError: when ``mask`` is not a 2-D boolean tensor or too large for int32.
        """
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a 2-D bool tensor (out, in); got {mask.dtype} "
                             f"of shape {tuple(mask.shape)}")
        mask = mask.detach().cpu()
        out_f, in_f = mask.shape
        if out_f * in_f >= 2**31:
            raise ValueError(f"mask of shape {tuple(mask.shape)} is too large for int32 CSR")
        self.shape = (out_f, in_f)
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: columns sorted within a row
        self.rows = rows
        self.cols = cols
        # Flat positions in the row-major weight: gathers and scatters by index run several
        # times faster than by boolean mask (measured on a 4096 x 4096 layer at 90%).
        self.flat = rows * in_f + cols
        self.crow = _pointers(rows, out_f)
        self.col32 = cols.to(torch.int32)
        self.col = cols.to(index_dtype_for(in_f))
        self._transposed: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._zeros: dict[torch.dtype, Tensor] = {}

    def _transpose(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # Wᵀ in CSR: nonzeros ordered by column, then row. A stable sort of the column keeps the
        # row order within a column, which is the row-major order of Wᵀ. Built on first use:
        # the compiled kernels read W's own rows for the input gradient and never need it.
        if self._transposed is None:
            out_f, in_f = self.shape
            perm = torch.sort(self.cols, stable=True).indices
            rows_t = self.rows[perm]
            self._transposed = (perm, _pointers(self.cols[perm], in_f),
                                rows_t.to(index_dtype_for(out_f)), rows_t.to(torch.int32))
        return self._transposed

    @property
    def perm(self) -> Tensor:
        """Return the int64 permutation with ``values_of_Wᵀ = values[perm]``."""
        return self._transpose()[0]

    @property
    def crow_t(self) -> Tensor:
        """Return the int32 row pointers of ``Wᵀ``."""
        return self._transpose()[1]

    @property
    def col_t(self) -> Tensor:
        """Return the column indices of ``Wᵀ`` (int16/int32, for the extension)."""
        return self._transpose()[2]

    @property
    def col_t32(self) -> Tensor:
        """Return the column indices of ``Wᵀ`` in int32 (torch's kernels)."""
        return self._transpose()[3]

    @property
    def nnz(self) -> int:
        """Return the number of kept positions."""
        return int(self.rows.numel())

    def torch_csr(self, values: Tensor, transposed: bool = False) -> Tensor:
        """Return ``W`` (or ``Wᵀ`` with ``values`` already permuted) as torch's CSR tensor."""
        out_f, in_f = self.shape
        crow, col, shape = ((self.crow_t, self.col_t32, (in_f, out_f)) if transposed
                            else (self.crow, self.col32, (out_f, in_f)))
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, not news
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)

    def sddmm(self, grad_out: Tensor, x: Tensor) -> Tensor:
        """Return ``(grad_out.T @ x)`` at the kept positions, as ``(nnz,)`` in CSR order.

        ``grad_out``: ``(batch, out)``; ``x``: ``(batch, in)``, same dtype. Extra memory: the
        output and the two transposed operands, never an ``(out, in)`` matrix.
        """
        dtype = grad_out.dtype
        if self.nnz == 0 or grad_out.shape[0] == 0:
            return grad_out.new_zeros(self.nnz)
        ext = _extension.load_extension() if dtype == torch.float32 else None
        if ext is not None and grad_out.device.type == "cpu":
            return ext.csr_sddmm(grad_out.contiguous(), x.contiguous(), self.crow, self.col,
                                 _sl._options["threading"])
        if dtype not in self._zeros:  # sampled_addmm reads the pattern's values (times beta=0)
            self._zeros[dtype] = torch.zeros(self.nnz, dtype=dtype)
        pattern = self.torch_csr(self._zeros[dtype])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = torch.sparse.sampled_addmm(pattern, grad_out.t(), x, beta=0.0, alpha=1.0)
        return out.values()


def _pointers(sorted_rows: Tensor, n: int) -> Tensor:
    """Return int32 CSR pointers ``(n + 1,)`` of nonzeros whose row indices are sorted."""
    crow = torch.zeros(n + 1, dtype=torch.int32)
    crow[1:] = torch.bincount(sorted_rows, minlength=n).cumsum(0).to(torch.int32)
    return crow


def _csr_product(x2: Tensor, crow: Tensor, col: Tensor, col32: Tensor, values: Tensor,
                 bias: Tensor | None, in_f: int, out_f: int) -> Tensor:
    """Return ``x2 @ M.T (+ bias)`` for a CSR ``M`` of shape ``(out_f, in_f)``: the extension's
    ``csr_linear`` for float32 when it is available, else torch's CSR product."""
    ext = _extension.load_extension() if x2.dtype == torch.float32 else None
    if x2.shape[0] == 0 or out_f == 0 or in_f == 0 or values.numel() == 0:
        y = x2.new_zeros(x2.shape[0], out_f)
        return y + bias if bias is not None else y
    if ext is not None:
        return ext.csr_linear(x2.contiguous(), crow, col, values.contiguous(), bias, in_f,
                              _sl._options["spmv"], _sl._options["threading"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(crow, col32, values, (out_f, in_f), check_invariants=False)
    return sparse_mm_torch(w, x2, bias)


def _input_gradient(grad_out: Tensor, values: Tensor, pattern: CsrPattern) -> Tensor:
    """Return ``grad_out @ W`` (``(batch, in)``): float32 through the extension's scatter
    from W's own rows (2.5x the transposed layout's product for a 4,096-token gradient of an
    8,000 x 128 projection, and no permuted copy of the values), else torch's CSR product of
    ``Wᵀ``."""
    out_f, in_f = pattern.shape
    ext = _extension.load_extension() if grad_out.dtype == torch.float32 else None
    if ext is not None and grad_out.shape[0] and in_f and values.numel():
        return ext.csr_matmul_scatter(grad_out, pattern.crow, pattern.col, values.contiguous(),
                                      in_f, _sl._options["threading"])
    return _csr_product(grad_out, pattern.crow_t, pattern.col_t, pattern.col_t32,
                        values[pattern.perm], None, out_f, in_f)


class SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` with ``W`` given by a :class:`CsrPattern` and its ``(nnz,)`` values;
    differentiable in ``x``, ``values`` and ``bias`` (see the module docstring for the kernels).

    ``apply(x, values, bias, pattern[, recorder])`` with ``x`` of shape ``(batch, in)``;
    returns ``(batch, out)``. With a ``recorder`` (an object with ``record(grad)``), the
    backward computes the dense weight gradient ``dYᵀ·X`` (one dense product) instead of the
    sampled one, hands it to ``recorder.record`` and gathers the kept positions from it: what
    RigL's growth reads on its update steps.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor, bias: Tensor | None,
                pattern: CsrPattern, recorder: Any = None) -> Tensor:
        """Return ``x @ W.T + b`` (2-D ``x``) through the CSR forward kernel."""
        out_f, in_f = pattern.shape
        ctx.pattern = pattern
        ctx.recorder = recorder
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, values)
        return _csr_product(x, pattern.crow, pattern.col, pattern.col32, values, bias, in_f,
                            out_f)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        """Return the gradients of ``x`` (``dY·W`` via the CSR of ``Wᵀ``), ``values`` (SDDMM
        at the kept positions) and ``bias`` (``dY`` summed over the batch)."""
        x, values = ctx.saved_tensors
        pattern: CsrPattern = ctx.pattern
        out_f, in_f = pattern.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_gradient(grad_out, values, pattern)
        if ctx.recorder is not None:
            dense = grad_out.t().mm(x)  # (out, in): the gradient of the effective weight
            ctx.recorder.record(dense)
            if ctx.needs_input_grad[1]:
                grad_values = dense.view(-1).index_select(0, pattern.flat)
        elif ctx.needs_input_grad[1]:
            grad_values = pattern.sddmm(grad_out, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_values, grad_bias, None, None


class SparseTrainableLinear(nn.Module):
    """A Linear layer trained with a fixed sparsity pattern: parameters are the kept weights
    (``values``, shape ``(nnz,)``, CSR order) and ``bias``; pruned weights do not exist, so they
    stay exactly zero and carry no optimizer state.

    Inputs ``(..., in_features)`` of dtype float32 (compiled kernels, or torch's CSR without
    them) or float64 (torch's CSR) on the CPU give ``(..., out_features)``; anything else is
    refused. The pattern's index arrays are buffers, so ``state_dict`` carries them.
    """

    crow_indices: Tensor
    col_indices: Tensor

    def __init__(self, mask: Tensor, values: Tensor, bias: Tensor | None = None) -> None:
        """Build the layer from a boolean ``(out, in)`` mask and the kept weights in row-major
        order (``weight[mask]``).

        Raises:
            ValueError: for a bad mask, a values/bias shape that does not fit it, or a dtype
                other than float32/float64.
        """
        super().__init__()
        pattern = CsrPattern(mask)
        out_f, in_f = pattern.shape
        if values.shape != (pattern.nnz,):
            raise ValueError(f"values must have shape ({pattern.nnz},) for a mask with "
                             f"{pattern.nnz} kept weights; got {tuple(values.shape)}")
        if values.dtype not in DTYPES:
            raise ValueError(f"SparseTrainableLinear trains float32 or float64 weights; "
                             f"got {values.dtype}")
        if bias is not None and bias.shape != (out_f,):
            raise ValueError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
        self.in_features, self.out_features = in_f, out_f
        self._pattern = pattern
        self.values = nn.Parameter(values.detach().cpu().clone().contiguous())
        self.bias = (None if bias is None else
                     nn.Parameter(bias.detach().cpu().to(values.dtype).clone().contiguous()))
        self.register_buffer("crow_indices", pattern.crow)
        self.register_buffer("col_indices", pattern.col)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> SparseTrainableLinear:
        """Return a layer holding ``linear``'s weights at ``mask`` (default: its nonzeros).

        Kept positions whose weight is zero stay trainable; the rest are dropped.

        Raises:
            ValueError: when the mask's shape is not the weight's, or it is not boolean.
        """
        w = linear.weight.detach()
        if mask is None:
            mask = w != 0
        if mask.shape != w.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of the weight's shape "
                             f"{tuple(w.shape)}; got {mask.dtype} of shape {tuple(mask.shape)}")
        mask = mask.detach().cpu()
        return cls(mask, w.cpu()[mask], None if linear.bias is None else linear.bias.detach())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # A loaded pattern replaces the index buffers: rebuild the transposed layout from them.
        super()._load_from_state_dict(*args, **kwargs)
        crow, col = self.crow_indices.cpu(), self.col_indices.cpu()
        if crow.numel() != self.out_features + 1 or col.numel() != self.values.numel():
            return  # load_state_dict reports the mismatch itself
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool)
        rows = torch.repeat_interleave(torch.arange(self.out_features),
                                       (crow[1:] - crow[:-1]).long())
        mask[rows, col.long()] = True
        pattern = CsrPattern(mask)
        if not torch.equal(pattern.col.long(), col.long()):
            raise ValueError("the loaded col_indices must be sorted and unique within each row")
        self._pattern = pattern
        self.crow_indices, self.col_indices = self._pattern.crow, self._pattern.col

    @property
    def pattern(self) -> CsrPattern:
        """Return the fixed sparsity pattern (index arrays of ``W`` and ``Wᵀ``)."""
        return self._pattern

    @property
    def nnz(self) -> int:
        """Return the number of kept weights."""
        return self._pattern.nnz

    @property
    def density(self) -> float:
        """Return kept weights / (out * in); 0.0 for an empty layer shape."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    def mask(self) -> Tensor:
        """Return the boolean ``(out, in)`` mask of kept positions."""
        m = torch.zeros(self.out_features, self.in_features, dtype=torch.bool)
        m[self._pattern.rows, self._pattern.cols] = True
        return m

    def weight_dense(self) -> Tensor:
        """Return the weight as a dense ``(out, in)`` tensor with exact zeros where pruned
        (differentiable in ``values``)."""
        w = self.values.new_zeros(self.out_features, self.in_features)
        return w.index_put((self._pattern.rows, self._pattern.cols), self.values)

    def to_linear(self) -> nn.Linear:
        """Return an equivalent dense ``nn.Linear`` (pruned weights exactly zero)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x @ W.T + b`` with shape ``(..., out_features)``.

        Raises:
            ValueError: for a wrong feature size, or a dtype/device other than the layer's
                float32/float64 CPU.
        """
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"SparseTrainableLinear expects inputs (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        if (x.device.type != "cpu" or self.values.device.type != "cpu"
                or x.dtype != self.values.dtype or x.dtype not in DTYPES):
            raise ValueError(
                f"SparseTrainableLinear runs float32 or float64 CPU inputs of the layer's dtype "
                f"({self.values.dtype}); got {x.dtype} on {x.device} (use to_linear() instead)")
        lead = x.shape[:-1]
        y = SparseLinearFunction.apply(x.reshape(-1, self.in_features), self.values, self.bias,
                                       self._pattern)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        """Return the summary shown by ``print(module)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density:.4f}")
