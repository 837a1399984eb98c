"""Small file helpers shared by the data builders: the cache location and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from sparsebench._io import atomic_write_bytes

__all__ = ["atomic_write_text", "data_home"]


def data_home() -> Path:
    """Return the root of sparsebench's data cache.

    ``$SPARSEBENCH_DATA`` when set, else ``~/.cache/sparsebench``; the directory may not exist yet.
    """
    env = os.environ.get("SPARSEBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsebench"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + rename, see
    ``sparsebench._io.atomic_write_bytes``): a killed process leaves the old file or the
    new one, never half a file.

    Returns:
        ``path`` as a Path.
    """
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)
