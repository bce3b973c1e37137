"""Dependencies point one way: no import cycle among our modules, imports inside functions counted too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "nas", "latency_models")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _extensions() -> set[str]:
    """Compiled modules (leaves of the graph): built in place by `pip install -e`, or named in setup.py."""
    found = {".".join(f.relative_to(ROOT).parts[:-1] + (f.name.split(".")[0],))
             for pkg in PACKAGES for pattern in ("*.so", "*.pyd") for f in (ROOT / pkg).rglob(pattern)}
    setup = (ROOT / "setup.py").read_text()
    return found | {name for name in ("nas.kernels._C",) if f'"{name}"' in setup}


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The module of ours that `name` lives in (an attribute of a module resolves to that module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> our modules it imports anywhere in its body (top level, functions, TYPE_CHECKING excluded)."""
    mods = _modules()
    leaves = _extensions()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        type_only = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name` imports `mod`
                subs = [f"{base}.{a.name}" for a in node.names]
                names = [s for s in subs if s in mods] + ([base] if any(s not in mods and s not in leaves
                                                                       for s in subs) else [])
            else:
                continue
            for name in names:
                owner = _owner(name, mods)
                if owner and owner != mod:
                    graph[mod].add(owner)
    return graph


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_cycle_finder_sees_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_counts_imports_inside_functions():
    graph = import_graph()
    assert "search_spaces.arch" in graph["search_spaces.encoding"]
    assert all(not m.startswith("nas") for deps in (graph["search_spaces"],) for m in deps)


def test_no_import_cycles_among_our_modules():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layers_point_one_way():
    """search_spaces imports none of nas / latency_models; nas.kernels imports no latency_models or nas above it."""
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("search_spaces"):
            assert not [d for d in deps if not d.startswith("search_spaces")], (mod, deps)
        if mod.startswith("nas.kernels"):
            bad = [d for d in deps if d.startswith("latency_models") or (d.startswith("nas.")
                   and not d.startswith(("nas.kernels", "nas.io", "nas.errors", "nas.checks", "nas.timing")))]

            assert not bad, (mod, bad)
