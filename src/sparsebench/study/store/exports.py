"""The store's runs as a CSV file, for spreadsheets and the report's ``runs.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from ...rundir import atomic_write_bytes
from .results import _COLUMNS, Run, _to_row


def write_runs_csv(runs: Iterable[Run], path: str | Path) -> Path:
    """Writes ``runs`` as CSV (JSON columns as JSON text; the per-layer lists are left out,
    the report writes them as their own tables), atomically. Returns the path written."""
    buffer = io.StringIO()
    columns = [c for c in _COLUMNS if c != "layers"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for run in runs:
        writer.writerow(_to_row(run))
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)
