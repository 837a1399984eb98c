"""What every report section shares: the report's parts (:class:`Table`, :class:`Section`), what
a section reads (:class:`ReportContext` for one :class:`Scope`) and the small helpers the
sections format and filter runs with. Imports no section module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import pareto as P
from ..store import Run, RunStore, result_layers
from ..sweep import orphaned_phase2_runs

__all__ = [
    "FAMILY_NAMES",
    "HEADLINE_LEVELS",
    "ReportContext",
    "Scope",
    "Section",
    "SectionBuilder",
    "Table",
    "cell",
    "family_name",
    "finished",
    "metric_of",
    "at_study_budget",
    "not_ranked_sentence",
    "run_layers",
    "run_test_loss",
    "with_replicas",
]

FAMILY_NAMES = {"resnet50": "ResNet-50", "transformer": "Transformer", "lenet5": "LeNet-5",
                "lenet300": "LeNet-300-100"}
#: Sparsity levels the sentences single out, as the study's discussion does.
HEADLINE_LEVELS = (0.9, 0.95)


@dataclass
class Table:
    """A table shown in the report and written as ``<name>.csv`` beside it."""

    name: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    #: False for a table kept as its CSV only, the page showing its content otherwise
    #: (the sweep files, which a table cell would collapse into one paragraph).
    shown: bool = True


@dataclass
class Section:
    """One section: a title, the question it answers, sentences, figures (file names in the
    report folder, with alt text) and tables."""

    id: str
    title: str
    question: str = ""
    sentences: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    #: Text shown as it is (monospaced, line breaks kept), with a heading each: a file.
    texts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportContext:
    """What a section builder reads: the store, the filters, the output folder."""

    store: RunStore
    out_dir: Path
    source: str | None = None
    model_family: str | None = None
    tolerance_pp: float = 1.0

    @cached_property
    def runs(self) -> list[Run]:
        """Returns the runs the report covers (read once): the store's, less the retraining
        runs whose source is no longer the best magnitude run at their sparsity
        (:attr:`orphaned`), which would otherwise mix two masks in one retraining point."""
        runs = self.store.runs(source=self.source, model_family=self.model_family)
        return [r for r in runs if r.id not in self.orphaned]

    @cached_property
    def orphaned(self) -> set[str]:
        """Returns the ids of the retraining / small-dense runs the report leaves out."""
        return orphaned_phase2_runs(
            self.store, self.store.runs(source=self.source, model_family=self.model_family))

    def scope_runs(self, scope: Scope, *, structured: bool = False) -> list[Run]:
        """Returns the covered runs of one (model family, source): the study's own runs, or
        with ``structured`` the block-sparsity experiments (runs with a ``block``
        hyperparameter, wider models among them), which answer another question and would
        otherwise pass for unstructured magnitude runs in the frontiers and retraining."""
        return [r for r in self.runs
                if r.model_family == scope.family and r.source == scope.source
                and ("block" in r.hyperparameters) == structured]

    def scopes(self) -> list[Scope]:
        """Returns the (model family, source) pairs present: published first, then ours.
        Sources are never mixed in one frontier: their tasks and metrics differ."""
        pairs = {(r.model_family, r.source) for r in self.runs}
        return [Scope(f, s) for f, s in sorted(pairs, key=lambda p: (p[1] != "published", p))]


@dataclass(frozen=True)
class Scope:
    """What one section covers: a model family and a source ("published" or "ours")."""

    family: str
    source: str

    @property
    def key(self) -> str:
        """Returns a file-name prefix, e.g. ``published_transformer``."""
        return f"{self.source}_{self.family}"

    @property
    def title(self) -> str:
        """Returns e.g. "Transformer (published)"."""
        return f"{family_name(self.family)} ({self.source})"


#: A section: built for one scope from the context, or None when the store has nothing for it.
SectionBuilder = Callable[[ReportContext, Scope], Section | None]


def family_name(family: str) -> str:
    """Returns the model family as the report names it, e.g. "ResNet-50"."""
    return FAMILY_NAMES.get(family, family)


def metric_of(runs: Sequence[Run]) -> tuple[str, bool]:
    """Returns the runs' headline metric and whether higher is better (of the first run that
    names one; ("", True) when none does)."""
    named = [r for r in runs if r.metric_name]
    return (named[0].metric_name, named[0].higher_is_better) if named else ("", True)


def cell(value: float, metric: str) -> str:
    """Returns a metric value as a table shows it: top-1 in percent, others as they are."""
    return f"{100 * value:.2f}" if metric == "top1" else f"{value:.2f}"


def finished(runs: Sequence[Run]) -> list[Run]:
    """Returns the runs that finished (not pending, diverged or failed)."""
    return [r for r in runs if r.status == "finished"]


def at_study_budget(table: dict[str, P.Frontier], runs: Sequence[Run]
                    ) -> tuple[dict[str, P.Frontier], list[str]]:
    """Splits a frontier table into the series trained at the study's budget, which are ranked
    against each other, and those of a sweep's variant ("imp (4x steps)"), which train on
    another budget and are drawn and tabled, never ranked: (ranked table, variant series)."""
    apart = sorted({r.label for r in runs if r.variant} & set(table))
    return {s: f for s, f in table.items() if s not in apart}, apart


def not_ranked_sentence(apart: Sequence[str]) -> str:
    """Names the series :func:`at_study_budget` left unranked."""
    return ("Not ranked with the others, since they train on another budget: "
            + ", ".join(P.display_name(s) for s in apart) + ".")


def run_test_loss(run: Run) -> float | None:
    """Returns the run's test loss, None when it has none (the published runs)."""
    value = run.metrics.get("test", {}).get("loss")
    return None if value is None else float(value)


def run_layers(run: Run) -> list[dict[str, Any]]:
    """Returns the run's per-layer report: kept in the store, else read from its result.json
    (stores written before schema 2)."""
    # No run directory (a one-shot row): nothing to read, and "" would be the working folder.
    return run.layers or (result_layers(run.run_dir) if run.run_dir else [])


def with_replicas(
        summaries: dict[str, dict[float, P.Summary]]) -> dict[str, dict[float, P.Summary]]:
    """The retraining series a figure draws: min/max bars need replicas, so series with fewer
    than 3 at every level are left to the table (all of them when none has 3)."""
    return {s: v for s, v in summaries.items() if max(x.n for x in v.values()) >= 3} or summaries
