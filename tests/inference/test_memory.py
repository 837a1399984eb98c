"""retain_freed_memory: after it, memory that malloc freed is reused without faulting its
pages in again. Each check runs in a fresh interpreter, since the setting is process-wide."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from sparsebench.inference import memory, retain_freed_memory

# Allocates two 24 MB blocks, touches every page, frees them; five times after a first block
# was freed. Prints the minor page faults of the five rounds.
_ROUNDS = textwrap.dedent("""
    import ctypes, resource, sys
    from sparsebench.inference import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = 24 << 20
    def block():
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        return p
    libc.free(block())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        a, b = block(), block()
        libc.free(a)
        libc.free(b)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip())


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_faulting_again():
    pages_per_round = 2 * (24 << 20) // 4096
    kept = _faults("retain")
    default = _faults("default")
    # Kept: only the second block of the first round is new memory (one block's pages).
    assert kept <= pages_per_round // 2 + 200
    # glibc's defaults hand 24 MB blocks back: most rounds fault every page in again.
    assert default >= 3 * pages_per_round


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="mmap_threshold"):
        retain_freed_memory(mmap_threshold=memory.LARGEST_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(trim_threshold=0)


def test_without_glibc_it_says_so_and_changes_nothing(monkeypatch, caplog):
    def no_libc(*_args, **_kwargs):
        raise OSError("no such library")

    monkeypatch.setattr(memory.ctypes, "CDLL", no_libc)
    with caplog.at_level("INFO", logger="sparsebench.inference.memory"):
        assert retain_freed_memory() is False
    assert "no glibc mallopt" in caplog.text
