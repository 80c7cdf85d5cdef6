"""The package's shape: dependencies point one way and nothing imports in a circle.

api -> metrics -> routing -> limits / pricing / upstream -> store -> config, with the call
vocabulary (proxy.call, proxy.errors) at the bottom. The entry points (cli) sit on top;
the simulator is a separate program that only the CLI starts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"
RANK = {
    "call": 0, "errors": 0, "litellm_import": 0, "config": 1, "store": 2,
    "limits": 3, "pricing": 3, "upstream": 3, "routing": 4, "metrics": 5, "api": 6,
    "cli": 7, "cli_cost": 7, "simulate": 7,
}


def _modules() -> dict[str, set[str]]:
    """Each module of proxy/ and the proxy modules it imports (TYPE_CHECKING imports included)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against the package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
                if node.module:  # `from . import x` imports the submodule x, not the package
                    imports.add(module)
                imports.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy"):
                imports.add(node.module)
                imports.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names if alias.name.startswith("proxy"))
        found[name] = imports
    return {name: {i for i in imports if i in found and i not in (name, "proxy")} for name, imports in found.items()}


def _area(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_every_area_has_a_rank():
    assert {_area(m) for m in _modules() if m != "proxy"} <= set(RANK)


def test_no_import_points_up():
    upward = [f"{m} -> {i}" for m, imports in _modules().items() if m != "proxy"
              for i in imports if RANK[_area(i)] > RANK[_area(m)]]
    assert upward == []


@pytest.mark.parametrize("area", sorted(RANK))
def test_no_import_circle(area: str):
    graph = _modules()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 30:
                visit(nxt, path + [nxt])

    for module in [m for m in graph if _area(m) == area]:
        visit(module, [module])
    assert cycles == []


def test_no_context_variables_carry_request_state():
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "contextvars" in p.read_text()]
    assert users == []
