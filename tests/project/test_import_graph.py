"""The package's import graph: no cycle between modules or sub-packages (every import counted, also
those inside functions), and the layers point one way: inference (``pipeline``) imports nothing
from training, serving or live mode; live mode nothing from serving.

The graph is read from the source (``ast``), not by importing: ``from a.b import c`` is an edge to
``a.b.c`` when that is a module, else to ``a.b``; a sub-package is a folder directly under
``lipsync_jax/`` (or ``data_prep`` itself), a top-level module is its own node.
"""

from __future__ import annotations

import ast
import os

from tests.helpers.paths import ROOT

PACKAGES = ("lipsync_jax", "data_prep")


def module_files() -> dict[str, str]:
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def import_edges(modules: dict[str, str]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
                targets = [n for n in names if n in modules] or [base]  # a submodule, else the module itself
                if any(n not in modules for n in names):
                    targets.append(base)
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != module:
                    edges[module].add(resolved)
    return edges


def node_of(module: str) -> str:
    """The sub-package a module belongs to (``lipsync_jax.pipeline``), or the module itself."""
    parts = module.split(".")
    if parts[0] == "data_prep":
        return "data_prep"
    if len(parts) >= 2 and os.path.isdir(os.path.join(ROOT, parts[0], parts[1])):
        return ".".join(parts[:2])
    return module


def cycles(nodes, edges) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules_or_subpackages():
    modules = module_files()
    edges = import_edges(modules)
    assert cycles(modules, edges) == []
    package_edges: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if node_of(a) != node_of(b):
                package_edges.setdefault(node_of(a), set()).add(node_of(b))
    assert cycles({node_of(m) for m in modules}, package_edges) == []


def test_layers_point_one_way():
    edges = import_edges(module_files())
    forbidden = {"lipsync_jax.pipeline": ("lipsync_jax.train", "lipsync_jax.serving", "lipsync_jax.live"),
                 "lipsync_jax.live": ("lipsync_jax.serving", "lipsync_jax.train"),
                 "lipsync_jax.models": ("lipsync_jax.pipeline", "lipsync_jax.train", "lipsync_jax.serving")}
    wrong = [(a, b) for a, targets in edges.items() for b in targets
             for layer, banned in forbidden.items() if node_of(a) == layer and node_of(b) in banned]
    assert wrong == []


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path):
    """A tiny package with a cycle through an import inside a function is reported."""
    modules = {"pkg.a": str(tmp_path / "a.py"), "pkg.b": str(tmp_path / "b.py")}
    (tmp_path / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "b.py").write_text("def thing():\n    from pkg import a\n    return a\n")
    (tmp_path / "__init__.py").write_text("")
    edges = import_edges({**modules, "pkg": str(tmp_path / "__init__.py")})
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.a"}
    assert cycles(modules, edges) == [["pkg.a", "pkg.b"]]
