"""Sparse inference: CSR kernels, a per-layer compile step, a performance model and export.

Typical use on a finalized model (pruned weights are exact zeros)::

    from sparsebench import inference as sbi

    sbi.fold_batchnorm(model)                               # convnets: BatchNorm into convs
    fast = sbi.compile_sparse(model, batch_hint=[1, 16],    # per-layer dense/CSR/BSR choice
                              example_input=x[:1])          # sizes the convolutions
    report = sbi.save_sparse(fast, "model.sparse.safetensors")
    again = sbi.load_sparse("model.sparse.safetensors")

``kernel_path()`` says whether the compiled C++ kernels or torch's CSR fallback run
(``SPARSEBENCH_NO_EXTENSION=1`` forces the fallback).
"""

from sparsebench.inference._extension import kernel_path, load_extension
from sparsebench.inference.compile import (
    LayerDecision,
    compact_sparse,
    compile_sparse,
    plan_sparse,
)
from sparsebench.inference.export import (
    ExportReport,
    SparseFileError,
    load_sparse,
    save_sparse,
)
from sparsebench.inference.fusion import (
    fold_batchnorm,
    fuse_activations,
    fuse_relu,
    fuse_residual_norm,
    fuse_residual_relu,
)
from sparsebench.inference.gru_sampler import GRUSampler
from sparsebench.inference.memory import retain_freed_memory
from sparsebench.inference.perf_model import Calibration, PerformanceModel
from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import (
    BLOCK_SIZES,
    SparseLinear,
    dense_to_bsr,
    dense_to_csr,
    set_kernel_options,
)
from sparsebench.inference.timing import interleaved_medians, machine_context

__all__ = [
    "BLOCK_SIZES",
    "SparseConv2d",
    "dense_to_bsr",
    "set_kernel_options",
    "Calibration",
    "ExportReport",
    "GRUSampler",
    "LayerDecision",
    "PerformanceModel",
    "SparseFileError",
    "SparseLinear",
    "compact_sparse",
    "compile_sparse",
    "dense_to_csr",
    "fold_batchnorm",
    "fuse_activations",
    "fuse_relu",
    "fuse_residual_norm",
    "fuse_residual_relu",
    "retain_freed_memory",
    "interleaved_medians",
    "kernel_path",
    "load_extension",
    "load_sparse",
    "machine_context",
    "plan_sparse",
    "save_sparse",
]
