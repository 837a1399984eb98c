"""CSR weights and the ``SparseLinear`` module that runs ``y = x @ W.T + b`` with them.

The weight is stored as CSR over the ``(out_features, in_features)`` matrix: ``crow_indices``
(int32, length ``out + 1``), ``col_indices`` (int16 when ``in_features <= 32767``, halving the
index bytes, else int32) and ``values`` (float32). They are buffers, so ``state_dict`` and
``.to()`` carry them.

With ``block=(bh, bw)`` other than ``(1, 1)`` the same three buffers hold BSR (issue 10): the
matrix is cut into ``bh x bw`` blocks (the last block row/column padded with zeros when the
shape is not a multiple of the block), ``crow_indices`` points into block rows,
``col_indices`` holds block columns (int16/int32) and ``values`` is ``(nblocks, bh, bw)``.
Only blocks with a nonzero are stored, and the kernel's cost is proportional to their number.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsebench.inference import _extension, ops
from sparsebench.inference.ops import (  # defined there, the ops' own fallbacks
    ACTIVATIONS,
    apply_activation,
    bsr_to_dense,
    sparse_mm_torch,
)

log = logging.getLogger(__name__)

#: Largest ``in_features`` for which column indices fit int16.
INT16_MAX_COLS = 32767

#: Batch-1 kernels of the extension, by name (``-1`` in the extension means its default).
SPMV_VARIANTS = ("default", "scalar", "gather16", "gather8")
#: How the extension spreads work over threads: the calling thread only, torch's OpenMP pool,
#: its own pool (the caller works and waits only for chunks a helper started), or "adaptive"
#: (the default): OpenMP that runs serially for a while after a region stalled on a busy core.
THREADING = ("default", "serial", "openmp", "pool", "adaptive")
_options = {"spmv": -1, "threading": -1}
#: Rows of a product from which a CSR layer uses its count-class layout: one whole packed
#: panel of the extension, which takes the layout from there on (below, it would not be read).
PANEL_LAYOUT_MIN_ROWS = 64
#: Whether CSR Linears run products of ``PANEL_LAYOUT_MIN_ROWS`` rows or more through code
#: compiled for their pattern (``csr_pattern_kernel``: each group of rows keeps its sums in
#: registers, one load of an input feature serves all of them) where the extension has it
#: (x86-64 with AVX-512, Linux), rather than the count-class layout. A switch for timing both
#: side by side (``benchmarks/switch_ab.py --switch compiled``).
PATTERN_KERNEL = True
#: Rows of a product from which the compiled code is used. Its code and weights take about
#: 13 bytes per nonzero against the layout's 6, and a model's code does not stay in the L3
#: between forwards (BERT-base's at 90%: 80 MB), so each call streams it from memory: BERT at
#: 128 tokens, batch 1, ran 0.98x with it, at batch 8 (1,024 rows) 1.14x
#: (results/benchmarks/switch_ab_compiled.txt).
PATTERN_KERNEL_MIN_ROWS = 256
#: Whether the pairs linked by ``chains.chain_linears`` compute both products in one call; off,
#: each layer of a pair computes its own (a switch for timing both side by side,
#: ``benchmarks/switch_ab.py --switch chain``).
CHAIN_PRODUCTS = True
#: Whether a layer that carries a layer norm (``fused_norm``) computes ``norm(y + residual)``
#: in its own kernel call, panel by panel as it writes its rows; off, as a sum and a layer
#: norm after the product (``benchmarks/switch_ab.py --switch norm-epilogue``).
NORM_EPILOGUE = True
#: Why this process builds no more compiled kernels (the system refused executable memory).
_refused: list[str] = []


def _pattern_kernel_rows(rows: int) -> bool:
    """Whether a product of ``rows`` rows takes the compiled pattern kernel (where the
    extension has one): the one rule both the eager and the traced forward follow."""
    return PATTERN_KERNEL and rows >= PATTERN_KERNEL_MIN_ROWS and not _refused

def set_kernel_options(*, spmv: str | None = None, threading: str | None = None) -> dict[str, str]:
    """Choose the extension's batch-1 kernel and threading for every sparse layer.

    Benchmarks use it to time the variants side by side; users rarely need it. ``"default"``
    restores the built-in choice (scalar SpMV, adaptive threading).

    Returns:
        The previous settings, as accepted by this function (``set_kernel_options(**old)``).

    Raises:
        ValueError: for a name not in ``SPMV_VARIANTS`` / ``THREADING``.
    """
    old = {
        "spmv": SPMV_VARIANTS[_options["spmv"] + 1],
        "threading": THREADING[_options["threading"] + 1],
    }
    for key, value, names in (("spmv", spmv, SPMV_VARIANTS), ("threading", threading, THREADING)):
        if value is None:
            continue
        if value not in names:
            raise ValueError(f"{key} must be one of {', '.join(names)}; got {value!r}")
        _options[key] = names.index(value) - 1
    return old


def index_dtype_for(in_features: int) -> torch.dtype:
    """Return the smallest column-index dtype for a layer: int16 up to 32767 inputs, else int32."""
    return torch.int16 if in_features <= INT16_MAX_COLS else torch.int32


def dense_to_csr(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Convert a 2-D dense weight to CSR keeping only its exact nonzeros.

    Returns:
        ``(crow_indices int32 (out+1,), col_indices int16/int32 (nnz,), values float32 (nnz,))``.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    out_f, in_f = w.shape
    if out_f * in_f >= 2**31:
        raise ValueError(f"weight of shape {tuple(w.shape)} has too many entries for int32 CSR")
    mask = w != 0
    crow = torch.zeros(out_f + 1, dtype=torch.int32)
    crow[1:] = mask.sum(dim=1).cumsum(0).to(torch.int32)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order, so cols are sorted per row
    del rows
    return crow, cols.to(index_dtype_for(in_f)), w[mask].contiguous()


#: Block sizes the BSR kernels are compiled for ((1, 1) is plain CSR).
BLOCK_SIZES: tuple[tuple[int, int], ...] = ((1, 1), (4, 4), (8, 8), (16, 16), (32, 32), (16, 1))


def check_block(block: object) -> tuple[int, int]:
    """Return ``block`` as a ``(bh, bw)`` tuple of ints if it is a supported block size.

    Raises:
        ValueError: for anything else, naming the supported sizes.
    """
    ok = (
        isinstance(block, tuple | list)
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in block)
    )
    if not ok or tuple(block) not in BLOCK_SIZES:  # type: ignore[arg-type]
        sizes = ", ".join(f"{h}x{w}" for h, w in BLOCK_SIZES)
        raise ValueError(f"block must be one of {sizes} as a (rows, cols) pair; got {block!r}")
    return (int(block[0]), int(block[1]))  # type: ignore[index]


def block_grid(weight: Tensor, block: tuple[int, int]) -> Tensor:
    """Return the ``(out/bh, in/bw, bh, bw)`` blocks of a 2-D weight, zero-padded at the edges."""
    bh, bw = block
    out_f, in_f = weight.shape
    op, ip = -(-out_f // bh) * bh, -(-in_f // bw) * bw
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    if (op, ip) != (out_f, in_f):
        w = F.pad(w, (0, ip - in_f, 0, op - out_f))
    return w.reshape(op // bh, bh, ip // bw, bw).permute(0, 2, 1, 3)


def dense_to_bsr(weight: Tensor, block: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Convert a 2-D dense weight to BSR keeping every block that holds a nonzero.

    Returns:
        ``(block row pointers int32 (out/bh + 1,), block columns int16/int32 (nblocks,),
        values float32 (nblocks, bh, bw))``; edge blocks are zero-padded.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    bh, bw = check_block(block)
    blocks = block_grid(weight, (bh, bw))
    nonzero = (blocks != 0).flatten(2).any(dim=2)
    crow = torch.zeros(nonzero.shape[0] + 1, dtype=torch.int32)
    crow[1:] = nonzero.sum(dim=1).cumsum(0).to(torch.int32)
    rows, cols = nonzero.nonzero(as_tuple=True)
    return crow, cols.to(index_dtype_for(nonzero.shape[1])), blocks[rows, cols].contiguous()


def block_density(weight: Tensor, block: tuple[int, int]) -> tuple[float, float]:
    """Return ``(nonzero blocks / all blocks, nonzeros / stored block entries)`` of a weight.

    The second number is the fill of the stored blocks: 1.0 when the zeros form whole blocks.
    """
    nonzero = (block_grid(weight, block) != 0).flatten(2)
    kept = nonzero.any(dim=2)
    n_kept = int(kept.sum())
    fill = float(nonzero.sum()) / (n_kept * block[0] * block[1]) if n_kept else 1.0
    return n_kept / max(kept.numel(), 1), fill


def validate_csr(crow: Tensor, col: Tensor, values: Tensor, out_f: int, in_f: int) -> None:
    """Check the CSR invariants the kernels rely on; raise ``ValueError`` naming the broken one.

    The C++ kernels do no bounds checks (that is what makes them fast), so data from a file
    must pass this before it reaches them.
    """
    if values.dim() == 3:  # BSR: check it in units of blocks
        bh, bw = check_block(tuple(values.shape[1:]))
        if values.dtype != torch.float32 or values.shape[0] != col.numel():
            raise ValueError("values must be float32 (nblocks, bh, bw), one block per index")
        validate_csr(crow, col, values.new_empty(col.shape), -(-out_f // bh), -(-in_f // bw))
        return
    if crow.dtype != torch.int32 or crow.dim() != 1 or crow.numel() != out_f + 1:
        raise ValueError(f"crow_indices must be int32 of length {out_f + 1}")
    if col.dtype not in (torch.int16, torch.int32) or col.dim() != 1:
        raise ValueError("col_indices must be a 1-D int16 or int32 tensor")
    if values.dtype != torch.float32 or values.shape != col.shape:
        raise ValueError("values must be float32 with one entry per column index")
    if int(crow[0]) != 0 or int(crow[-1]) != col.numel():
        raise ValueError(f"crow_indices must start at 0 and end at nnz={col.numel()}")
    if out_f and bool((crow[1:] < crow[:-1]).any()):
        raise ValueError("crow_indices must be non-decreasing")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= in_f):
        raise ValueError(f"col_indices must lie in [0, {in_f})")


def register_sparse_weight(module: nn.Module, crow_indices: Tensor, col_indices: Tensor,
                           values: Tensor, bias: Tensor | None, rows: int, cols: int) -> None:
    """Checks a (rows, cols) CSR/BSR weight and registers it on ``module`` as the buffers
    ``crow_indices``, ``col_indices``, ``values`` (CSR is the 1x1-block case: values of shape
    (nnz,); BSR values are (nblocks, bh, bw)) and ``bias``; sets ``module.block``.

    Raises:
        ValueError: for inconsistent indices or a bias of the wrong shape.
    """
    validate_csr(crow_indices, col_indices, values, rows, cols)
    module.block = (1, 1) if values.dim() == 1 else (values.shape[1], values.shape[2])
    module.register_buffer("crow_indices", crow_indices.contiguous())
    module.register_buffer("col_indices", col_indices.contiguous())
    module.register_buffer("values", values.contiguous())
    if bias is not None:
        if bias.shape != (rows,):
            raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
        bias = bias.detach().to(torch.float32).contiguous()
    module.register_buffer("bias", bias)
    module._torch_csr = None  # built lazily for the fallback path
    module._torch_bsr = None  # built lazily for the torch-sparse (GPU) path


def count_class_layout(module: nn.Module, ext, parts: int,  # type: ignore[no-untyped-def]
                       columns: int) -> list[Tensor]:
    """Return the extension's count-class layout of ``module``'s CSR weight (``columns`` wide)
    for products of many rows (``csr_panel_layout``: the nonzeros of each feature block
    regrouped by rows of equal count, about as many bytes as the CSR again), kept in
    ``module._panel_layout`` and rebuilt when the weight's buffers change or ``parts`` (the
    threads' row shares) does."""
    key = (parts, module.values.data_ptr(), module.values._version,
           module.col_indices._version, module.crow_indices._version)
    cached = getattr(module, "_panel_layout", None)
    if cached is None or cached[0] != key:
        layout = ext.csr_panel_layout(module.crow_indices, module.col_indices, module.values,
                                      columns, -1, parts)
        module._panel_layout = cached = (key, layout)
    return cached[1]


class SparseLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight is held in CSR and run by sparse kernels.

    Inputs of shape ``(..., in_features)`` (1-D, 2-D, or e.g. ``(batch, seq, features)``) give
    ``(..., out_features)``, equal to the dense layer within float rounding. float32 CPU inputs
    use the compiled kernels (or torch's CSR when they are unavailable). Moved to a GPU (compile
    on the CPU, then ``.to("cuda")``), it runs torch's own sparse kernels there: CSR, or BSR for
    block layers (:meth:`forward_torch_sparse`). Other dtypes take a correct but slow dense
    path. There is no backward: build it from a finalized model.
    ``block`` says whether the three index/value buffers are CSR (``(1, 1)``) or BSR.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor
    bias: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        register_sparse_weight(self, crow_indices, col_indices, values, bias, out_features,
                               in_features)
        self._activation = "none"

    @property
    def activation(self) -> str:
        """The function applied to the output as it is written, one of ``ACTIVATIONS``: set by
        ``fusion.fuse_activations`` for a layer whose output only feeds that activation (which
        then becomes ``nn.Identity``); not part of the weight. Default ``"none"``."""
        return getattr(self, "_activation", "none")  # modules pickled before it existed

    @activation.setter
    def activation(self, name: str) -> None:
        if name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
        self._activation = name

    @classmethod
    def from_dense(
        cls, weight: Tensor, bias: Tensor | None = None, block: tuple[int, int] = (1, 1)
    ) -> SparseLinear:
        """Return a ``SparseLinear`` holding the exact nonzeros of ``weight`` (out, in).

        ``block=(bh, bw)`` other than ``(1, 1)`` stores BSR with blocks of that size.
        """
        block = check_block(block)
        parts = dense_to_csr(weight) if block == (1, 1) else dense_to_bsr(weight, block)
        b = None if bias is None else bias.detach().to("cpu", torch.float32)
        return cls(weight.shape[1], weight.shape[0], *parts, b)

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: tuple[int, int] = (1, 1)) -> SparseLinear:
        """Return a ``SparseLinear`` equal to ``linear`` (its zeros, or zero blocks, dropped)."""
        return cls.from_dense(linear.weight, linear.bias, block)

    @property
    def nnz(self) -> int:
        """Return the number of stored weights (for BSR: including zeros inside kept blocks)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """Return nonzeros / (out * in); 0.0 for an empty layer shape."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    def dense_weight(self) -> Tensor:
        """Return the weight as a dense float32 ``(out, in)`` tensor."""
        if self.block != (1, 1):
            return bsr_to_dense(
                self.crow_indices,
                self.col_indices,
                self.values,
                self.out_features,
                self.in_features,
            )
        w = torch.zeros(self.out_features, self.in_features, device=self.values.device)
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=w.device), counts)
        w[rows, self.col_indices.long()] = self.values
        return w

    def to_linear(self) -> nn.Linear:
        """Return an equivalent dense ``nn.Linear``.

        Raises:
            ValueError: when the layer applies an activation, which a Linear cannot hold.
        """
        if self.activation != "none":
            raise ValueError(f"this layer applies {self.activation} to its output, which an "
                             "nn.Linear cannot; set .activation = 'none' and apply it after")
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._torch_csr = None  # device/dtype moves invalidate the cached torch CSR tensor
        self._torch_bsr = None
        self._panel_layout = None
        self._pattern_kernel = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """Pickle without the caches: they are rebuilt from the buffers on first use."""
        state = self.__dict__.copy()
        for cache in ("_torch_csr", "_torch_bsr", "_panel_layout", "_pattern_kernel"):
            state[cache] = None
        return state

    def panel_layout(self, ext, parts: int,  # type: ignore[no-untyped-def]
                     rows: int = PATTERN_KERNEL_MIN_ROWS) -> list[Tensor]:
        """Return what the extension takes for a product of ``rows`` rows: code compiled for
        this weight's pattern where it can (``PATTERN_KERNEL``, from
        ``PATTERN_KERNEL_MIN_ROWS`` rows on), else the count-class layout (see
        ``count_class_layout``); each built on first use and kept until the weight changes."""
        if _pattern_kernel_rows(rows) and getattr(ext, "HAVE_PATTERN_KERNEL", False):
            key = (parts, self.values.data_ptr(), self.values._version,
                   self.col_indices._version, self.crow_indices._version)
            cached = getattr(self, "_pattern_kernel", None)
            if cached is None or cached[0] != key:
                try:
                    kernel = ext.csr_pattern_kernel(self.crow_indices, self.col_indices,
                                                    self.values, self.in_features, -1, -1, parts)
                except RuntimeError as error:  # executable memory refused: never ask again
                    _refused.append(str(error))
                    log.warning("%s; large products run through the count-class layout", error)
                    return count_class_layout(self, ext, parts, self.in_features)
                self._pattern_kernel = cached = (key, kernel)
            return cached[1]
        return count_class_layout(self, ext, parts, self.in_features)

    def torch_bsr(self) -> Tensor:
        """Return a block layer's weight as torch's BSR tensor on the buffers' device, padded
        to whole blocks (``ceil(out/bh)·bh x ceil(in/bw)·bw``; the edge blocks are stored
        zero-padded already), with int32 indices."""
        if self.block == (1, 1):
            raise ValueError("torch_bsr() is for block layers; this layer is CSR (block 1x1)")
        if getattr(self, "_torch_bsr", None) is None:
            bh, bw = self.block
            rows, cols = self.crow_indices.numel() - 1, -(-self.in_features // bw)
            with warnings.catch_warnings():  # "BSR support is in beta": known, and not news
                warnings.simplefilter("ignore", UserWarning)
                self._torch_bsr = torch.sparse_bsr_tensor(
                    self.crow_indices.to(torch.int32), self.col_indices.to(torch.int32),
                    self.values, (rows * bh, cols * bw), check_invariants=False)
        return self._torch_bsr

    def forward_torch_sparse(self, x: Tensor) -> Tensor:
        """Return ``x @ W.T + b`` through torch's sparse matrix product (CSR, or BSR for square
        blocks) on the device of ``x``: the path a GPU takes (cuSPARSE / torch's block-sparse
        kernels), and a reference on the CPU."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.values.dtype)
        if self.block[0] != self.block[1] or self.block == (1, 1):
            # MKL and cuSPARSE take square blocks only: 16x1 and the like run as CSR (built
            # once from the dense weight and cached).
            y = torch.sparse.mm(self.torch_csr(), x2.t()).t()
        else:
            padded = self.torch_bsr().shape[1]
            if padded != self.in_features:  # the weight's padding columns meet zeros
                x2 = F.pad(x2, (0, padded - self.in_features))
            y = torch.sparse.mm(self.torch_bsr(), x2.t()).t()[:, : self.out_features]
        y = y.contiguous()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def torch_csr(self) -> Tensor:
        """Return the weight as torch's CSR tensor with int32 indices (its fastest setting)."""
        if self._torch_csr is None:
            with warnings.catch_warnings():  # "CSR support is in beta": known, and not news
                warnings.simplefilter("ignore", UserWarning)
                self._torch_csr = self._make_torch_csr()
        return self._torch_csr

    def _make_torch_csr(self) -> Tensor:
        if self.block != (1, 1):
            return self.dense_weight().to_sparse_csr()
        return torch.sparse_csr_tensor(
            self.crow_indices,
            self.col_indices.to(torch.int32),
            self.values,
            (self.out_features, self.in_features),
            check_invariants=False,
        )

    @property
    def fused_norm(self) -> nn.LayerNorm | None:
        """The ``nn.LayerNorm`` this layer applies to ``output + residual`` when called with a
        residual (``fuse_norm``, called by ``fusion.fuse_residual_norm``; a reference, not a
        child: the norm stays where the model keeps it). None otherwise."""
        held = getattr(self, "_norm", None)
        return None if held is None else held[0]

    def fuse_norm(self, norm: nn.LayerNorm | None) -> None:
        """Make this layer apply ``norm`` to ``output + residual`` when called with a residual
        (None: undo). A method, not an attribute: ``nn.Module`` would register an assigned
        module as a child."""
        if norm is not None and (not isinstance(norm, nn.LayerNorm)
                                 or tuple(norm.normalized_shape) != (self.out_features,)):
            raise ValueError(f"a fused norm must be an nn.LayerNorm over the layer's "
                             f"{self.out_features} outputs, got {norm!r}")
        self._norm = None if norm is None else (norm,)  # a tuple: not registered as a child

    def _epilogue(self, x: Tensor, residual: Tensor) -> dict | None:
        """The extension's arguments for ``fused_norm(y + residual)`` within its product, or
        None where the product cannot apply it (the caller then adds and normalizes)."""
        norm = self.fused_norm
        out = self.out_features
        if (norm is None or not NORM_EPILOGUE or self.block != (1, 1) or out % 16
                or x.dtype != torch.float32 or x.device.type != "cpu"
                or residual.dtype != torch.float32 or residual.device.type != "cpu"
                or residual.shape != (*x.shape[:-1], out)
                or torch.compiler.is_compiling() or (torch.is_grad_enabled() and (
                    residual.requires_grad or any(p.requires_grad for p in norm.parameters())))):
            return None
        ext = _extension.load_extension()
        if ext is None or not getattr(ext, "HAVE_NORM_EPILOGUE", False):
            return None
        detached = [None if t is None else t.detach() for t in (norm.weight, norm.bias)]
        return {"residual": residual.reshape(-1, out).contiguous(), "norm_weight": detached[0],
                "norm_bias": detached[1], "eps": float(norm.eps)}

    def _finish(self, y: Tensor, residual: Tensor) -> Tensor:
        """``fused_norm(y + residual)`` (or the sum alone, without a norm) computed after the
        product."""
        y = y + residual
        norm = self.fused_norm
        return y if norm is None else norm(y)

    @property
    def chained(self) -> tuple[SparseLinear, SparseLinear] | None:
        """``(first, second)`` where this layer is one of two linked by ``chains.chain_linears``
        (the first's output feeds only the second): the first then hands its input through
        unchanged and the second computes both products. None otherwise."""
        return getattr(self, "_chain", None)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Return ``x @ W.T + b`` with shape ``(..., out_features)``; for a chained pair (see
        ``chained``) the first returns ``x`` and the second takes it. With ``residual``
        (shaped as the output), return ``fused_norm(y + residual)``, or ``y + residual``
        where the layer carries no norm."""
        pair = self.chained
        if pair is not None and CHAIN_PRODUCTS and self is pair[0]:
            if residual is not None:
                raise ValueError("the first layer of a chained pair hands its input through; "
                                 "it takes no residual")
            self._check_input(x)
            return x
        post = None if residual is None else self._epilogue(x, residual)
        if pair is None or not CHAIN_PRODUCTS:
            y = self._product(x, post)
        else:
            first = pair[0]
            first._check_input(x)
            x2 = x.reshape(-1, first.in_features)
            y = self._chain_product(first, x2, post)
            if y is None:
                y = self._product(first._product(x), post)
            else:
                y = y.reshape(*x.shape[:-1], self.out_features)
        if residual is not None and post is None:
            return self._finish(y, residual)
        return y

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"SparseLinear expects inputs (..., {self.in_features}), got {tuple(x.shape)}"
            )
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "SparseLinear is inference-only (no backward); run it under torch.no_grad()"
            )

    def _chain_product(self, first: SparseLinear, x2: Tensor,
                       post: dict | None = None) -> Tensor | None:
        """Both products of a chained pair in one extension call (``csr_pattern_chain``) for
        the whole 64-row panels of ``x2``, the rows left over one layer after the other; None
        where the call does not apply (no compiled kernels at this size, another device or
        type, torch.compile tracing)."""
        rows = x2.shape[0]
        if (x2.dtype != torch.float32 or x2.device.type != "cpu" or rows < 64
                or not _pattern_kernel_rows(rows) or torch.compiler.is_compiling()):
            return None
        ext = _extension.load_extension()
        if ext is None or not hasattr(ext, "csr_pattern_chain") or not ext.HAVE_PATTERN_KERNEL:
            return None
        threads = torch.get_num_threads()
        parts = 1 if threads <= 1 else 2 * threads
        layouts = [layer.panel_layout(ext, parts, rows) for layer in (first, self)]
        if any(len(layout) != 6 for layout in layouts):  # executable memory refused
            return None
        x2 = x2.contiguous()
        full = rows // 64 * 64
        y = torch.empty(rows, self.out_features)
        ext.csr_pattern_chain(x2, layouts[0], first.bias, ACTIVATIONS.index(first.activation),
                              layouts[1], self.bias, ACTIVATIONS.index(self.activation), y,
                              full, _options["threading"], **(post or {}))
        if full < rows:
            rest = None if post is None else {**post, "residual": post["residual"][full:]}
            y[full:] = self._product(first._product(x2[full:]), rest)
        return y

    def _product(self, x: Tensor, post: dict | None = None) -> Tensor:
        """This layer's own product, ``x @ W.T + b`` through its activation, then the
        epilogue ``post`` (``_epilogue``) where given."""
        if post is not None:  # only given where the CSR kernels apply it (_epilogue)
            return self._csr_product(_extension.load_extension(), x, post)
        self._check_input(x)
        if x.device.type != "cpu" and x.device == self.values.device \
                and x.dtype == self.values.dtype:
            return apply_activation(self.forward_torch_sparse(x), self.activation)
        if x.dtype != torch.float32 or x.device.type != "cpu":
            w = self.dense_weight().to(x.dtype)
            b = None if self.bias is None else self.bias.to(x.dtype)
            return apply_activation(F.linear(x, w, b), self.activation)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            return self._forward_op(x2).reshape(*lead, self.out_features)
        ext = _extension.load_extension()
        if ext is not None and self.block != (1, 1):
            y = ext.bsr_linear(
                x2,
                self.crow_indices,
                self.col_indices,
                self.values,
                self.bias,
                self.out_features,
                self.in_features,
                _options["threading"],
            )
        elif ext is not None:
            return self._csr_product(ext, x)
        else:
            y = sparse_mm_torch(self.torch_csr(), x2, self.bias)
        return apply_activation(y, self.activation).reshape(*lead, self.out_features)

    def _csr_product(self, ext, x: Tensor,  # type: ignore[no-untyped-def]
                     post: dict | None = None) -> Tensor:
        """The product of a float32 CPU ``x`` through the extension's CSR kernels, with the
        epilogue ``post`` applied by the kernel where given."""
        self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        layout = []
        if x2.shape[0] >= PANEL_LAYOUT_MIN_ROWS and hasattr(ext, "csr_panel_layout"):
            threads = torch.get_num_threads()
            layout = self.panel_layout(ext, 1 if threads <= 1 else 2 * threads, x2.shape[0])
        y = ext.csr_linear(x2, self.crow_indices, self.col_indices, self.values, self.bias,
                           self.in_features, _options["spmv"], _options["threading"],
                           ACTIVATIONS.index(self.activation), layout, **(post or {}))
        return y.reshape(*lead, self.out_features)

    def _forward_op(self, x2: Tensor) -> Tensor:
        """The product of a float32 CPU ``x2`` (rows, in) as one custom op (``ops.py``), for
        ``torch.compile`` to trace. The layouts are the ones eager runs built and cached, read
        without rebuilding (building calls the extension, which tracing cannot follow): run the
        model once at the batch size you compile for, and its products take the same paths."""
        if self.block != (1, 1):
            y = ops.bsr_linear(x2, self.crow_indices, self.col_indices, self.values, self.bias,
                               self.in_features, self.out_features, _options["threading"])
            return apply_activation(y, self.activation)
        layout: list[Tensor] = []
        rows = x2.shape[0]
        compiled = getattr(self, "_pattern_kernel", None)
        counted = getattr(self, "_panel_layout", None)
        if _pattern_kernel_rows(rows) and compiled is not None:
            layout = list(compiled[1])
        elif rows >= PANEL_LAYOUT_MIN_ROWS and counted is not None:
            layout = list(counted[1])
        return ops.csr_linear(x2, self.crow_indices, self.col_indices, self.values, self.bias,
                              self.in_features, self.out_features, _options["spmv"],
                              _options["threading"], ACTIVATIONS.index(self.activation), layout)

    def extra_repr(self) -> str:
        """Return the summary shown by ``print(module)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.4f}, "
            f"block={self.block[0]}x{self.block[1]}, "
            f"index_dtype={str(self.col_indices.dtype).removeprefix('torch.')}"
            + (f", activation={self.activation}" if self.activation != "none" else "")
            + ("" if self.chained is None
               else ", chain=first" if self.chained[0] is self else ", chain=second")
        )
