"""`rigpool ledger audit/settle` and `rigpool receipt verify` over a journaled embedded chain."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from rigpool.cli.ledger import ledger_app, receipt_app
from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Settler
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import Account
from rigpool.protocol.signing import Identity

runner = CliRunner()


def test_settle_audit_and_verify_from_the_command_line(
    tmp_path: Path, make_receipt, coordinator_key: Identity
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a served request on a persistent embedded chain
    db, journal, key = (
        f"sqlite:///{tmp_path}/c.db",
        tmp_path / "chain.jsonl",
        tmp_path / "coord.json",
    )
    key.write_text(json.dumps(list(coordinator_key.keypair_bytes())))
    chain = LiteSVMChain(coordinator_key.keypair_bytes(), journal=journal)
    ledger = Ledger(open_database(db))
    consumer, provider = Identity.generate(), Identity.generate()
    chain.fund(consumer.agent_id, 10_000)
    Settler(ledger, chain).confirm_deposit(chain.deposit(consumer.keypair_bytes(), 10_000))
    receipt = make_receipt("req-1", provider, consumer.agent_id)
    hold = ledger.hold(consumer.agent_id, 1_000, "h")
    ledger.capture(hold, receipt.body.amount, provider.agent_id, 500, "c")
    ledger.record_receipt(receipt)
    chain_args = ["--chain-journal", str(journal), "--coordinator-key", str(key), "--db", db]

    # Execute + Assert
    settled = runner.invoke(ledger_app, ["settle", *chain_args])
    assert settled.exit_code == 0, settled.output
    assert "1 payouts" in settled.output
    audited = runner.invoke(ledger_app, ["audit", *chain_args])
    assert audited.exit_code == 0, audited.output
    assert "vault matches chain" in audited.output

    proof_file = tmp_path / "receipt.json"
    reopened = LiteSVMChain(None, journal=journal)  # read-only: no secret needed to verify
    Settler(ledger, reopened).receipt_proof("req-1").write(proof_file)
    verified = runner.invoke(
        receipt_app,
        [
            "verify",
            str(proof_file),
            "--chain-journal",
            str(journal),
            "--coordinator",
            coordinator_key.agent_id,
        ],
    )
    assert verified.exit_code == 0, verified.output
    assert "paid" in verified.output

    forged = json.loads(proof_file.read_text())
    forged["receipt"]["body"]["completion_tokens"] += 1
    proof_file.write_text(json.dumps(forged))
    refused = runner.invoke(
        receipt_app, ["verify", str(proof_file), "--chain-journal", str(journal)]
    )
    assert refused.exit_code == 1

    with ledger.sessions() as s, s.begin():
        s.execute(update(Account).where(Account.kind == "treasury").values(balance=10**6))
    broken = runner.invoke(ledger_app, ["audit", "--db", db])
    assert broken.exit_code == 1
    assert "not 0" in broken.output
