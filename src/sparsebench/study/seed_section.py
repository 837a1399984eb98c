"""The report's seed-spread section for our runs: how far one setting moves with the seed.

A frontier point is the best run of a bin, and most bins hold one run per setting, so a gap
between two techniques means little until one knows how far a single setting moves when only
the seed changes. Where a setting was trained with several seeds (the dense baseline, the
seed sweeps), this section gives each one's mean and range, in the headline metric and in
test loss, and says for each sparsity whether the ranges of the settings trained there
overlap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from . import pareto as P
from .report import (
    ReportContext,
    Scope,
    Section,
    Table,
    _cell,
    _metric_of,
    register_section,
)
from .store import Run

__all__ = ["SeedSpread", "repeated_settings", "seed_section", "seed_spread"]

_SERIES = ("dense", *P.SPARSIFIERS, "mp-v2")
#: Sweep bookkeeping, not a hyperparameter of the training.
_NOT_SETTINGS = ("warmup_end",)


def repeated_settings(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Returns the finished runs grouped by setting (technique, variant, target, the
    hyperparameters), only the settings trained at least twice (different seeds)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status != "finished" or run.metric_value is None or run.technique not in _SERIES:
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
    pool = {k: v for k, v in groups.items() if k[0] != "dense"} or groups
    if not pool:
        return None

    def width(item: tuple[tuple, list[Run]]) -> float:
        values = [r.metric_value for r in item[1]]
        return max(values) - min(values)

    key, widest = max(pool.items(), key=width)
    where = "" if key[2] is None else f" at {100 * key[2]:g}%"
    return SeedSpread(width((key, widest)), _setting(key) + where, len(widest))


def _setting(key: tuple) -> str:
    technique, variant, _, hyperparameters = key
    values = {k: v for k, v in json.loads(hyperparameters).items() if k not in _NOT_SETTINGS}
    text = ", ".join(f"{k} {v}" for k, v in sorted(values.items()))
    name = P.display_name(f"{technique} ({variant})" if variant else technique)
    return f"{name} ({text})" if text else name


def _loss(run: Run) -> float | None:
    value = run.metrics.get("test", {}).get("loss")
    return None if value is None else float(value)


def seed_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Mean and range over seeds of every setting trained more than once."""
    if scope.source != "ours":
        return None
    groups = repeated_settings(ctx.scope_runs(scope))
    if not groups:
        return None
    metric, higher = _metric_of([r for g in groups.values() for r in g])
    rows, summaries = [], {}
    for key, runs in sorted(groups.items(), key=lambda kv: (kv[0][2] or 0.0, kv[0][0])):
        values = P.summarise(r.metric_value for r in runs)
        losses = [v for r in runs if (v := _loss(r)) is not None]
        loss = P.summarise(losses) if len(losses) == len(runs) else None
        summaries[key] = (values, loss)
        target = "–" if key[2] is None else f"{100 * key[2]:g}"
        rows.append([_setting(key), target, values.n, _cell(values.mean, metric),
                     _cell(values.min, metric), _cell(values.max, metric),
                     *(["–"] * 3 if loss is None else
                       [f"{loss.mean:.3f}", f"{loss.min:.3f}", f"{loss.max:.3f}"])])
    sentences = []
    for key, (values, loss) in summaries.items():
        where = "" if key[2] is None else f" at {100 * key[2]:g}%"
        name = _setting(key)
        sentences.append(
            f"{name[:1].upper() + name[1:]}{where}: {values.n} seeds span "
            f"{P.format_metric(values.min, metric)} to {P.format_metric(values.max, metric)}"
            + ("" if loss is None else f" and {loss.min:.3f} to {loss.max:.3f} nats of test loss")
            + ".")
    by_target: dict[float, list[tuple]] = {}
    for key in summaries:
        if key[2] is not None:
            by_target.setdefault(key[2], []).append(key)
    for target, keys in sorted(by_target.items()):
        if len(keys) < 2:
            continue
        ranked = sorted(keys, key=lambda k: summaries[k][0].mean, reverse=higher)
        (a, b) = ranked[0], ranked[1]
        (va, la), (vb, lb) = summaries[a], summaries[b]
        apart = va.min > vb.max if higher else va.max < vb.min
        sentence = (
            f"At {100 * target:g}%, {_setting(a)} averages {P.format_metric(va.mean, metric)} "
            f"and {_setting(b)} {P.format_metric(vb.mean, metric)}: "
            + ("their seeds' ranges do not overlap" if apart else
               "their seeds' ranges overlap, so one seed each cannot rank them"))
        if la is not None and lb is not None:
            loss_apart = la.max < lb.min or lb.max < la.min
            sentence += (f"; in test loss ({la.mean:.3f} and {lb.mean:.3f} nats) they "
                         + ("do not overlap" if loss_apart else "overlap"))
        sentences.append(sentence + ".")
    return Section(
        id=f"{scope.key}-seeds",
        title=f"{scope.title}: what the seed alone changes",
        question="How far does one setting move when only the seed changes, and which gaps "
                 "between techniques are larger than that?",
        sentences=sentences,
        tables=[Table(f"{scope.key}_seeds",
                      ["setting", "target %", "seeds", "mean", "min", "max", "loss mean",
                       "loss min", "loss max"], rows,
                      f"{P.metric_label(metric)} and test loss (nats) over the seeds of each "
                      "setting trained more than once.")],
    )


# After the frontiers in loss (21), which it qualifies.
register_section(seed_section, order=22)
