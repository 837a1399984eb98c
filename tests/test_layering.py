"""The package's layering, kept by reading every module's imports with ``ast`` (issue 24).

The library (sparsify, methods, schedules, distributions, blocks) needs nothing of the
runner, the study, the inference compiler or the command line; models know no technique;
data knows no model; training knows no study; inference knows neither. And no module imports
one that imports it back, directly or through others. Imports under ``if TYPE_CHECKING:`` do
not run and do not count; imports inside functions do (they run when called).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sparsebench"

LIBRARY = ("sparsify", "methods", "schedules", "distributions", "blocks")
CLI = ("cli", "__main__", "demo", "train.commands", "study.commands", "inference.commands")
#: (importer prefix, imported prefixes it must not use).
RULES = [
    *[(lib, ("train", "study", "inference", *CLI)) for lib in LIBRARY],
    ("models", ("methods",)),
    ("data", ("models",)),
    ("train", ("study",)),
    ("inference", ("train", "study")),
]


@dataclass(frozen=True)
class Edge:
    importer: str  # module names without the package prefix, e.g. "study.report"
    imported: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC / PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Yields the import statements that run (those under ``if TYPE_CHECKING:`` do not)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import,
             known: dict[str, Path]) -> list[str]:
    """Returns the package's modules an import statement loads (without the prefix)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if module else []
            if path.name != "__init__.py":
                base = base[:-1]  # a module's package
            base = base[: len(base) - (node.level - 1)]
            prefix = [PACKAGE, *base]
        else:
            prefix = []
        target = ".".join([*prefix, *(node.module.split(".") if node.module else [])])
        submodules = [f"{target}.{a.name}" for a in node.names]
        # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on the
        # names pkg's __init__ defines, so on pkg itself.
        names = submodules + [target] * any(_local(n) not in known for n in submodules)
    found = [_local(n) for n in names
             if n.startswith(PACKAGE + ".") and _local(n) in known]
    return list(dict.fromkeys(found))


def _local(name: str) -> str:
    return name[len(PACKAGE) + 1:]


def _edges() -> list[Edge]:
    known = _modules()
    edges = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _runtime_imports(tree):
            for imported in _resolve(module, path, node, known):
                if imported != module:
                    edges.append(Edge(module, imported, path, node.lineno))
    return edges


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_import_reader_sees_relative_and_absolute_imports():
    edges = {(e.importer, e.imported) for e in _edges()}
    assert ("sparsify", "methods") in edges  # from .methods import ...
    assert ("train.loop", "sparsify") in edges  # from ..sparsify import ...
    assert ("methods.magnitude", "methods.pruning") in edges  # from .pruning import ...


@pytest.mark.parametrize(("importer", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_a_layer_does_not_import_the_layers_above_it(importer, forbidden):
    broken = [f"{e.where()} imports {PACKAGE}.{e.imported}" for e in _edges()
              if _within(e.importer, importer)
              and any(_within(e.imported, f) for f in forbidden)]
    assert not broken, (f"{importer} must not import {', '.join(forbidden)}:\n  "
                        + "\n  ".join(broken))


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Returns the strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back():
    edges = _edges()
    problems = []
    for component in _cycles(edges):
        inside = [e for e in edges if e.importer in component and e.imported in component]
        problems.append("cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(
            f"{e.where()} imports {e.imported}" for e in inside))
    assert not problems, "\n  ".join(problems)


def test_the_cycle_finder_finds_a_cycle_made_up_by_hand():
    p = Path(SRC / PACKAGE / "x.py")
    edges = [Edge("a", "b", p, 1), Edge("b", "c", p, 2), Edge("c", "a", p, 3),
             Edge("c", "d", p, 4)]
    assert _cycles(edges) == [["a", "b", "c"]]
