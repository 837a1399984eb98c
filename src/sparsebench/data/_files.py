"""Small file helpers shared by the data builders: the cache location and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "data_home"]


def data_home() -> Path:
    """Return the root of sparsebench's data cache.

    ``$SPARSEBENCH_DATA`` when set, else ``~/.cache/sparsebench``; the directory may not exist yet.
    """
    env = os.environ.get("SPARSEBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsebench"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same directory + rename.

    A killed process leaves either the old file or the new one, never half a file, because
    ``os.replace`` within one filesystem is atomic.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
