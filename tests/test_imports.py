"""No import cycles among loaderlab's modules: each imports only what sits below it. Imports inside
functions count (they still tie the modules together); those under `if TYPE_CHECKING:` do not."""

from __future__ import annotations

import ast
from pathlib import Path

import loaderlab

PACKAGE = Path(loaderlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> list[str]:
    """Every module name an import statement in the tree names, outside `if TYPE_CHECKING:` blocks."""
    names: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        ):
            names += [n for child in node.orelse for n in imported(ast.Module(body=[child], type_ignores=[]))]
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        names += imported(node)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target in imported(ast.parse(path.read_text())):
            while target and target not in modules:  # `from a.b import c`: c may be a name in a.b
                target = target.rpartition(".")[0]
            if target not in (None, "", name, "loaderlab"):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_loaderlab_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["loaderlab.training.run"]  # the walk found the package
    assert cycles(graph) == []


def test_the_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
