"""The sparse Linear kernels as ``torch.library`` custom ops, so that ``torch.compile`` takes a
compiled-sparse model whole.

Each sparse product becomes one node of the traced graph: its fake kernel gives the output's
shape without running it, and inductor is free to fuse the dense work around it (layer norms,
residual sums, attention's reshapes) instead of breaking the graph at every sparse layer.
``SparseLinear`` calls these ops only while it is being compiled (``torch.compiler.
is_compiling()``); in eager runs it calls the extension directly, since the dispatcher adds
microseconds to each call, which a decoding step of 48 small products would feel.

The ops run the compiled extension where it is built and torch's own CSR/BSR products where it
is not, exactly as ``SparseLinear.forward`` does eagerly; those torch fallbacks and the
activations live here so that ``sparse_linear`` imports this module, not the other way.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsebench.inference import _extension

__all__ = ["ACTIVATIONS", "apply_activation", "bsr_linear", "bsr_to_dense", "csr_conv2d",
           "csr_linear", "sparse_mm_torch"]

#: Activations a ``SparseLinear`` can apply to its output as the kernel writes it, in the
#: extension's numbering: exact GELU (erf) and its tanh form (GPT-2's ``gelu_new``).
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh")


def apply_activation(y: Tensor, activation: str) -> Tensor:
    """Return ``activation`` applied to ``y`` with torch's own functions (in place for ReLU)."""
    if activation == "relu":
        return y.relu_()
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    return y


def bsr_to_dense(crow: Tensor, col: Tensor, values: Tensor, out_f: int, in_f: int) -> Tensor:
    """Return the dense float32 ``(out_f, in_f)`` matrix of BSR arrays (padding cut off)."""
    nb_r, (bh, bw) = crow.numel() - 1, values.shape[1:]
    nb_c = -(-in_f // bw)
    grid = torch.zeros(nb_r, nb_c, bh, bw, device=values.device)
    counts = (crow[1:] - crow[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(nb_r, device=values.device), counts)
    grid[rows, col.long()] = values
    return grid.permute(0, 2, 1, 3).reshape(nb_r * bh, nb_c * bw)[:out_f, :in_f].contiguous()


def sparse_mm_torch(w_csr: Tensor, x2: Tensor, bias: Tensor | None) -> Tensor:
    """Return ``x2 @ W.T + b`` with torch's CSR kernels, as a contiguous (batch, out) tensor.

    ``torch.sparse.mm(W, x.T)`` measured fastest of torch's CSR entry points here
    (``F.linear`` with a CSR weight is up to 5x slower at batch 128).
    """
    y = torch.sparse.mm(w_csr, x2.t()).t().contiguous()
    if bias is not None:
        y += bias
    return y



@torch.library.custom_op("sparsebench::csr_linear", mutates_args=())
def csr_linear(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None,
               in_features: int, out_features: int, spmv: int, threading: int,
               activation: int, layout: list[Tensor]) -> Tensor:
    """``act(x @ W.T + b)`` for a 2-D float32 ``x`` and W in CSR (``activation`` numbered as
    ``sparse_linear.ACTIVATIONS``), through ``layout`` (a count-class layout or a pattern
    kernel, or empty) from the rows where the extension reads it."""
    ext = _extension.load_extension()
    if ext is not None:
        return ext.csr_linear(x, crow, col, values, bias, in_features, spmv, threading,
                              activation, layout)
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(crow, col.to(torch.int32), values,
                                    (out_features, in_features), check_invariants=False)
    return apply_activation(sparse_mm_torch(w, x, bias), ACTIVATIONS[activation])


@csr_linear.register_fake
def _csr_linear_shape(x, crow, col, values, bias, in_features, out_features, spmv,  # noqa: ANN001, ANN202
                      threading, activation, layout):
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("sparsebench::bsr_linear", mutates_args=())
def bsr_linear(x: Tensor, brp: Tensor, bci: Tensor, values: Tensor, bias: Tensor | None,
               in_features: int, out_features: int, threading: int) -> Tensor:
    """``x @ W.T + b`` for a 2-D float32 ``x`` and W in BSR (blocks ``values.shape[1:]``), the
    activation left to the caller as in ``SparseLinear.forward``."""
    ext = _extension.load_extension()
    if ext is not None:
        return ext.bsr_linear(x, brp, bci, values, bias, out_features, in_features, threading)
    return F.linear(x, bsr_to_dense(brp, bci, values, out_features, in_features), bias)


@bsr_linear.register_fake
def _bsr_linear_shape(x, brp, bci, values, bias, in_features, out_features, threading):  # noqa: ANN001, ANN202
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("sparsebench::csr_conv2d", mutates_args=())
def csr_conv2d(x: Tensor, crow: Tensor, offsets: Tensor, values: Tensor, bias: Tensor | None,
               out_channels: int, geometry: list[int], relu: bool, threading: int,
               residual: Tensor | None, layout: list[Tensor]) -> Tensor:
    """The extension's direct convolution of a contiguous float32 NCHW ``x`` with a CSR
    weight (``offsets``: where each nonzero reads an input of ``x``'s size), plus
    ``residual`` and the ReLU where given; ``geometry`` is (kh, kw, sh, sw, ph, pw, dh, dw).
    Only traced models call it, and only where the extension is built."""
    ext = _extension.load_extension()
    if ext is None:
        raise RuntimeError("sparsebench::csr_conv2d needs the compiled kernels")
    return ext.csr_conv2d(x, crow, offsets, values, bias, out_channels, geometry, relu,
                          threading, residual, layout)


@csr_conv2d.register_fake
def _csr_conv2d_shape(x, crow, offsets, values, bias, out_channels, geometry, relu,  # noqa: ANN001, ANN202
                      threading, residual, layout):
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return x.new_empty((x.shape[0], out_channels, ho, wo))
