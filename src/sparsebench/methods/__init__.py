"""The techniques. One line per technique registers ``name -> Method``; nothing else in the
package branches on a technique's name."""

from __future__ import annotations

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
    "get",
    "names",
]

REGISTRY: dict[str, type[Method]] = {
    MagnitudePruning.name: MagnitudePruning,
    RandomPruning.name: RandomPruning,
    VariationalDropout.name: VariationalDropout,
    L0Regularization.name: L0Regularization,
}
ALIASES = {"vd": VariationalDropout.name, "l0_regularization": L0Regularization.name}


def names() -> list[str]:
    """Returns the technique names ``sparsify`` accepts (aliases included)."""
    return sorted(REGISTRY) + sorted(ALIASES)


def get(name: str) -> type[Method]:
    """Returns the Method class for ``name`` (or an alias).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"method must be a string naming a technique, got {name!r}.")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise ValueError(f"Unknown sparsification method {name!r}; choose one of {names()}.")
    return REGISTRY[key]
