"""The study's report: ``out_dir/index.html`` (self-contained HTML, PNG figures beside it), a CSV
of every table, and the library versions, reading like the study: one section per question per
model family, each with its figure and sentences computed from the data.

Sections are small functions ``builder(ctx, family) -> Section | None`` listed in
:data:`SECTION_BUILDERS`; a builder returns None when the store has nothing for it, so the study
harness adds sections for our own runs (per-layer sparsity, training cost, MP v2, ...) by
appending builders, without touching the ones here.
"""

from __future__ import annotations

import csv
import html
import io
import platform
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

from ..rundir import atomic_write_bytes
from . import figures
from . import pareto as P
from .store import Run, RunStore
from .sweep import orphaned_phase2_runs

__all__ = [
    "SECTION_BUILDERS",
    "register_section",
    "ReportContext",
    "Scope",
    "Section",
    "Table",
    "dense_section",
    "published_comparison_section",
    "retraining_section",
    "technique_section",
    "write_report",
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
        return f"{_family(self.family)} ({self.source})"


SectionBuilder = Callable[[ReportContext, Scope], Section | None]


def _family(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def _metric_of(runs: Sequence[Run]) -> tuple[str, bool]:
    named = [r for r in runs if r.metric_name]
    return (named[0].metric_name, named[0].higher_is_better) if named else ("", True)


def _cell(value: float, metric: str) -> str:
    return f"{100 * value:.2f}" if metric == "top1" else f"{value:.2f}"


# ---- section builders ----------------------------------------------------------------------

def dense_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The dense baseline: mean, min and max over replicas."""
    runs = ctx.scope_runs(scope)
    baseline = P.dense_baseline(runs)
    if baseline is None:
        return None
    metric, _ = _metric_of([r for r in runs if r.technique == "dense"])
    row = [metric, _cell(baseline.mean, metric), _cell(baseline.min, metric),
           _cell(baseline.max, metric), baseline.n]
    return Section(
        id=f"{scope.key}-dense", title=f"{scope.title}: dense baseline",
        sentences=[P.dense_sentence(baseline, metric)],
        tables=[Table(f"{scope.key}_dense_baseline", ["metric", "mean", "min", "max", "runs"],
                      [row], f"Dense replicas, {P.metric_label(metric)}.")],
    )


def technique_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Question 1: the frontier of every sparsification technique, all runs, and who leads."""
    family_runs = ctx.scope_runs(scope)
    runs = [r for r in family_runs if r.technique in (*P.SPARSIFIERS, "mp-v2")]
    if not runs:
        return None
    metric, higher = _metric_of(runs)
    points = P.points_from_runs(runs)
    if not points:  # only pending or failed runs so far
        return None
    table = P.frontiers(points, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    baseline = P.dense_baseline(family_runs)
    name = f"{scope.key}_frontiers.png"
    figures.frontier_figure(table, points, ctx.out_dir / name, metric_name=metric,
                            baseline=baseline, collapsed=_collapsed(family_runs),
                            title=f"{scope.title}: Pareto frontier per technique")
    sentences = [P.leaders_sentence(table, higher_is_better=higher)]
    sentences += [P.best_at_level_sentence(table, lv, metric, higher_is_better=higher)
                  for lv in HEADLINE_LEVELS]
    if baseline is not None:
        for lv in HEADLINE_LEVELS:
            ranked = P.leaders(table, lv, higher_is_better=higher)
            if ranked:
                best_name, best = ranked[0]
                sentences.append(
                    f"At {100 * lv:g}% sparsity the best frontier point "
                    f"({P.display_name(best_name)}) keeps {100 * best.value / baseline.mean:.1f}%"
                    " of the dense baseline.")
        for series, frontier in sorted(table.items()):
            if frontier and max(fp.value for fp in frontier.values()) < 0.5 * baseline.mean:
                top = max(fp.value for fp in frontier.values())
                sentences.append(
                    f"{P.display_name(series).capitalize()} stays under half of the dense "
                    f"baseline at every level (best {P.format_metric(top, metric)}): it did not "
                    f"produce a usable sparse {_family(scope.family)} in these runs.")
    outside = {s: sum(P.nearest_level(p.sparsity, tolerance_pp=ctx.tolerance_pp) is None
                      for p in points if p.series == s) for s in table}
    if any(outside.values()):
        sentences.append(
            f"Points more than {ctx.tolerance_pp:g} pp from every level are left out of the "
            "frontier (VD and L0 only reach the sparsity their regularization gives): "
            + ", ".join(f"{P.display_name(s)} {n}" for s, n in sorted(outside.items()) if n)
            + ".")
    missed = P.off_target(runs)
    if missed:
        sentences.append(f"{len(missed)} runs miss their target sparsity by more than 1 pp; "
                         "they are placed at their achieved sparsity.")
    names = sorted(table, key=figures.series_order)
    rows = []
    for lv in P.LEVELS:
        cells = [f"{_cell(table[n][lv].value, metric)} ({table[n][lv].n})" if lv in table[n]
                 else "–" for n in names]
        ranked = P.leaders(table, lv, higher_is_better=higher)
        rows.append([f"{100 * lv:g}", *cells, P.display_name(ranked[0][0]) if ranked else "–"])
    return Section(
        id=f"{scope.key}-techniques",
        title=f"{scope.title}: sparsification techniques vs magnitude pruning",
        question="Do the popular sparsification techniques beat plain magnitude pruning?",
        sentences=sentences,
        figures=[(name, f"{scope.title} frontiers and all runs")],
        tables=[Table(f"{scope.key}_frontiers",
                      ["sparsity %", *[P.display_name(n) for n in names], "best"], rows,
                      f"Best {P.metric_label(metric)} within ±{ctx.tolerance_pp:g} pp of each "
                      "level (number of trained models in the bin).")],
    )


def _test_loss(run: Run) -> float | None:
    value = run.metrics.get("test", {}).get("loss")
    return None if value is None else float(value)


def _collapsed(runs: Sequence[Run]) -> set[str]:
    """Returns the train ids of the finished runs that collapsed in training, told by their
    test loss as the loss figure tells them (:func:`figures.collapsed_runs`); none for runs
    without one (the published runs)."""
    finished = [r for r in runs if r.status == "finished" and _test_loss(r) is not None]
    dense = [_test_loss(r) for r in finished if r.technique == "dense"]
    return figures.collapsed_runs({r.train_id: _test_loss(r) for r in finished},
                                  sum(dense) / len(dense) if dense else None)


def _with_replicas(
        summaries: dict[str, dict[float, P.Summary]]) -> dict[str, dict[float, P.Summary]]:
    """The retraining series a figure draws: min/max bars need replicas, so series with fewer
    than 3 at every level are left to the table (all of them when none has 3)."""
    return {s: v for s, v in summaries.items() if max(x.n for x in v.values()) >= 3} or summaries


def retraining_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Question 2: scratch-e / scratch-b / lottery / augmented against the MP frontier."""
    family_runs = ctx.scope_runs(scope)
    planned = [r for r in family_runs if r.technique in P.RETRAINING]
    runs = [r for r in planned if r.metric_value is not None]
    reference_runs = [r for r in family_runs if r.technique == "magnitude"]
    if not planned or not reference_runs:
        return None
    heading = dict(
        id=f"{scope.key}-retraining",
        title=f"{scope.title}: training the sparse architecture from scratch",
        question="Can a sparse architecture found by pruning be trained from scratch to the "
                 "same quality (scratch-e, scratch-b, lottery ticket, augmented init)?")
    if not P.points_from_runs(runs):  # a study under way: say so rather than draw empty axes
        return Section(**heading, sentences=[
            f"No retraining run has a result yet ({len(planned)} in the store)."])
    metric, higher = _metric_of(runs)
    summaries = P.replica_summaries(P.points_from_runs(runs), tolerance_pp=ctx.tolerance_pp)
    reference = P.binned_frontier(P.points_from_runs(reference_runs),
                                  tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)
    baseline = P.dense_baseline(family_runs)
    drawn = _with_replicas(summaries)
    name = f"{scope.key}_retraining.png"
    figures.retraining_figure(drawn, reference, ctx.out_dir / name, metric_name=metric,
                              baseline=baseline,
                              title=f"{scope.title}: retraining the sparse architecture "
                                    "(mean, min/max bars)")
    sentences = P.retraining_sentences(summaries, reference, metric, higher_is_better=higher)
    if len(drawn) < len(summaries):
        sentences.append("Series with fewer than 3 replicas per level are in the table only: "
                         + ", ".join(sorted(set(summaries) - set(drawn))) + ".")
    rows = [[series, f"{100 * lv:g}", _cell(s.max, metric), _cell(s.min, metric),
             _cell(s.mean, metric), s.n]
            for series in sorted(summaries, key=figures.series_order)
            for lv, s in sorted(summaries[series].items())]
    return Section(
        **heading,
        sentences=sentences,
        figures=[(name, f"{scope.title} retraining vs magnitude pruning")],
        tables=[Table(f"{scope.key}_retraining",
                      ["series", "sparsity %", "best (max)", "min", "mean", "replicas"], rows,
                      f"{P.metric_label(metric)} over replicas.")],
    )


def published_comparison_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Our frontiers beside the published ones of the same family, both as fractions of their
    own dense baseline (the tasks differ; the shapes compare). Read from the whole store, so
    a report filtered to our runs still shows the study's frontier."""
    if scope.source != "ours":
        return None
    ours = ctx.scope_runs(scope)
    published = ctx.store.runs(source="published", model_family=scope.family)
    base_ours, base_pub = P.dense_baseline(ours), P.dense_baseline(published)
    if not published or base_ours is None or base_pub is None:
        return None

    def table(runs: list[Run]) -> dict[str, P.Frontier]:
        _, higher = _metric_of(runs)
        pts = P.points_from_runs([r for r in runs if r.technique in P.SPARSIFIERS])
        return P.frontiers(pts, tolerance_pp=ctx.tolerance_pp, higher_is_better=higher)

    ours_t, pub_t = table(ours), table(published)
    if not any(ours_t.values()):  # nothing of ours finished yet beside the dense baseline
        return None
    name = f"{scope.key}_relative.png"
    figures.relative_frontiers_figure(pub_t, base_pub, ours_t, base_ours, ctx.out_dir / name,
                                      title=f"{_family(scope.family)}: our frontiers beside "
                                            "the study's, as a fraction of dense")
    rows, sentences = [], []
    for series in sorted(set(ours_t) & set(pub_t), key=figures.series_order):
        for lv in P.LEVELS:
            if lv in ours_t[series] and lv in pub_t[series]:
                a = ours_t[series][lv].value / base_ours.mean
                b = pub_t[series][lv].value / base_pub.mean
                rows.append([P.display_name(series), f"{100 * lv:g}", f"{a:.3f}", f"{b:.3f}"])
    for lv in HEADLINE_LEVELS:
        ours_rank, pub_rank = P.leaders(ours_t, lv), P.leaders(pub_t, lv)
        if ours_rank and pub_rank:
            same = ours_rank[0][0] == pub_rank[0][0]
            sentences.append(
                f"At {100 * lv:g}%, {P.display_name(ours_rank[0][0])} leads in our runs and "
                f"{P.display_name(pub_rank[0][0])} in the study's: the findings "
                + ("agree." if same else "differ."))
    return Section(
        id=f"{scope.key}-relative",
        title=f"{_family(scope.family)}: our frontiers beside the study's",
        sentences=sentences, figures=[(name, "frontiers relative to dense")],
        tables=[Table(f"{scope.key}_relative",
                      ["technique", "sparsity %", "ours / dense", "published / dense"], rows)],
    )


#: The sections, in report order, built for each (model family, source).
SECTION_BUILDERS: list[SectionBuilder] = [
    dense_section,
    technique_section,
    retraining_section,
    published_comparison_section,
]


#: Each builder's place in the report: its sections appear in this order. The question
#: sections above are 10-40; the modules that register more pick places among them.
_SECTION_ORDER: dict[SectionBuilder, float] = {
    dense_section: 10, technique_section: 20, retraining_section: 30,
    published_comparison_section: 40}


def register_section(builder: SectionBuilder, *, order: float) -> None:
    """Puts ``builder`` into :data:`SECTION_BUILDERS` at its ``order`` (see
    :data:`_SECTION_ORDER`), once: registering it again only moves it. A key rather than
    "after X" keeps the report's order whichever section module is imported first."""
    if builder in SECTION_BUILDERS:
        SECTION_BUILDERS.remove(builder)
    _SECTION_ORDER[builder] = order
    SECTION_BUILDERS.append(builder)
    SECTION_BUILDERS.sort(key=lambda b: _SECTION_ORDER.get(b, float("inf")))


# ---- writing -------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for package in ("sparsebench", "torch", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _csv_bytes(table: Table) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return buffer.getvalue().encode()


_CSS = """
body{font-family:Georgia,'DejaVu Serif',serif;max-width:1060px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.5;background:#fff}
h1{font-size:1.9em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em} .question{font-style:italic;color:#444} .meta{color:#666;font-size:.9em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-family:'DejaVu Sans',Arial,sans-serif;
font-size:.85em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;color:#666;font-size:.9em;text-align:left;padding-top:.3em}
nav ul{columns:2} .findings li{margin:.25em 0} a.csv{font-size:.8em}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em .8em;font-size:.85em;
overflow-x:auto;line-height:1.35} h3{font-size:1.05em;margin-bottom:.3em}
.answers{background:#fbfbf4;border:1px solid #e6e3c8;padding:0 1em .5em;margin:1em 0}
"""


def _section_html(section: Section) -> str:
    e = html.escape
    parts = [f'<section id="{e(section.id)}"><h2>{e(section.title)}</h2>']
    if section.question:
        parts.append(f'<p class="question">{e(section.question)}</p>')
    if section.sentences:
        parts.append('<ul class="findings">'
                     + "".join(f"<li>{e(s)}</li>" for s in section.sentences) + "</ul>")
    for file_name, alt in section.figures:
        parts.append(f'<figure><img src="{e(file_name)}" alt="{e(alt)}"></figure>')
    for heading, text in section.texts:
        parts.append(f"<h3>{e(heading)}</h3><pre>{e(text)}</pre>")
    for table in section.tables:
        if not table.shown:
            parts.append(f'<p class="meta">{e(table.caption)} '
                         f'<a class="csv" href="{e(table.name)}.csv">CSV</a></p>')
            continue
        head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>"
                       for row in table.rows)
        caption = f"<caption>{e(table.caption)} " \
                  f'<a class="csv" href="{e(table.name)}.csv">CSV</a></caption>'
        parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                     "</table>")
    parts.append("</section>")
    return "\n".join(parts)


def write_report(
    store: RunStore,
    out_dir: str | Path,
    *,
    source: str | None = None,
    model_family: str | None = None,
    builders: Sequence[SectionBuilder] | None = None,
    tolerance_pp: float = 1.0,
    list_published: bool = True,
    label: str | None = None,
    budget_runs: Sequence[Run] | None = None,
) -> Path:
    """Writes the report of the runs in ``store`` (optionally only one ``source`` or
    ``model_family``) to ``out_dir``: ``index.html``, its PNG figures, one CSV per table,
    ``runs.csv`` (every run covered; only ours without ``list_published``, for a report whose
    published runs are the package's own CSV files) and ``versions.csv``. ``label`` names the
    runs' origin in the page (default: the store's file name). ``budget_runs``: the runs of a
    budget sweep's own store (issue 28), drawn in a section of their own.

    Returns:
        The path of ``index.html``.

    Raises:
        ValueError: when no run matches the filters.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(store, out, source, model_family, tolerance_pp)
    if not ctx.runs:
        raise ValueError(
            f"no runs in {store.path} match source={source!r}, model_family={model_family!r}; "
            "import the published runs (sparsebench import-published) or run a sweep first.")
    sections = [s for scope in ctx.scopes() for build in (builders or SECTION_BUILDERS)
                if (s := build(ctx, scope)) is not None]
    if budget_runs:  # the budget sweep's store (issue 28), kept out of the frontiers above
        from .budget_section import budget_section

        published_runs = [r for r in ctx.runs if r.source == "published"]
        if (budget := budget_section(budget_runs, published_runs, out)) is not None:
            sections.append(budget)
    # The answers open the page, before the figures they summarise (ours only: the study's
    # published runs have no seed spread of ours to judge their gaps against).
    from .answers import answers_section

    answers = [] if builders is not None else [
        s for scope in ctx.scopes() if (s := answers_section(ctx, scope)) is not None]

    counts: dict[tuple[str, str, str], int] = {}
    for run in ctx.runs:
        key = (run.source, _family(run.model_family), run.technique)
        counts[key] = counts.get(key, 0) + 1
    overview = Table("run_counts", ["source", "model", "technique", "runs"],
                     [[*k, n] for k, n in sorted(counts.items())], "Rows in the store, by source.")
    versions = _versions()
    version_table = Table("versions", ["library", "version"], sorted(versions.items()))
    everything = [*answers, *sections]
    for table in [overview, version_table, *(t for s in everything for t in s.tables)]:
        atomic_write_bytes(out / f"{table.name}.csv", _csv_bytes(table))
    store.to_csv(out / "runs.csv", source=source if list_published else "ours",
                 model_family=model_family)

    e = html.escape
    published = any(r.source == "published" for r in ctx.runs)
    intro = (
        "<p>This report answers the two questions of <em>The State of Sparsity in Deep Neural "
        "Networks</em> (Gale, Elsen &amp; Hooker, 2019) from the runs in the store: whether the "
        "popular sparsification techniques beat plain magnitude pruning, and whether a sparse "
        "architecture can be trained from scratch. Every number and sentence below is computed "
        "from the data. Sparsity is the achieved sparsity of each run; a frontier point is the "
        f"best run within ±{tolerance_pp:g} percentage points of one of the study's levels.</p>"
    )
    if published:
        intro += (
            "<p class=\"meta\">Published runs: the authors' released results "
            "(google-research/google-research, <code>state_of_sparsity/results/</code>, "
            "Apache-2.0), shipped with sparsebench. ResNet-50 top-1 is in percent in tables "
            "and figures; failed runs (BLEU 0) are kept and count in min/max.</p>")
    nav = "<nav><ul>" + "".join(f'<li><a href="#{e(s.id)}">{e(s.title)}</a></li>'
                                for s in sections) + "</ul></nav>"
    filters = ", ".join(f"{k}={v}" for k, v in (("source", source),
                                                 ("model family", model_family)) if v) or "all runs"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sparsebench: the state of sparsity</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>The state of sparsity: report</h1>",
        f'<p class="meta">{e(filters)} · {len(ctx.runs)} runs from '
        f"{e(label or store.path.name)} · generated {e(generated)}</p>",
        *([f'<p class="meta">Left out: {len(ctx.orphaned)} retraining or small-dense runs '
           "that derive from a magnitude run no longer the best at its sparsity "
           f"({e(', '.join(sorted(ctx.orphaned)))}; <code>sparsebench status</code> counts "
           "them).</p>"] if ctx.orphaned else []),
        *(f'<div class="answers">{_section_html(s)}</div>' for s in answers),
        intro, nav,
        *(_section_html(s) for s in sections),
        _section_html(Section(id="runs", title="Runs in this report", tables=[overview])),
        '<p class="meta">Every run: <a href="runs.csv">runs.csv</a>'
        + ("." if list_published or not published else
           " (ours; the published runs are the CSV files shipped in "
           "<code>src/sparsebench/study/published_data/</code>).") + "</p>",
        _section_html(Section(id="versions", title="Library versions", tables=[version_table])),
        "</body></html>",
    ]
    index = out / "index.html"
    atomic_write_bytes(index, "\n".join(body).encode())
    written = {index.name, "runs.csv", *(f"{t.name}.csv" for t in (overview, version_table)),
               *(f"{t.name}.csv" for s in everything for t in s.tables),
               *(name for s in everything for name, _ in s.figures)}
    _forget_stale_files(out, written)
    return index


#: The files the last report wrote into its folder, one per line, so the next one can remove
#: those it no longer writes (a section that has nothing to show this time) and no others.
MANIFEST = "report_files.txt"


def _forget_stale_files(out: Path, written: set[str]) -> None:
    """Removes the files the previous report in ``out`` listed and this one did not write (a
    stale figure would otherwise still be linked from elsewhere as current), then lists
    this report's files. Files the report never wrote are left alone."""
    manifest = out / MANIFEST
    try:
        before = set(manifest.read_text().splitlines())
    except (OSError, ValueError):  # missing, or not text: forget nothing
        before = set()
    for name in sorted(before - written):
        path = out / name
        if path.parent == out and path.is_file():  # names only, never a path elsewhere
            path.unlink()
    atomic_write_bytes(manifest, ("\n".join(sorted(written)) + "\n").encode())

# The other sections (test loss, seeds, per-layer sparsity, training cost, MP v2, small dense,
# off-target runs, sweep files, speed) register themselves in SECTION_BUILDERS, each at its
# place, when imported; they import this module's types, hence the import at the end. Each
# reads the others only when called, so any of them may be imported first.
from . import loss_section as _loss_section  # noqa: E402, F401
from . import sections as _sections  # noqa: E402, F401
from . import seed_section as _seed_section  # noqa: E402, F401
from . import speed_sections as _speed_sections  # noqa: E402, F401
