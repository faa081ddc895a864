"""The layout is the architecture: these boundaries are checked, not remembered."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "rigpool"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in modules(package):
        for name in imports_of(path):
            if name.startswith(forbidden):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    return bad


def test_agent_never_imports_the_coordinator_side():
    # The agent ships alone to GPU machines.
    assert not offenders("agent", ("rigpool.coordinator", "rigpool.gateway", "rigpool.ledger"))


def test_only_ledger_solana_imports_solders():
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in SRC.rglob("*.py")
        if "ledger/solana" not in path.as_posix()
        for name in imports_of(path)
        if name.split(".")[0] in ("solders", "solana", "spl")
    ]
    assert not bad


@pytest.mark.parametrize("package", ["core", "hardware", "protocol", "scheduler"])
def test_foundations_are_pure(package):
    forbidden = (
        "rigpool.coordinator", "rigpool.gateway", "rigpool.agent", "rigpool.ledger",
        "rigpool.sim", "rigpool.cli", "fastapi", "httpx", "torch", "websockets",
    )  # fmt: skip
    # The one exception: core/sqlbase.py holds the declarative base every table shares.
    db = () if package == "core" else ("sqlalchemy",)
    assert not offenders(package, forbidden + db)


def test_protocol_does_not_import_the_engine():
    assert not offenders("protocol", ("torch", "transformers", "rigpool.hardware"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """rigpool module -> the rigpool modules it imports, anywhere in the file.

    Imports under TYPE_CHECKING and inside functions count: a cycle hidden that way is still
    two modules that cannot be understood (or moved) one without the other.
    """
    paths = {_module_name(p): p for p in SRC.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from rigpool.x import y` imports module rigpool.x.y when there is one
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    named.add(sub if sub in paths else node.module)
        targets = set()
        for imported in named:
            while imported and imported not in paths:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported.startswith("rigpool."):
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_gateway_sees_the_coordinator_only_through_its_ports():
    # gateway/ports.py declares what a request may reach; coordinator/wiring.py implements it.
    assert not offenders("gateway", ("rigpool.coordinator", "rigpool.devnet", "rigpool.cli"))


#: the composition root: the only modules outside gateway/ that may import the gateway's parts
WIRING = {"coordinator/app.py", "coordinator/wiring.py", "coordinator/state.py"}
#: the ports' own vocabulary, which their implementations (e.g. the request store) may import
PORT_TYPES = ("rigpool.gateway.ports", "rigpool.gateway.request")


def test_only_the_wiring_imports_the_gateway():
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] != "gateway"
        and path.relative_to(SRC).as_posix() not in WIRING
        for name in imports_of(path)
        if name.startswith("rigpool.gateway") and not name.startswith(PORT_TYPES)
    ]
    assert not bad
