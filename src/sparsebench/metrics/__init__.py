"""Metrics: sparsity and FLOP counting, and the tasks' quality metrics."""

from .sparsity import LayerStats, SparsityReport, sparsity_report

__all__ = ["LayerStats", "SparsityReport", "sparsity_report"]
