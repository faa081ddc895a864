"""Deposits, settlement and receipt verification against a real Solana runtime (LiteSVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rigpool.ledger import Ledger, Settler, audit, verify_receipt
from rigpool.ledger.errors import DuplicateDeposit, InvalidReceipt
from rigpool.ledger.receipts import ReceiptProof
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import AccountKind
from rigpool.protocol.signing import Identity

K = AccountKind


def serve(
    ledger: Ledger, consumer: Identity, provider: Identity, request_id: str, make_receipt
) -> None:  # type: ignore[no-untyped-def]
    """What the gateway does for one request: hold, capture, record the receipt."""
    receipt = make_receipt(request_id, provider, consumer.agent_id)
    hold = ledger.hold(consumer.agent_id, receipt.body.amount * 2, f"{request_id}/hold")
    cap = ledger.capture(hold, receipt.body.amount, provider.agent_id, 500, f"{request_id}/cap")
    assert cap.provider_amount == receipt.body.provider_amount
    ledger.record_receipt(receipt)


def test_deposit_is_credited_from_the_chain_exactly_once(
    ledger: Ledger, chain: LiteSVMChain
) -> None:
    consumer = Identity.generate()
    chain.fund(consumer.agent_id, 5_000)
    settler = Settler(ledger, chain)
    signature = chain.deposit(consumer.keypair_bytes(), 3_000)

    settler.confirm_deposit(signature)

    assert ledger.balance(K.CONSUMER, consumer.agent_id) == 3_000
    with pytest.raises(DuplicateDeposit):
        settler.confirm_deposit(signature)
    assert chain.vault_balance() == 3_000
    assert audit(ledger, chain) == []


def test_epoch_settlement_packs_transfers_and_receipts_verify(
    ledger: Ledger,
    chain: LiteSVMChain,
    make_receipt,
    tmp_path: Path,
    coordinator_key: Identity,  # type: ignore[no-untyped-def]
) -> None:
    # Prepare: one consumer, 30 providers, a receipt each
    consumer = Identity.generate()
    chain.fund(consumer.agent_id, 1_000_000)
    settler = Settler(ledger, chain)
    settler.confirm_deposit(chain.deposit(consumer.keypair_bytes(), 1_000_000))
    providers = [Identity.generate() for _ in range(30)]
    for i, p in enumerate(providers):
        serve(ledger, consumer, p, f"req-{i}", make_receipt)

    # Execute
    settlement = settler.settle_epoch("epoch-1")

    # Assert: several transfers per transaction, everyone paid, books match the chain
    assert settlement.epoch.payout_count == 30
    assert len(settlement.signatures) < 30
    for p in providers:
        assert chain.token_balance(p.agent_id) == make_receipt("x", p, "c").body.provider_amount
    assert audit(ledger, chain) == []
    proof = settler.receipt_proof("req-7")
    proof.write(tmp_path / "r.json")
    verified = verify_receipt(
        ReceiptProof.read(tmp_path / "r.json"), chain, coordinator=coordinator_key.agent_id
    )
    assert verified.signature in settlement.signatures


def test_forged_or_unpaid_receipts_do_not_verify(
    ledger: Ledger,
    chain: LiteSVMChain,
    make_receipt,
    coordinator_key: Identity,  # type: ignore[no-untyped-def]
) -> None:
    consumer, provider = Identity.generate(), Identity.generate()
    chain.fund(consumer.agent_id, 10_000)
    settler = Settler(ledger, chain)
    settler.confirm_deposit(chain.deposit(consumer.keypair_bytes(), 10_000))
    serve(ledger, consumer, provider, "a", make_receipt)
    serve(ledger, consumer, provider, "b", make_receipt)
    settler.settle_epoch("e1")
    proof = settler.receipt_proof("a")

    inflated = proof.receipt.body.model_copy(
        update={"provider_amount": 10**6, "amount": 10**6 + proof.receipt.body.fee}
    )
    with pytest.raises(InvalidReceipt):
        verify_receipt(
            proof.model_copy(
                update={"receipt": proof.receipt.model_copy(update={"body": inflated})}
            ),
            chain,
        )
    wrong_root = proof.model_copy(update={"merkle_root": "00" * 32})
    with pytest.raises(InvalidReceipt, match="Merkle"):
        verify_receipt(wrong_root, chain)
    with pytest.raises(InvalidReceipt, match="countersigned"):
        verify_receipt(proof, chain, coordinator=Identity.generate().agent_id)
    other_chain = LiteSVMChain(coordinator_key.keypair_bytes())  # same mint, no settlement on it
    with pytest.raises(InvalidReceipt, match="no settlement"):
        verify_receipt(proof, other_chain)
    assert verify_receipt(proof, chain).paid >= proof.receipt.body.provider_amount


def test_withdrawal_reaches_the_wallet(ledger: Ledger, chain: LiteSVMChain) -> None:
    consumer = Identity.generate()
    chain.fund(consumer.agent_id, 1_000)
    settler = Settler(ledger, chain)
    settler.confirm_deposit(chain.deposit(consumer.keypair_bytes(), 1_000))
    ledger.withdraw(consumer.agent_id, 400, "w1")
    settler.flush()
    assert chain.token_balance(consumer.agent_id) == 400
    assert ledger.balance(K.CONSUMER, consumer.agent_id) == 600
    assert audit(ledger, chain) == []


def test_journaled_chain_survives_a_restart(tmp_path: Path, coordinator_key: Identity) -> None:
    journal = tmp_path / "chain.jsonl"
    chain = LiteSVMChain(coordinator_key.keypair_bytes(), journal=journal)
    wallet = Identity.generate()
    chain.fund(wallet.agent_id, 77)
    sig = chain.deposit(wallet.keypair_bytes(), 70)

    reopened = LiteSVMChain(coordinator_key.keypair_bytes(), journal=journal)

    assert reopened.mint == chain.mint
    assert reopened.vault_balance() == 70
    assert reopened.token_balance(wallet.agent_id) == 7
    found = reopened.get_transaction(sig)
    assert found is not None and found.transfers[0].amount == 70
