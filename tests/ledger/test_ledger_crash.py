"""Crash safety: kill settlement at every fault point, restart, reconcile against the chain.

After recovery every provider holds exactly its earnings on chain (nothing paid twice, nothing
missed) and the audit, including the vault-versus-ledger check, is clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Settler, audit
from rigpool.ledger.faults import POINTS, Faults, InjectedCrash
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import AccountKind
from rigpool.protocol.signing import Identity

K = AccountKind
PROVIDERS = 25  # more than fit in one transaction, so a crash can fall between two


def earn(ledger: Ledger, chain: LiteSVMChain, n: int = PROVIDERS) -> dict[str, int]:
    """A funded consumer and `n` providers with earnings; returns what each must be paid."""
    consumer = Identity.generate()
    chain.fund(consumer.agent_id, 10**9)
    Settler(ledger, chain).confirm_deposit(chain.deposit(consumer.keypair_bytes(), 10**9))
    owed = {}
    for i in range(n):
        provider = Identity.generate().agent_id
        hold = ledger.hold(consumer.agent_id, 10_000, f"h{i}")
        cap = ledger.capture(hold, 1_000 + i, provider, 250, f"c{i}")
        owed[provider] = cap.provider_amount
    return owed


def assert_paid_exactly(ledger: Ledger, chain: LiteSVMChain, owed: dict[str, int]) -> None:
    assert {p: chain.token_balance(p) for p in owed} == owed
    assert audit(ledger, chain) == []
    assert ledger.balance(K.PAYOUT_PENDING, "network") == 0


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("blockhash_expires", [False, True], ids=["same-blockhash", "expired"])
def test_crash_at_each_point_then_recover(
    ledger: Ledger, chain: LiteSVMChain, point: str, blockhash_expires: bool
) -> None:
    # Prepare
    owed = earn(ledger, chain)
    crashing = Settler(ledger, chain, faults=Faults(point))
    # Execute: crash, (time passes), restart
    with pytest.raises(InjectedCrash):
        crashing.settle_epoch("epoch-1")
    if blockhash_expires:
        chain.expire_blockhash()
    restarted = Settler(ledger, chain, faults=Faults(""))
    restarted.recover()
    restarted.settle_epoch("epoch-1")  # the retry replays the epoch key, then pays the rest
    # Assert
    assert_paid_exactly(ledger, chain, owed)


def test_audit_reports_unreconciled_intents(ledger: Ledger, chain: LiteSVMChain) -> None:
    earn(ledger, chain, 3)
    with pytest.raises(InjectedCrash):
        Settler(ledger, chain, faults=Faults("settle.after_send")).settle_epoch("e")
    assert any("not reconciled" in p for p in audit(ledger, chain))


def test_env_var_arms_a_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGPOOL_FAULT", "settle.before_send")
    assert Faults().armed == {"settle.before_send"}
    with pytest.raises(ValueError, match="unknown fault point"):
        Faults("settle.nowhere")


CRASHING_PROCESS = """
import sys
from pathlib import Path
from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Settler
from rigpool.ledger.solana import LiteSVMChain
key, db, journal = bytes.fromhex(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
chain = LiteSVMChain(key, journal=journal)
Settler(Ledger(open_database(db)), chain).settle_epoch("epoch-1")
"""


@pytest.mark.slow
def test_killed_process_recovers_from_the_chain_journal(
    tmp_path: Path, coordinator_key: Identity
) -> None:
    # Prepare: a database and a persistent embedded chain shared by two processes
    db, journal = "sqlite:///" + str(tmp_path / "c.db"), tmp_path / "chain.jsonl"
    chain = LiteSVMChain(coordinator_key.keypair_bytes(), journal=journal)
    owed = earn(Ledger(open_database(db)), chain)
    env = {**os.environ, "RIGPOOL_FAULT": "settle.after_send", "RIGPOOL_FAULT_MODE": "exit"}
    # Execute: the coordinator dies right after its first payout transaction landed
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_PROCESS,
            coordinator_key.keypair_bytes().hex(),
            db,
            str(journal),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 75, done.stderr.decode()
    restarted_chain = LiteSVMChain(coordinator_key.keypair_bytes(), journal=journal)
    ledger = Ledger(open_database(db))
    report = Settler(ledger, restarted_chain, faults=Faults("")).recover()
    Settler(ledger, restarted_chain, faults=Faults("")).flush()
    # Assert: the landed transaction was confirmed from the chain; the signed but unsent ones
    # (their blockhash still valid on the replayed chain) were sent once; all paid exactly once
    assert report.confirmed and report.requeued == 0
    assert_paid_exactly(ledger, restarted_chain, owed)
