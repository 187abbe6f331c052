"""The layer table of CONTRIBUTING.md holds: no module imports a higher layer, and the imports
between modules (those made inside functions included) form no cycle.

Layers, bottom to top: core -> model, augment -> data, objectives -> eval -> train, serve ->
report -> cli -> the package root (its lazy ``contrasent.Encoder``). Imports are read from the
source (AST), so an import hidden in a function counts like one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "contrasent"
LAYERS = {
    "core": 0,
    "model": 1,
    "augment": 1,
    "data": 2,
    "objectives": 2,
    "eval": 3,
    "train": 4,
    "serve": 4,
    "report": 5,
    "cli": 6,
    "": 7,  # contrasent/__init__.py
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("contrasent", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def _target(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: None if is_package else -1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str) -> set[str]:
    """Every contrasent module that ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _target(node, module, path.name == "__init__.py")
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_package_has_a_layer() -> None:
    for module in MODULES:
        layer(module)  # KeyError for a package missing from the table (and CONTRIBUTING.md)


def test_no_module_imports_a_higher_layer() -> None:
    bad = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, targets in sorted(GRAPH.items())
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions() -> None:
    """An import inside a method is an edge too: Encoder.save imports the card lazily."""
    source = MODULES["contrasent.model.encoder"].read_text()
    top_level = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all("card" not in (getattr(n, "module", "") or "") for n in top_level)
    assert "contrasent.model.card" in GRAPH["contrasent.model.encoder"]
