"""A sweep as it enters: the file read, every field checked (``spec``), then every point
resolved to a run configuration (``plan``), so a bad value fails before anything trains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...train.config import read_yaml, yaml_number
from .plan import validate_points
from .spec import SweepError, SweepSpec, parse_spec

__all__ = ["load_sweep", "parse_sweep"]


def parse_sweep(values: Mapping[str, Any], *, name: str = "sweep", text: str = "") -> SweepSpec:
    """Returns the validated sweep of a parsed YAML mapping.

    Raises:
        SweepError: one sentence naming the field, the value and what is allowed.
    """
    spec = parse_spec(values, name=name, text=text)
    validate_points(spec)
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    """Returns the validated sweep in a YAML file (its name defaults to the file's stem).

    Raises:
        SweepError: for a missing file, bad YAML or a bad field (one sentence).
    """
    path = Path(path)
    try:
        values, text = read_yaml(path, "sweep file")
    except (OSError, ValueError) as error:
        raise SweepError(str(error)) from None
    try:
        return parse_sweep(yaml_number(values), name=path.stem, text=text)
    except SweepError as error:
        raise SweepError(f"{path}: {error}") from None
