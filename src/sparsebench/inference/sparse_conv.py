"""``SparseConv2d``: a Conv2d whose weight is a sparse (out, in·kh·kw) matrix.

The weight is CSR (``block=(1, 1)``) or BSR over the ``(out, C·kh·kw)`` matrix, with the same
buffers as ``SparseLinear``; the flattening order is PyTorch's (channel, kh, kw), so block
columns of a BSR conv group ``bw`` consecutive (channel, tap) entries. How it runs:

* CSR, any stride: a direct sparse convolution in the spirit of Park et al. (2017): each
  nonzero W[o, c, i, j] adds a shifted run of the zero-padded input row to the output row, so
  the kernel reads the input itself. Strides other than 1 split the padded input into its
  stride phases first, which makes every tap a contiguous run again (``csr_conv2d`` in the
  C++ source explains the layout). Each nonzero's input offset depends on the input size; it
  is computed once per size and kept (``_offsets``). ``relu=True`` applies a ReLU as the
  output is written (for a convolution followed by one; see ``fuse_relu``).
  Where some tap's run starts off a cache line (3x3 convolutions, 1x1 ones on 7x7 and 14x14
  maps) and the weight's columns hold 10 nonzeros or more on average, the kernel copies each
  block of the runs into an aligned panel first and multiplies it through the count-class
  layout of the weight that the large-batch Linear products use (built once, kept in
  ``_panel_layout``; ``conv_layout_pays`` in the C++ source decides, ``CONV_LAYOUT`` turns
  it off).
  Where the weight's rows hold enough nonzeros (``CONV_PATTERN_MIN_ROW_NONZEROS``), on x86-64
  with AVX-512 under Linux, it runs code compiled for the weight's pattern instead
  (``conv_pattern.h``: the kernel of the large Linear products; built once, kept in
  ``_pattern_kernel``, never saved).
* BSR, stride 1 (and 1x1 convolutions of any stride, by subsampling the input first): the same
  direct convolution with blocks.
* BSR, other strides: im2col: ``F.unfold`` gives columns ``(N, C·kh·kw, L)`` and the kernel
  computes ``Y[n] = W @ cols[n] + b``, already NCHW. Measured for the direct kernels:
  ``F.unfold`` alone took longer than the whole dense convolution (0.8 ms vs 0.76 ms for
  64->64 3x3 on 32x32), so im2col is the slow path kept for blocks only.

Only ``groups=1`` with zero padding is supported; ``from_conv`` refuses the rest with a reason,
and the compile step leaves those layers dense. Without the compiled kernels the product runs on
torch's CSR (correct, slower).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsebench.inference import _extension, ops
from sparsebench.inference.sparse_linear import (
    _options,
    _refused,
    bsr_to_dense,
    check_block,
    count_class_layout,
    dense_to_bsr,
    dense_to_csr,
    register_sparse_weight,
)

#: Whether CSR convolutions may run through the count-class layout of their weight where the
#: kernels say it pays (``conv_layout_pays``: taps whose runs start off a cache line, and
#: enough nonzeros per weight column). A switch for timing both paths side by side.
CONV_LAYOUT = True

#: Whether CSR convolutions run through code compiled for their weight's pattern
#: (``conv_pattern.h``, the kernel of the large Linear products) where their rows hold
#: ``CONV_PATTERN_MIN_ROW_NONZEROS`` nonzeros or more on average. Each group of rows and slice
#: of 16 positions pays a fixed cost (its sums started at the bias, stored, then written out)
#: that only enough multiply-adds per row hide. A switch for timing both paths side by side
#: (``benchmarks/switch_ab.py --switch conv-pattern``).
CONV_PATTERN = True
CONV_PATTERN_MIN_ROW_NONZEROS = 24
#: Output positions (images x height x width) a call needs for the compiled code: each call
#: streams the code and weights (about 13 bytes per nonzero, against CSR's 6-8) once per
#: tile of 64 positions it reuses them over. In ResNet-50 at batch 1, one thread, the layers
#: with 7x7 outputs (49 positions) ran 0.63-0.81x through it, those with 14x14 outputs
#: 0.84-1.04x, the larger ones 0.84-1.21x (per layer by hooks, one compiled model with the
#: switch on and off in turn; a script, not kept).
CONV_PATTERN_MIN_POSITIONS = 256


def conv_unsupported_reason(conv: nn.Conv2d) -> str | None:
    """Return why ``conv`` cannot become a ``SparseConv2d``, or ``None`` when it can."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is lowered to a sparse matrix product)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (give explicit padding)"
    if conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
        return "not float32 on CPU"
    return None


class SparseConv2d(nn.Module):
    """Inference-only ``nn.Conv2d`` (groups=1) running a sparse weight matrix.

    Inputs ``(N, C, H, W)`` or ``(C, H, W)`` give the same outputs as the dense convolution
    within float rounding.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor
    bias: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.cols = in_channels * self.kernel_size[0] * self.kernel_size[1]
        register_sparse_weight(self, crow_indices, col_indices, values, bias, out_channels,
                               self.cols)
        #: ReLU applied as the output is written (set by ``fuse_relu``; not part of the weight).
        self.relu = False
        self._offsets: dict[tuple[int, int], Tensor] = {}  # input (H, W) -> nonzeros' offsets
        self._layout_pays: dict[tuple[int, int, int], bool] = {}  # (H, W, nonzeros) -> bool
        self._panel_layout = None
        self._pattern_kernel = None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._torch_csr = None  # device/dtype moves invalidate the cached torch CSR tensor
        self._offsets = {}
        self._panel_layout = None
        self._pattern_kernel = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """Pickle without the layout caches: they are rebuilt from the buffers on first use."""
        state = self.__dict__.copy()
        state["_panel_layout"] = None
        state["_pattern_kernel"] = None
        return state

    def _compiled_kernel(self, ext) -> list[Tensor] | None:  # type: ignore[no-untyped-def]
        """Return the code compiled for this weight's pattern (built on first use, kept until
        the weight changes), or None where the extension has none or may not map code."""
        if not getattr(ext, "HAVE_PATTERN_KERNEL", False) or _refused:
            return None
        key = (self.values.data_ptr(), self.values._version, self.col_indices._version,
               self.crow_indices._version)
        cached = self.__dict__.get("_pattern_kernel")
        if cached is None or cached[0] != key:
            try:
                kernel = ext.csr_pattern_kernel(self.crow_indices, self.col_indices, self.values,
                                                self.cols, -1, -1, 1)
            except RuntimeError as error:  # executable memory refused: never ask again
                _refused.append(str(error))
                return None
            self._pattern_kernel = cached = (key, kernel)
        return cached[1]

    def _pattern_pays(self, positions: int) -> bool:
        """Whether the compiled pattern kernel is the one to run for a call of ``positions``
        output positions (``CONV_PATTERN``)."""
        return (CONV_PATTERN and self.block == (1, 1) and self.out_channels > 0
                and positions >= CONV_PATTERN_MIN_POSITIONS
                and self.values.numel() >= CONV_PATTERN_MIN_ROW_NONZEROS * self.out_channels)

    def _layout_for(self, ext: object, n: int, h: int, w: int) -> list[Tensor]:
        """Return what the kernels take for ``n`` images of ``h x w``: the compiled pattern
        kernel where it pays (``_pattern_pays``), else the count-class layout where
        ``conv_layout_pays``, else an empty list (``conv_rows``)."""
        if self._pattern_pays(n * math.prod(self.output_size(h, w))):
            kernel = self._compiled_kernel(ext)
            if kernel is not None:
                return kernel
        if not CONV_LAYOUT or not hasattr(ext, "conv_layout_pays"):
            return []
        known = self.__dict__.setdefault("_layout_pays", {})  # absent in older pickles
        key = (h, w, self.values.numel())
        pays = known.get(key)
        if pays is None:
            pays = known[key] = bool(ext.conv_layout_pays(  # type: ignore[attr-defined]
                self.values.numel(), self.in_channels, h, w, self._geometry()))
        # One part: the kernels never split the layout's rows between threads.
        return count_class_layout(self, ext, 1, self.cols) if pays else []

    def _geometry(self) -> list[int]:
        """Return (kh, kw, sh, sw, ph, pw, dh, dw), as the kernels take it."""
        return [*self.kernel_size, *self.stride, *self.padding, *self.dilation]

    def _input_offsets(self, ext: object, h: int, w: int) -> Tensor:
        """Return where each nonzero reads an ``h x w`` input (computed once per size)."""
        offsets = self._offsets.get((h, w))
        if offsets is None:
            offsets = ext.conv_offsets(  # type: ignore[attr-defined]
                self.col_indices, self.in_channels, h, w, self._geometry()
            )
            self._offsets[(h, w)] = offsets
        return offsets

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, block: tuple[int, int] = (1, 1)) -> SparseConv2d:
        """Return a ``SparseConv2d`` equal to ``conv``.

        Raises:
            ValueError: when the convolution is not supported (see ``conv_unsupported_reason``).
        """
        if (reason := conv_unsupported_reason(conv)) is not None:
            raise ValueError(f"cannot make a sparse convolution: {reason}")
        block = check_block(block)
        matrix = conv.weight.detach().reshape(conv.out_channels, -1)
        parts = dense_to_csr(matrix) if block == (1, 1) else dense_to_bsr(matrix, block)
        bias = None if conv.bias is None else conv.bias.detach().to("cpu", torch.float32)
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            *parts,
            bias,
        )

    @property
    def density(self) -> float:
        """Return stored weights / (out · in · kh · kw)."""
        total = self.out_channels * self.cols
        return self.values.numel() / total if total else 0.0

    def dense_weight(self) -> Tensor:
        """Return the dense float32 weight ``(out, in, kh, kw)``."""
        if self.block != (1, 1):
            m = bsr_to_dense(
                self.crow_indices, self.col_indices, self.values, self.out_channels, self.cols
            )
        else:
            m = torch.zeros(self.out_channels, self.cols, device=self.values.device)
            counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
            rows = torch.repeat_interleave(torch.arange(self.out_channels, device=m.device),
                                           counts)
            m[rows, self.col_indices.long()] = self.values
        return m.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def to_conv(self) -> nn.Conv2d:
        """Return an equivalent dense ``nn.Conv2d``."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,  # type: ignore[arg-type]
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def _columns(self, x: Tensor) -> Tensor:
        """Return the im2col matrix ``(N, in·kh·kw, L)`` of ``x`` (a view for plain 1x1)."""
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            return x.reshape(x.shape[0], self.in_channels, -1)
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Return the output ``(Ho, Wo)`` for an input of ``h x w``."""
        size = []
        for n, k, s, p, d in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation, strict=True
        ):
            size.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return size[0], size[1]

    def forward(self, x: Tensor, residual: Tensor | None = None, relu: bool | None = None
                ) -> Tensor:
        """Return the convolution of ``x`` ``(N, C, H, W)`` (or ``(C, H, W)``).

        ``residual``, shaped as the output, is added before the ReLU, and ``relu`` (default:
        the layer's own ``relu``) says whether one follows: a ResNet block's last convolution
        with its shortcut (``fusion.fuse_residual_relu``), so that the sum and the ReLU are not
        separate passes over the activations.
        """
        if x.dim() == 3:
            r = None if residual is None else residual[None]
            return self.forward(x[None], r, relu)[0]
        relu = self.relu if relu is None else relu
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SparseConv2d expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "SparseConv2d is inference-only (no backward); run it under torch.no_grad()"
            )
        ho, wo = self.output_size(x.shape[2], x.shape[3])
        exact = (isinstance(residual, Tensor) and residual.dtype == x.dtype
                 and residual.device == x.device
                 and residual.shape == (x.shape[0], self.out_channels, ho, wo))
        if residual is not None and not exact:
            # A residual that broadcasts, or of another type: added as the traced sum was.
            y = torch.add(self.forward(x, relu=False), residual)
            return y.relu_() if relu else y
        if torch.compiler.is_compiling():
            return self._forward_traced(x, residual, relu)
        return self._forward_eager(x, residual, relu)

    def _forward_traced(self, x: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
        """The convolution as ``torch.compile`` traces it: the CSR kernel as one custom op
        (``ops.csr_conv2d``), with the input offsets and layout an eager call at this input
        size cached; anything else (no such call yet, block weights, other dtypes) runs
        eagerly, a break in the traced graph."""
        offsets = self._offsets.get((x.shape[2], x.shape[3]))
        if (self.block != (1, 1) or offsets is None or x.dtype != torch.float32
                or x.device.type != "cpu"):
            return self._forward_eager(x, residual, relu)
        layout: list[Tensor] = []
        known = self.__dict__.get("_layout_pays", {})
        counted = getattr(self, "_panel_layout", None)
        compiled = self.__dict__.get("_pattern_kernel")
        positions = x.shape[0] * math.prod(self.output_size(x.shape[2], x.shape[3]))
        if self._pattern_pays(positions) and compiled is not None:
            layout = list(compiled[1])
        elif CONV_LAYOUT and known.get((x.shape[2], x.shape[3], self.values.numel())) \
                and counted is not None:
            layout = list(counted[1])
        return ops.csr_conv2d(x.contiguous(), self.crow_indices, offsets, self.values,
                              self.bias, self.out_channels, self._geometry(), relu,
                              _options["threading"], residual, layout)

    @torch.compiler.disable
    def _forward_eager(self, x: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
        """The convolution of a 4-D ``x`` through the extension (or torch's CSR fallback)."""
        ext = _extension.load_extension()
        if x.dtype != torch.float32 or x.device.type != "cpu" or ext is None:
            return self._finish(self._forward_torch(x), residual, relu)
        if self.block == (1, 1):
            return ext.csr_conv2d(
                x.contiguous(),
                self.crow_indices,
                self._input_offsets(ext, x.shape[2], x.shape[3]),
                self.values,
                self.bias,
                self.out_channels,
                self._geometry(),
                relu,
                _options["threading"],
                residual,
                self._layout_for(ext, x.shape[0], x.shape[2], x.shape[3]),
            )
        ho, wo = self.output_size(x.shape[2], x.shape[3])
        return self._finish(self._forward_blocks(ext, x, ho, wo), residual, relu)

    def _finish(self, y: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
        """Return ``y`` plus the residual, then the ReLU, each where asked for (in place)."""
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if relu else y

    def _forward_blocks(self, ext: object, x: Tensor, ho: int, wo: int) -> Tensor:
        """Return the convolution of ``x`` with a BSR weight (compiled kernels)."""
        values = self.values if self.values.dim() == 3 else self.values.view(-1, 1, 1)
        stride, kernel = self.stride, self.kernel_size
        if kernel == (1, 1) and self.padding == (0, 0) and stride != (1, 1):
            x, stride = x[:, :, :: stride[0], :: stride[1]], (1, 1)  # 1x1: subsample first
        if stride == (1, 1):
            return ext.bsr_conv2d_s1(  # type: ignore[attr-defined]
                x.contiguous(),
                self.crow_indices,
                self.col_indices,
                values,
                self.bias,
                self.out_channels,
                *kernel,
                *self.padding,
                *self.dilation,
                _options["threading"],
            )
        cols = self._columns(x.contiguous())
        pad = (-self.cols) % self.block[1]
        if pad:  # BSR reads whole block columns: give it zero rows to read
            cols = F.pad(cols, (0, 0, 0, pad))
        y = ext.bsr_matmul_cols(  # type: ignore[attr-defined]
            cols,
            self.crow_indices,
            self.col_indices,
            values,
            self.bias,
            self.out_channels,
            _options["threading"],
        )
        return y.view(x.shape[0], self.out_channels, ho, wo)

    def _forward_torch(self, x: Tensor) -> Tensor:
        """Return the convolution computed with torch's CSR kernels (no extension)."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            w = self.dense_weight().to(x.device, x.dtype)
            b = None if self.bias is None else self.bias.to(x.device, x.dtype)
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)
        ho, wo = self.output_size(x.shape[2], x.shape[3])
        cols = self._columns(x)  # (N, K, L)
        n, k, length = cols.shape
        if self._torch_csr is None:
            with warnings.catch_warnings():  # "CSR support is in beta": known, and not news
                warnings.simplefilter("ignore", UserWarning)
                self._torch_csr = self.dense_weight().reshape(self.out_channels, k).to_sparse_csr()
        w = self._torch_csr
        y = torch.sparse.mm(w, cols.transpose(0, 1).reshape(k, n * length))  # (out, N·L)
        y = y.view(self.out_channels, n, length).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(n, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        """Return the summary shown by ``print(module)``."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, density={self.density:.4f}, "
            f"block={self.block[0]}x{self.block[1]}" + (", relu" if self.relu else "")
        )
