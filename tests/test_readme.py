"""The README runs as printed (issues 22 and 23): every ```python block, in order, in one
namespace (as a reader pasting them into one session would), in a scratch folder; every shell
command of its indented blocks names the virtual environment's executables (a fresh shell has
no ``sparsebench`` on PATH), parses with the real command line, names files that exist, and the
cheap ones run for real on copies of the committed stores."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: What a README shell line may start with: the set-up commands and the venv's executables.
PROGRAMS = ("make ", "bash ", ".venv/bin/sparsebench ", ".venv/bin/python ", ".venv/bin/torchrun ")


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


def shell_commands(text: str) -> list[str]:
    """Returns the command lines of a Markdown text's indented (4-space) blocks outside fenced
    blocks, without their trailing comments; a block whose first line is no command (a file
    tree) is skipped."""
    commands, fenced, block = [], False, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("    ") and line.strip():
            block.append(line[4:])
            continue
        if block and re.match(r"[.\w/-]+ ", block[0]) and not block[0].rstrip().endswith("/"):
            commands += block
        block = []
    stripped = (" ".join(shlex.split(c, comments=True)) for c in commands)
    return [c for c in stripped if c]


def test_shell_commands_are_found():
    text = ("x\n\n    make demo    # set up\n    .venv/bin/sparsebench tasks\n\n"
            "```python\n    not = 'a command'\n```\n\n    src/pkg/\n      a.py   file\n")
    assert shell_commands(text) == ["make demo", ".venv/bin/sparsebench tasks"]


def test_every_readme_command_runs_in_a_fresh_shell_and_parses():
    commands = shell_commands(README.read_text())
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        assert command.startswith(PROGRAMS), f"not runnable in a fresh shell: {command}"
        argv = shlex.split(command)
        if argv[0] == ".venv/bin/sparsebench":
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"the command line refuses the README's: {command}")
        elif argv[0] == ".venv/bin/torchrun":
            assert argv[argv.index("-m") + 1] == "sparsebench"
            parser.parse_args(argv[argv.index("-m") + 2:])
        for arg in argv[1:]:  # repository files it reads (outputs aside) exist
            if re.fullmatch(r"(sweeps|benchmarks|results/study|scripts)/[\w./-]+", arg):
                assert (REPO / arg).exists(), f"{command}: {arg} is not in the repository"


def _sparsebench() -> str:
    exe = Path(sys.executable).with_name("sparsebench")
    if not exe.is_file():
        pytest.skip("sparsebench is not installed beside this Python (run `make test`)")
    return str(exe)


CHEAP = ("tasks", "import-published", "status", "report")


@pytest.mark.slow
def test_the_cheap_readme_commands_run(tmp_path):
    """The commands that take seconds, run as printed (with this environment's sparsebench) in
    a scratch copy of the committed stores, in the README's order, so that a report of the
    published runs finds the store the command before it wrote."""
    (tmp_path / "results").mkdir()
    shutil.copytree(REPO / "results" / "study", tmp_path / "results" / "study",
                    ignore=shutil.ignore_patterns("runs", "*.log"))
    ran = []
    for command in shell_commands(README.read_text()):
        argv = shlex.split(command)
        if argv[0] != ".venv/bin/sparsebench" or argv[1] not in CHEAP:
            continue
        stores = [a for flag in ("--store", "--budget") if flag in argv
                  for a in itertools.takewhile(lambda a: not a.startswith("-"),
                                               argv[argv.index(flag) + 1:])]
        if not all((tmp_path / store).exists() or store == "published.db" for store in stores):
            continue  # a placeholder store of the prose (results.db, a.db b.db)
        done = subprocess.run([_sparsebench(), *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        ran.append(argv[1])
    assert {"tasks", "import-published", "report"} <= set(ran)
