"""sparsebench: train sparse neural networks and find out which technique wins on your task.

    import sparsebench as sb
    sp = sb.sparsify(model, "magnitude", sparsity=0.9,
                     schedule=sb.GradualSchedule(begin_step=1_000, end_step=20_000, frequency=500))
"""

import importlib
from typing import Any

from .distributions import LayerSparsity
from .metrics.sparsity import SparsityReport, sparsity_report
from .schedules import GradualSchedule
from .sparsify import Sparsifier, load_masks, select_layers, sparsify

__version__ = "0.1.0"

#: Subpackages loaded on first use (``sb.models.create(...)``), so ``import sparsebench`` stays
#: light for a user of the library alone.
_SUBPACKAGES = ("data", "inference", "metrics", "methods", "models", "study", "train")

__all__ = [
    "GradualSchedule",
    "LayerSparsity",
    "Sparsifier",
    "SparsityReport",
    "__version__",
    "load_masks",
    "select_layers",
    "sparsify",
    "sparsity_report",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sparsebench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])
