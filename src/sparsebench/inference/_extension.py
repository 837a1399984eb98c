"""Load the C++ CSR kernels, compiled at first use and cached; say which path runs.

The kernels (``csrc/csr_linear.cpp``) are compiled with ``torch.utils.cpp_extension.load`` the
first time they are needed (about 30 s), never by ``pip install``: a build-isolated install
would pull an unpinned, multi-GB CUDA torch. The build is cached under the sparsebench cache
directory in a folder keyed by the source, the torch version, the compiler flags and the CPU
(model and instruction-set flags), because it is compiled with ``-march=native``: a cache on a
shared home directory must never hand an AVX-512 build to a CPU without AVX-512.

When anything is missing (no compiler, no ninja, no source file in a non-editable install, or
``SPARSEBENCH_NO_EXTENSION=1``), callers fall back to torch's own CSR kernels, and one log line
says so and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import os
import platform
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

#: Set to ``1`` to skip the C++ kernels and use torch's CSR fallback.
DISABLE_ENV = "SPARSEBENCH_NO_EXTENSION"
#: Overrides the cache directory (default ``$XDG_CACHE_HOME/sparsebench`` or ``~/.cache/...``).
CACHE_ENV = "SPARSEBENCH_CACHE_DIR"

_BASE_CFLAGS = ["-O3", "-fopenmp"]
# -march=native is safe because the build folder is keyed by this CPU's flags (see module doc).
_NATIVE_CFLAGS = ["-march=native"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Return the sparsebench cache directory (created on demand by callers)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsebench"


def cpu_description() -> tuple[str, str]:
    """Return ``(cpu model name, hash of the CPU's instruction-set flags)`` for cache keys."""
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.processor(), platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
    return model, hashlib.sha256(flags.encode()).hexdigest()[:12]


def _source() -> str | None:
    """Return the kernels' source as one translation unit: ``csr_linear.cpp`` with each of its
    local ``#include "name.h"`` lines replaced by that header from ``csrc/``, so that the build
    folder's key and ``kernel_version`` change with any of the files."""
    try:
        csrc = importlib.resources.files("sparsebench.inference").joinpath("csrc")
        return re.sub(
            r'^#include "([A-Za-z0-9_]+\.h)"$',
            lambda m: csrc.joinpath(m.group(1)).read_text(),
            csrc.joinpath("csr_linear.cpp").read_text(),
            flags=re.MULTILINE,
        )
    except (OSError, ModuleNotFoundError):
        return None


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Put the venv's ``ninja`` on PATH for the build: ``python -m`` runs often lack it."""
    old = os.environ.get("PATH", "")
    extra = [str(Path(sys.executable).parent)]
    with contextlib.suppress(ImportError, AttributeError):
        import ninja  # type: ignore[import-not-found]

        extra.append(str(ninja.BIN_DIR))
    os.environ["PATH"] = os.pathsep.join([*extra, old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _build(src: str) -> ModuleType:
    from torch.utils.cpp_extension import load

    model, flag_hash = cpu_description()
    last_error: Exception | None = None
    for cflags in (_BASE_CFLAGS + _NATIVE_CFLAGS, _BASE_CFLAGS):
        key = hashlib.sha256(
            "\n".join([src, torch.__version__, " ".join(cflags), model, flag_hash]).encode()
        ).hexdigest()[:16]
        build_dir = cache_dir() / "extensions" / key
        build_dir.mkdir(parents=True, exist_ok=True)
        source_file = build_dir / "csr_linear.cpp"
        if not source_file.exists() or source_file.read_text() != src:
            tmp = source_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(src)
            os.replace(tmp, source_file)
        if not (build_dir / f"sparsebench_csr_{key}.so").exists():
            log.info("compiling sparsebench CSR kernels into %s (first use, ~30 s)", build_dir)
        try:
            with _ninja_on_path():
                return load(
                    name=f"sparsebench_csr_{key}",
                    sources=[str(source_file)],
                    extra_cflags=cflags,
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(build_dir),
                    verbose=False,
                )
        except Exception as exc:  # noqa: BLE001 - any build failure means: try next / fall back
            last_error = exc
            log.debug("build with %s failed: %s", cflags, exc)
    raise RuntimeError(f"could not compile the CSR kernels: {last_error}")


def load_extension() -> ModuleType | None:
    """Return the compiled kernel module, or ``None`` when the fallback must be used.

    The first call compiles or loads the cached build and logs which path is in use; later
    calls return the same answer at once.
    """
    if "module" in _state:  # fast path for every forward call after the first
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        module: ModuleType | None = None
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            reason = f"{DISABLE_ENV} is set"
        elif (src := _source()) is None:
            reason = "csrc/csr_linear.cpp is not installed with the package"
        elif shutil.which("c++") is None and shutil.which("g++") is None:
            reason = "no C++ compiler on PATH"
        else:
            try:
                module = _build(src)
                reason = ""
            except Exception as exc:  # noqa: BLE001 - report and fall back, never crash
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if module is not None:
            log.info("sparse Linear kernels: compiled C++ CSR extension")
        else:
            log.warning("sparse Linear kernels: torch CSR fallback (%s)", reason)
        _state["module"] = module
        _state["reason"] = reason
        return module


def kernel_path() -> str:
    """Return ``"cpp"`` when the compiled kernels are in use, else ``"torch-csr"``."""
    return "cpp" if load_extension() is not None else "torch-csr"


def kernel_version() -> str:
    """Return a short hash of the kernel source in use (``"torch-csr"`` on the fallback).

    Calibrations are keyed by it: a change to the kernels makes earlier timings stale."""
    if load_extension() is None:
        return "torch-csr"
    return hashlib.sha256((_source() or "").encode()).hexdigest()[:12]


def _reset_for_tests() -> None:
    """Forget the cached decision so a test can change ``SPARSEBENCH_NO_EXTENSION``."""
    with _lock:
        _state.clear()
