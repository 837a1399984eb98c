"""The techniques. Each is one file here (its Config and Method) and one entry in
``catalogue``, the one place that knows a technique's name, aliases, colour and properties;
nothing else in the package branches on a technique's name.

The classes are imported on first use, so asking the catalogue a question (as reading a run
store does) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import catalogue

if TYPE_CHECKING:
    from .base import Layer, Method, MethodConfig, WeightParametrization
    from .l0 import L0Config, L0Regularization
    from .magnitude import MagnitudeConfig, MagnitudePruning
    from .random import RandomConfig, RandomPruning
    from .variational_dropout import VariationalDropout, VariationalDropoutConfig

__all__ = [
    "ALIASES",
    "L0Config",
    "L0Regularization",
    "Layer",
    "MagnitudeConfig",
    "MagnitudePruning",
    "Method",
    "MethodConfig",
    "RandomConfig",
    "RandomPruning",
    "REGISTRY",
    "VariationalDropout",
    "VariationalDropoutConfig",
    "WeightParametrization",
    "catalogue",
    "get",
    "names",
]

_LAZY = {
    "Layer": "base", "Method": "base", "MethodConfig": "base", "WeightParametrization": "base",
    "L0Config": "l0", "L0Regularization": "l0",
    "MagnitudeConfig": "magnitude", "MagnitudePruning": "magnitude",
    "RandomConfig": "random", "RandomPruning": "random",
    "VariationalDropout": "variational_dropout",
    "VariationalDropoutConfig": "variational_dropout",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "REGISTRY":
        # The sparsifiers' Method classes by name (kept for code written against it).
        return {t.name: t.method_class for t in catalogue.entries(catalogue.SPARSIFIER)}
    if name == "ALIASES":
        return {a: t.name for t in catalogue.entries(catalogue.SPARSIFIER) for a in t.aliases}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def names() -> list[str]:
    """Returns the technique names ``sparsify`` accepts (aliases included)."""
    return catalogue.names(catalogue.SPARSIFIER) + catalogue.aliases(catalogue.SPARSIFIER)


def get(name: str) -> type[Method]:
    """Returns the Method class for ``name`` (or an alias).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    return catalogue.get(name, role=catalogue.SPARSIFIER).method_class
