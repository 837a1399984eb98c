"""Writing the report: ``out_dir/index.html`` (self-contained HTML, PNG figures beside it), a CSV
of every table, ``runs.csv`` and the library versions, reading like the study: one section per
question per model family, each with its figure and sentences computed from the data. The
sections and their order are in :mod:`.sections`."""

from __future__ import annotations

import csv
import html
import io
import platform
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from ..._io import atomic_write_bytes
from ..store import Run, RunStore
from .sections import build_sections
from .shared import ReportContext, Section, SectionBuilder, Table, family_name

__all__ = ["MANIFEST", "write_report"]


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
    budget sweep's own store (issue 28), drawn in a section of their own. ``builders``: the
    sections to build per scope instead of the report's own (then without the answers).

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
    answers, sections = build_sections(ctx, builders, budget_runs)
    overview = _overview(ctx.runs)
    version_table = Table("versions", ["library", "version"], sorted(_versions().items()))
    everything = [*answers, *sections]
    for table in [overview, version_table, *(t for s in everything for t in s.tables)]:
        atomic_write_bytes(out / f"{table.name}.csv", _csv_bytes(table))
    store.to_csv(out / "runs.csv", source=source if list_published else "ours",
                 model_family=model_family)
    page = _page(ctx, answers, sections, overview, version_table,
                 list_published=list_published, label=label or store.path.name)
    index = out / "index.html"
    atomic_write_bytes(index, page.encode())
    written = {index.name, "runs.csv", *(f"{t.name}.csv" for t in (overview, version_table)),
               *(f"{t.name}.csv" for s in everything for t in s.tables),
               *(name for s in everything for name, _ in s.figures)}
    _forget_stale_files(out, written)
    return index


def _overview(runs: Sequence[Run]) -> Table:
    """Returns the table of the runs covered, counted by source, model and technique."""
    counts: dict[tuple[str, str, str], int] = {}
    for run in runs:
        key = (run.source, family_name(run.model_family), run.technique)
        counts[key] = counts.get(key, 0) + 1
    return Table("run_counts", ["source", "model", "technique", "runs"],
                 [[*k, n] for k, n in sorted(counts.items())], "Rows in the store, by source.")


def _page(ctx: ReportContext, answers: Sequence[Section], sections: Sequence[Section],
          overview: Table, version_table: Table, *, list_published: bool, label: str) -> str:
    """Returns the HTML of ``index.html``: the answers, the introduction and contents, the
    sections, then the runs and library versions."""
    e = html.escape
    published = any(r.source == "published" for r in ctx.runs)
    intro = (
        "<p>This report answers the two questions of <em>The State of Sparsity in Deep Neural "
        "Networks</em> (Gale, Elsen &amp; Hooker, 2019) from the runs in the store: whether the "
        "popular sparsification techniques beat plain magnitude pruning, and whether a sparse "
        "architecture can be trained from scratch. Every number and sentence below is computed "
        "from the data. Sparsity is the achieved sparsity of each run; a frontier point is the "
        f"best run within ±{ctx.tolerance_pp:g} percentage points of one of the study's "
        "levels.</p>"
    )
    if published:
        intro += (
            "<p class=\"meta\">Published runs: the authors' released results "
            "(google-research/google-research, <code>state_of_sparsity/results/</code>, "
            "Apache-2.0), shipped with sparsebench. ResNet-50 top-1 is in percent in tables "
            "and figures; failed runs (BLEU 0) are kept and count in min/max.</p>")
    nav = "<nav><ul>" + "".join(f'<li><a href="#{e(s.id)}">{e(s.title)}</a></li>'
                                for s in sections) + "</ul></nav>"
    filters = ", ".join(f"{k}={v}" for k, v in (("source", ctx.source),
                                                 ("model family", ctx.model_family)) if v)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sparsebench: the state of sparsity</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>The state of sparsity: report</h1>",
        f'<p class="meta">{e(filters or "all runs")} · {len(ctx.runs)} runs from '
        f"{e(label)} · generated {e(generated)}</p>",
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
    return "\n".join(body)


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
