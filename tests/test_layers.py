"""The house rule of src/openbits: imports go one way, down the floors, and never in a circle.

Every import counts, those inside functions too. A floor may import its own package and any
lower floor; packages on the same floor are strangers to each other (store, bandwidth, identity
and transport know nothing of one another).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "openbits"

#: Floor of every top-level module or package, lowest first; README "How the code is organised".
FLOORS: dict[str, float] = {
    "enums": 0, "errors": 0.5, "uploadprotocol": 0, "version": 0, "locations": 0, "pools": 0, "waiting": 0,
    "shellcompletion": 0, "peer": 0, "ratelog": 0,
    "model": 1,
    "schema": 2,
    "store": 3, "bandwidth": 3, "identity": 3, "transport": 3,
    "events": 4,
    "core": 5,
    "api": 6,
    "daemon": 7,
    "client": 3,
    "cli": 4,
    "server": 1,
    "": 9,  # the package root: the public API, re-exported from the client
}
#: What each side may never reach, whatever the floors say: the client and the command line talk to
#: the daemon over its socket only, and the upload server is a program of its own.
FORBIDDEN: dict[str, set[str]] = {
    "client": {"store", "bandwidth", "identity", "transport", "events", "core", "api", "daemon", "server"},
    "cli": {"store", "bandwidth", "identity", "transport", "events", "core", "api", "daemon", "server"},
    "server": {"model", "schema", "store", "bandwidth", "identity", "transport", "events", "core", "api",
               "daemon", "client", "cli"},
    "daemon": {"client", "cli", "server"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SRC.rglob("*.py")}


def _imports(module: str) -> Iterator[str]:
    """Every openbits module `module` imports (resolved to a module that exists), anywhere in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {module: set(_imports(module)) for module in MODULES}


def test_every_package_has_a_floor() -> None:
    assert {_package(module) for module in MODULES} <= set(FLOORS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    own = _package(module)
    upward = [
        target for target in sorted(GRAPH[module])
        if (other := _package(target)) != own
        and (FLOORS[other] >= FLOORS[own] or other in FORBIDDEN.get(own, set()))
    ]
    assert not upward, f"{module} imports a floor at or above its own, or one it must never reach: {upward}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph`, as the list of its nodes, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycle_between_modules() -> None:
    # A package's __init__ re-exports its modules; that is the package speaking, not a cycle.
    graph = {module: {t for t in targets if not (MODULES[t].name == "__init__.py" and module.startswith(t + "."))}
             for module, targets in GRAPH.items()}
    assert _cycle(graph) is None


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        graph.setdefault(_package(module), set()).update(_package(t) for t in targets if _package(t) != _package(module))
    assert _cycle(graph) is None
