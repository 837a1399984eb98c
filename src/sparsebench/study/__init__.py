"""The study harness: the run store, the study's published runs, Pareto frontiers, figures and
the report that reads like "The State of Sparsity in Deep Neural Networks"."""

from .store import Run, RunStore, StoreError

__all__ = ["Run", "RunStore", "StoreError"]
