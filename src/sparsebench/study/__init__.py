"""The study harness: the run store, the study's published runs, Pareto frontiers, figures and
the report that reads like "The State of Sparsity in Deep Neural Networks".

``sweep/`` reads sweep files and plans their runs, ``store/`` keeps runs in SQLite, ``driver``
and ``executors`` train the planned runs, ``pareto``, ``answers``, ``seeds`` and ``budget`` are
the analyses (pure functions over runs), ``figures`` and ``our_figures`` draw, and ``report/``
assembles the page from its sections. Every technique-specific question goes to
``sparsebench.methods.catalogue``."""

from .store import Run, RunStore, StoreError

__all__ = ["Run", "RunStore", "StoreError"]
