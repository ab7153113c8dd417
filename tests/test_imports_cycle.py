"""ndt_store's modules import one way: no module reaches itself through its imports.

Every ``import`` statement of the package is followed, including imports inside
functions (lazy imports still form a cycle when both ends run) and type-only
imports. ``from ndt_store.x import name`` counts as an import of
``ndt_store.x.name`` when that is a module, else of ``ndt_store.x``. The implicit
import of a parent package (importing ``ndt_store.store`` runs
``ndt_store/__init__.py`` first) is not an edge: only written imports are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ndt_store

PACKAGE = Path(ndt_store.__file__).parent


def _modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, mods: set[str]):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        here = here[: len(here) - node.level + 1]
        base = ".".join([*here, base] if base else here)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the package modules it imports anywhere in its source."""
    mods = _modules(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node, set(mods)):
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]  # an attribute of a module
                if target in mods and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle_in_ndt_store() -> None:
    graph = import_graph()
    assert "ndt_store.store" in graph and "ndt_store._catalog" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_store_and_catalog_build_on_entries_not_on_each_other() -> None:
    graph = import_graph()
    assert "ndt_store.store" not in graph["ndt_store._catalog"]
    assert "ndt_store._entries" in graph["ndt_store._catalog"]
    assert "ndt_store._entries" in graph["ndt_store.store"]


def test_the_walker_finds_lazy_and_relative_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    assert find_cycle(import_graph(pkg)) is None
