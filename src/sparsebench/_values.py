"""Plain values (YAML, JSON, keyword arguments) turned into a config field's declared type, or
one sentence naming the key, the value and what is allowed. Shared by the run configuration
and every technique's Config, so both read a value the same way; it imports nothing from the
package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["coerce", "fail"]

_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number",
             "str": "a string"}


def fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key} = {value!r} is invalid: it must be {allowed}.")


def _text(annotation: Any) -> str:
    """Returns an annotation as text: ``int`` and ``"int"`` both as "int"."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.Optional[float]", "float | None")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Returns ``value`` as the field's type (an int is a fine float, an integral float a fine
    int, a single string a fine list of one), or raises one sentence. Types this does not know
    (e.g. a technique's ``tuple[int, int]`` block) pass through for the owner to check."""
    text = _text(annotation)
    base = text.removesuffix(" | None")
    if value is None:
        if "None" in text:
            return None
        fail(key, value, _EXPECTED.get(base, f"a value of type {text}"))
    if base == "bool":
        if isinstance(value, bool):
            return value
        fail(key, value, "true or false")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(key, value, "an integer")
    if base == "float":
        if _is_number(value):
            return float(value)
        fail(key, value, "a number")
    if text == "int | float":
        if _is_number(value):
            return value
        fail(key, value, "a step (integer) or a fraction of the run (float)")
    if base == "str":
        if isinstance(value, str):
            return value
        fail(key, value, "a string")
    if text.startswith("str |") and "dict" in text:
        return _name_or_mapping(key, value)
    if text.startswith("tuple[float"):
        if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        fail(key, value, "a list of numbers")
    if text.startswith("list"):
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        fail(key, value, "a list of name patterns")
    if text.startswith("dict"):
        if isinstance(value, Mapping):
            return dict(value)
        fail(key, value, "a mapping")
    return value


def _name_or_mapping(key: str, value: Any) -> Any:
    """A distribution name, or a mapping of name patterns to sparsities."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if not all(_is_number(v) for v in value.values()):
            fail(key, value, "a distribution name or a mapping of patterns to sparsities")
        return {str(k): float(v) for k, v in value.items()}
    fail(key, value, "a string")
