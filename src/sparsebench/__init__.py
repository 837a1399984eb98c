"""sparsebench: train sparse neural networks and find out which technique wins on your task.

    import sparsebench as sb
    sp = sb.sparsify(model, "magnitude", sparsity=0.9,
                     schedule=sb.GradualSchedule(begin_step=1_000, end_step=20_000, frequency=500))
"""

from .distributions import LayerSparsity
from .metrics.sparsity import SparsityReport, sparsity_report
from .schedules import GradualSchedule
from .sparsify import Sparsifier, load_masks, select_layers, sparsify

__version__ = "0.1.0"

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
