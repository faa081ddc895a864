"""trust/ stays importable where it is needed: no coordinator/gateway, no torch in pure parts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TRUST = Path(__file__).resolve().parents[2] / "src" / "rigpool" / "trust"
PURE = ["attestation", "toploc", "verification", "sampling", "metering", "reputation", "evidence"]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_trust_never_imports_the_coordinator_gateway_or_agent():
    bad = [
        f"{p.name} imports {name}"
        for p in TRUST.glob("*.py")
        for name in imports_of(p)
        if name.startswith(
            ("rigpool.coordinator", "rigpool.gateway", "rigpool.agent", "rigpool.ledger")
        )
    ]
    assert not bad


def test_pure_modules_load_without_torch():
    code = (
        "import sys\n"
        + "".join(f"import rigpool.trust.{m}\n" for m in PURE)
        + "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
