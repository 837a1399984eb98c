"""The report's seed-spread section for our runs: how far one setting moves with the seed.

Where a setting was trained with several seeds (the dense baseline, the seed sweeps), this
section gives each one's mean and range, in the headline metric and in test loss, and says for
each sparsity whether the ranges of the settings trained there overlap (the grouping is
:func:`sparsebench.study.seeds.repeated_settings`).
"""

from __future__ import annotations

from .. import pareto as P
from ..seeds import repeated_settings, setting_name
from .shared import ReportContext, Scope, Section, Table, cell, metric_of, run_test_loss

__all__ = ["seed_section"]


def seed_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Mean and range over seeds of every setting trained more than once."""
    if scope.source != "ours":
        return None
    groups = repeated_settings(ctx.scope_runs(scope))
    if not groups:
        return None
    metric, higher = metric_of([r for g in groups.values() for r in g])
    rows, summaries = [], {}
    for key, runs in sorted(groups.items(), key=lambda kv: (kv[0][2] or 0.0, kv[0][0])):
        values = P.summarise(r.metric_value for r in runs)
        losses = [v for r in runs if (v := run_test_loss(r)) is not None]
        loss = P.summarise(losses) if len(losses) == len(runs) else None
        summaries[key] = (values, loss)
        target = "–" if key[2] is None else f"{100 * key[2]:g}"
        rows.append([setting_name(key), target, values.n, cell(values.mean, metric),
                     cell(values.min, metric), cell(values.max, metric),
                     *(["–"] * 3 if loss is None else
                       [f"{loss.mean:.3f}", f"{loss.min:.3f}", f"{loss.max:.3f}"])])
    sentences = []
    for key, (values, loss) in summaries.items():
        where = "" if key[2] is None else f" at {100 * key[2]:g}%"
        name = setting_name(key)
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
            f"At {100 * target:g}%, {setting_name(a)} averages {P.format_metric(va.mean, metric)} "
            f"and {setting_name(b)} {P.format_metric(vb.mean, metric)}: "
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
