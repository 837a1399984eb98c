"""Layer sparsity distributions: how an overall target is shared among layers.

Pure functions ``{layer name: shape} -> {layer name: sparsity}``, kept apart from how masks are
ranked (as in google-research/rigl's sparse_utils), so magnitude and random pruning share them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DISTRIBUTIONS",
    "LayerSparsity",
    "erk",
    "fill",
    "matches",
    "resolve_layer_sparsity",
    "uniform",
]

Shapes = Mapping[str, Sequence[int]]


def _check_target(sparsity: float, what: str) -> None:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{what} must lie in [0, 1), got {sparsity}.")


def uniform(shapes: Shapes, sparsity: float, fixed: Mapping[str, float] | None = None) -> dict:
    """Returns every layer at ``sparsity``, except the layers in ``fixed`` at their own value."""
    fixed = fixed or {}
    return {name: float(fixed.get(name, sparsity)) for name in shapes}


def fill(shapes: Shapes, sparsity: float, fixed: Mapping[str, float] | None = None) -> dict:
    """Returns the layers in ``fixed`` at their value and one common sparsity for all others,
    chosen so the overall sparsity over all layers equals ``sparsity`` ("magnitude pruning v2":
    first layer dense, last layer 80%, the rest raised to make up the difference).

    Raises:
        ValueError: when the other layers would need a sparsity outside [0, 1).
    """
    fixed = fixed or {}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(sizes.values())
    free = [name for name in shapes if name not in fixed]
    if not free:
        return {name: float(fixed[name]) for name in shapes}
    zeros_needed = sparsity * total - sum(fixed[n] * sizes[n] for n in fixed)
    rest = zeros_needed / sum(sizes[n] for n in free)
    if not 0.0 <= rest < 1.0:
        raise ValueError(
            f"Overall sparsity {sparsity} cannot be reached with the fixed layers "
            f"{dict(fixed)}: the other layers would need sparsity {rest:.4f}, outside [0, 1)."
        )
    return {name: float(fixed.get(name, rest)) for name in shapes}


def erk(shapes: Shapes, sparsity: float, fixed: Mapping[str, float] | None = None) -> dict:
    """Erdős–Rényi-Kernel (Evci et al., RigL): a layer's density is proportional to
    ``sum(shape) / prod(shape)``, scaled so the overall sparsity equals ``sparsity``.

    A layer whose density would exceed 1 is made dense and the others are rescaled, as in
    rigl's sparse_utils. Layers in ``fixed`` keep their value and are left out of the scaling.

    Raises:
        ValueError: when the target cannot be met: the fixed layers keep more weights than it
            allows, or every free layer dense is still too sparse.
    """
    fixed = dict(fixed or {})
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in fixed and n not in dense]
        nonzero_budget = (1.0 - sparsity) * total
        nonzero_budget -= sum((1.0 - fixed[n]) * sizes[n] for n in fixed)
        nonzero_budget -= sum(sizes[n] for n in dense)
        if nonzero_budget < -1e-6 * total:  # no share left to scale, not even zero
            raise ValueError(f"ERK cannot reach overall sparsity {sparsity} with the fixed "
                             f"layers {fixed}: they alone keep more weights than it allows.")
        if not free:
            if nonzero_budget > 1e-6 * total:
                raise ValueError(f"ERK cannot reach overall sparsity {sparsity} with the fixed "
                                 f"layers {fixed}: every other layer dense is still sparser.")
            break
        raw = {n: sum(shapes[n]) / sizes[n] for n in free}
        scale = nonzero_budget / sum(raw[n] * sizes[n] for n in free)
        overflow = [n for n in free if raw[n] * scale > 1.0]
        if not overflow:
            break
        dense.update(overflow)
    result = {}
    for name in shapes:
        if name in fixed:
            result[name] = float(fixed[name])
        elif name in dense:
            result[name] = 0.0
        else:
            result[name] = max(0.0, 1.0 - raw[name] * scale)
    return result


DISTRIBUTIONS = {"uniform": uniform, "fill": fill, "erk": erk}


def matches(pattern: str, names: Sequence[str]) -> bool:
    """Returns True when the glob ``pattern`` matches any of ``names``."""
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


@dataclass(frozen=True)
class LayerSparsity:
    """Per-layer sparsity: fixed values for some layers, a distribution for the rest.

    Args:
        overrides: glob pattern over layer names (module or parameter name) -> sparsity,
            e.g. ``{"conv1": 0.0, "fc": 0.8}``. The first matching pattern wins.
        distribution: how the layers not overridden share the overall target:
            ``"uniform"`` (each gets the target), ``"fill"`` (one common value chosen so the
            overall sparsity equals the target) or ``"erk"`` (Erdős–Rényi-Kernel).
    """

    overrides: Mapping[str, float] = field(default_factory=dict)
    distribution: str = "uniform"

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Unknown layer distribution {self.distribution!r}; "
                f"choose one of {sorted(DISTRIBUTIONS)}."
            )
        for pattern, value in self.overrides.items():
            _check_target(value, f"layer_sparsity[{pattern!r}]")

    @classmethod
    def coerce(cls, spec: LayerSparsity | str | Mapping[str, float] | None) -> LayerSparsity:
        """Returns a LayerSparsity from a distribution name, an override map, or None."""
        if spec is None:
            return cls()
        if isinstance(spec, LayerSparsity):
            return spec
        if isinstance(spec, str):
            return cls(distribution=spec)
        if isinstance(spec, Mapping):
            return cls(overrides=dict(spec))
        raise ValueError(
            f"layer_sparsity must be a distribution name, a mapping of patterns to sparsities "
            f"or a LayerSparsity, got {type(spec).__name__}."
        )


def resolve_layer_sparsity(
    layers: Mapping[str, tuple[Sequence[int], Sequence[str]]],
    sparsity: float,
    spec: LayerSparsity,
) -> dict[str, float]:
    """Returns each layer's final sparsity target.

    Args:
        layers: layer name -> (weight shape, the names patterns may match for that layer).
        sparsity: the overall target.
        spec: overrides and distribution.

    Raises:
        ValueError: when an override pattern matches no layer, or the target is unreachable.
    """
    _check_target(sparsity, "sparsity")
    fixed: dict[str, float] = {}
    for pattern, value in spec.overrides.items():
        hit = [name for name, (_, aliases) in layers.items() if matches(pattern, aliases)]
        if not hit:
            raise ValueError(
                f"layer_sparsity pattern {pattern!r} matches no sparsified weight; "
                f"known layers: {', '.join(list(layers)[:12])}{' …' if len(layers) > 12 else ''}."
            )
        for name in hit:
            fixed.setdefault(name, float(value))
    shapes = {name: shape for name, (shape, _) in layers.items()}
    return DISTRIBUTIONS[spec.distribution](shapes, sparsity, fixed)
