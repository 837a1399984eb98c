"""Sparse inference: CSR kernels, a per-layer compile step, a performance model and export.

Typical use on a finalized model (pruned weights are exact zeros)::

    from sparsebench import inference as sbi

    fast = sbi.compile_sparse(model, batch_hint=[1, 16])   # per-layer sparse/dense choice
    report = sbi.save_sparse(fast, "model.sparse.safetensors")
    again = sbi.load_sparse("model.sparse.safetensors")

``kernel_path()`` says whether the compiled C++ kernels or torch's CSR fallback run
(``SPARSEBENCH_NO_EXTENSION=1`` forces the fallback).
"""

from sparsebench.inference._extension import kernel_path, load_extension
from sparsebench.inference.compile import LayerDecision, compile_sparse, plan_sparse
from sparsebench.inference.export import (
    ExportReport,
    SparseFileError,
    load_sparse,
    save_sparse,
)
from sparsebench.inference.perf_model import Calibration, PerformanceModel
from sparsebench.inference.sparse_linear import SparseLinear, dense_to_csr
from sparsebench.inference.timing import interleaved_medians, machine_context

__all__ = [
    "Calibration",
    "ExportReport",
    "LayerDecision",
    "PerformanceModel",
    "SparseFileError",
    "SparseLinear",
    "compile_sparse",
    "dense_to_csr",
    "interleaved_medians",
    "kernel_path",
    "load_extension",
    "load_sparse",
    "machine_context",
    "plan_sparse",
    "save_sparse",
]
