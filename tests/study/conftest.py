"""Shared fixtures: one store with every published run, imported once per test session."""

from __future__ import annotations

import pytest

from sparsebench.study.published import import_published
from sparsebench.study.store import RunStore


@pytest.fixture(scope="session")
def published_store(tmp_path_factory):
    """A run store holding the package's published runs (read-only use in tests)."""
    path = tmp_path_factory.mktemp("published") / "published.db"
    store = RunStore(path)
    counts = import_published(store)
    store.import_counts = {c.path.rsplit("/", 1)[-1]: (c.csv_rows, c.store_rows) for c in counts}
    yield store
    store.close()


@pytest.fixture(scope="session")
def published_runs(published_store):
    """Every published run, read once (reading 8,389 rows takes a moment)."""
    return published_store.runs(source="published")
