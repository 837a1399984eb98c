"""Fixtures for the inference tests: run a test on both kernel paths, or on one and two
threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

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


@pytest.fixture(params=[1, 2])
def threads(request) -> Iterator[int]:
    """Run a test with torch (and so the kernels) on one thread, then on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def ext():
    """The compiled kernels, loaded afresh (the test is skipped where they cannot be built)."""
    _extension._reset_for_tests()
    module = _extension.load_extension()
    if module is None:
        pytest.skip("C++ extension unavailable here (no compiler or ninja)")
    return module
