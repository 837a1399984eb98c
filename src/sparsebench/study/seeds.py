"""How far one setting moves with the seed alone: the analysis behind the report's seed section
and the answers' verdicts (:mod:`.answers`).

A frontier point is the best run of a bin, and most bins hold one run per setting, so a gap
between two techniques means little until one knows how far a single setting moves when only
the seed changes. Here the settings trained with several seeds are grouped, and the widest
range among them is the spread a gap must exceed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..methods import catalogue
from . import pareto as P
from .store import Run

__all__ = ["SeedSpread", "repeated_settings", "seed_spread", "setting_name"]

#: Sweep bookkeeping, not a hyperparameter of the training.
_NOT_SETTINGS = ("warmup_end",)


def repeated_settings(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Returns the finished runs grouped by setting (technique, variant, target, the
    hyperparameters), only the settings trained at least twice (different seeds)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if (run.status != "finished" or run.metric_value is None
                or run.technique not in (catalogue.DENSE, *catalogue.trained())):
            continue
        key = (run.technique, run.variant, run.target_sparsity,
               json.dumps(run.hyperparameters, sort_keys=True))
        groups.setdefault(key, []).append(run)
    return {k: v for k, v in groups.items() if len({r.seed for r in v}) > 1}


@dataclass(frozen=True)
class SeedSpread:
    """How far one setting moves with the seed alone: the ``value`` (max - min over its
    seeds, in the metric's units) of the widest ranging setting, named in ``setting`` (with
    its target), over ``n`` seeds."""

    value: float
    setting: str
    n: int


def seed_spread(runs: Sequence[Run]) -> SeedSpread | None:
    """Returns the widest seed range of any sparse setting trained with several seeds, in
    the runs' ``metric_value``; the dense baseline's when no sparse setting was repeated
    (pruned settings move more with the seed: 1.2 points against the dense 0.2 on the image
    task, so the dense range is the fallback, not a peer); None when nothing was repeated.
    A gap between two techniques no larger than this cannot be told from the seed."""
    groups = repeated_settings(runs)
    pool = {k: v for k, v in groups.items() if k[0] != catalogue.DENSE} or groups
    if not pool:
        return None

    def width(item: tuple[tuple, list[Run]]) -> float:
        values = [r.metric_value for r in item[1]]
        return max(values) - min(values)

    key, widest = max(pool.items(), key=width)
    where = "" if key[2] is None else f" at {100 * key[2]:g}%"
    return SeedSpread(width((key, widest)), setting_name(key) + where, len(widest))


def setting_name(key: tuple) -> str:
    """Returns a setting (a key of :func:`repeated_settings`) as the report names it: the
    technique's display name, its hyperparameters in brackets."""
    technique, variant, _, hyperparameters = key
    values = {k: v for k, v in json.loads(hyperparameters).items() if k not in _NOT_SETTINGS}
    text = ", ".join(f"{k} {v}" for k, v in sorted(values.items()))
    name = P.display_name(f"{technique} ({variant})" if variant else technique)
    return f"{name} ({text})" if text else name
