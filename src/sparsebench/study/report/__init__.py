"""The study's report: :func:`write_report` writes ``index.html``, its figures and a CSV of every
table from a run store.

The package, by module:

* ``shared``: the report's parts (Table, Section), what a section reads (ReportContext,
  Scope) and the helpers every section uses; imports no section.
* One module per section or close group: ``frontiers`` (the study's two questions),
  ``loss``, ``seeds``, ``layers``, ``cost``, ``magnitude`` (MP v2, masked weights, small
  dense), ``records`` (off-target runs, sweep files), ``speed`` (inference, blocks),
  ``budget`` and ``answers``. Each computes its tables from the runs and hands its figures to
  :mod:`sparsebench.study.figures` or :mod:`sparsebench.study.our_figures`.
* ``sections``: the sections in reading order, the one place that order is set.
* ``write``: the HTML page, the CSV files and the list of files written.
"""

from .frontiers import (
    dense_section,
    published_comparison_section,
    retraining_section,
    technique_section,
)
from .sections import SECTION_BUILDERS, build_sections
from .shared import HEADLINE_LEVELS, ReportContext, Scope, Section, SectionBuilder, Table
from .write import MANIFEST, write_report

__all__ = [
    "HEADLINE_LEVELS",
    "MANIFEST",
    "SECTION_BUILDERS",
    "ReportContext",
    "Scope",
    "Section",
    "SectionBuilder",
    "Table",
    "build_sections",
    "dense_section",
    "published_comparison_section",
    "retraining_section",
    "technique_section",
    "write_report",
]
