"""The README's Python examples run as printed: every ```python block, in order, in one
namespace (as a reader pasting them into one session would), in a scratch folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """Returns the bodies of the ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("a\n```python\nx = 1\n```\nb\n```\nnot python\n```\n```python\ny\n```\n")
    assert blocks == ["x = 1\n", "y\n"]


def test_the_readme_python_blocks_run_as_printed(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2  # the library and sparse inference
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - name the block that failed
            pytest.fail(f"README python block {index + 1} failed: {error!r}\n{block}")
    out = capsys.readouterr().out
    assert "total" in out and "FLOPs" in out  # the sparsity report's table was printed
    assert (tmp_path / "model.sparse.safetensors").is_file()
