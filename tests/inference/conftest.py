"""Fixtures for the inference tests: run a test on both kernel paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sparsebench.inference import _extension


@pytest.fixture(params=["cpp", "torch-csr"])
def kernel(request, monkeypatch) -> Iterator[str]:
    """Run a test once with the compiled kernels and once with the torch CSR fallback."""
    if request.param == "torch-csr":
        monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    else:
        monkeypatch.delenv(_extension.DISABLE_ENV, raising=False)
    _extension._reset_for_tests()
    if request.param == "cpp" and _extension.load_extension() is None:
        pytest.skip("C++ extension unavailable here (no compiler or ninja)")
    yield request.param
    _extension._reset_for_tests()
