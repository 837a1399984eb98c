"""Metrics: sparsity and FLOP counting, and the tasks' quality metrics."""

from .classification import accuracy, evaluate_classifier, top_k_accuracy
from .sparsity import LayerStats, SparsityReport, sparsity_report
from .translation import bleu, chrf

__all__ = [
    "LayerStats",
    "SparsityReport",
    "accuracy",
    "bleu",
    "chrf",
    "evaluate_classifier",
    "sparsity_report",
    "top_k_accuracy",
]
