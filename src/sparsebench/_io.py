"""Plain file helpers with no dependency on the rest of sparsebench: atomic writes and the
checks of an output path. Here so that any part of the package (the data builders, the run
folder, the study's report) can write files without importing the others (``rundir`` brings
in torch and the models)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "check_output_dir", "check_output_file"]


def _umask() -> int:
    """Returns the process's umask. Linux shows it in /proc; elsewhere os.umask can only read
    it by setting it, so it is put back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Returns ``path`` when a file can be written there.

    Raises:
        ValueError: when ``path`` is a folder or lies below a file (one sentence naming it and
            ``option``), which would otherwise surface as an OSError half way through.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file to write instead.")
    _check_parents(path, option)
    return path


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Returns ``path`` when a folder is there or can be made there.

    Raises:
        ValueError: when ``path`` is an existing file or lies below a file (one sentence).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; name a new or existing "
                         f"folder instead.")
    _check_parents(path, option)
    return path


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder; choose "
                                 f"another path.")
            return


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename, so a reader (or a
    killed writer) never leaves a half-written file behind. The file gets the permissions a
    plain ``open`` would give it (0o666 less the umask).

    Raises:
        ValueError: when ``path`` is a folder or lies below a file.
    """
    path = check_output_file(path, "the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp's 0600 would hide results from the user's other tools (and group members).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    """Writes ``value`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())
