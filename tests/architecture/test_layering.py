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
