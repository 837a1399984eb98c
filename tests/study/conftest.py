"""Shared fixtures: one store with every published run, imported once per test session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def render_in_chromium(tmp_path):
    """Returns a function that screenshots an HTML file in headless Chromium (1280x2000),
    asserts the page rendered text and figures, and returns the image as an RGB array; skips
    the rest of the test when Chromium is not installed (the assertions before it still ran)."""

    def render(index: Path) -> np.ndarray:
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install -y chromium)")
        shot = tmp_path / f"{index.parent.name}-screenshot.png"
        completed = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
             "--window-size=1280,2000", index.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        with Image.open(shot) as image:
            assert image.size == (1280, 2000)
            pixels = np.asarray(image.convert("RGB"))
        # Text and figures give many colours (a blank or error page few), and the first figure,
        # on the first screen, draws coloured lines.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
        small = np.asarray(Image.fromarray(pixels).resize((320, 500)), dtype=np.int16)
        assert int(((small.max(axis=2) - small.min(axis=2)) > 80).sum()) > 200
        return pixels

    return render
