"""Run ids do not drift: every run in the committed stores has an id its own sweep file still
plans, so a study stopped before a change goes on after it without training anything again
(issue 24). Small-dense runs are left out: their width comes from their source's result."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sparsebench.methods import catalogue
from sparsebench.study.sweep import load_sweep, reusable_run_ids

ROOT = Path(__file__).resolve().parents[2]
STORES = sorted((ROOT / "results" / "study").glob("*.db"))


def _runs(store: Path) -> list[tuple[str, str, str]]:
    # Read-only, and not through RunStore: nothing here may touch a committed store.
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute("SELECT id, sweep, technique FROM runs WHERE source = 'ours'").fetchall()


@pytest.mark.parametrize("store", STORES, ids=[s.name for s in STORES])
def test_every_committed_run_is_still_planned_by_its_sweep_file(store):
    by_sweep: dict[str, list[tuple[str, str]]] = {}
    for run_id, sweep, technique in _runs(store):
        by_sweep.setdefault(sweep, []).append((run_id, technique))
    checked = 0
    for sweep, runs in sorted(by_sweep.items()):
        path = ROOT / "sweeps" / f"{sweep}.yaml"
        if not path.is_file():
            continue
        planned = reusable_run_ids(load_sweep(path))
        lost = [run_id for run_id, technique in runs
                if technique != catalogue.SMALL_DENSE and run_id not in planned]
        assert not lost, f"{store.name}: {sweep} no longer plans {lost[:5]}"
        checked += len(runs)
    assert checked > 0
