"""Verify a receipt from the chain alone: signed, included in its epoch, and paid.

Needs only the receipt proof file and read access to the chain: no coordinator database. The
chain is trusted for two facts: a transaction signed by the receipt's coordinator (the vault's
authority) carries the epoch's Merkle root in a Memo, and the same transaction transfers at
least the receipt's provider amount from the vault to the provider's token account.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpool.ledger import merkle
from rigpool.ledger.chain import Chain
from rigpool.ledger.errors import InvalidReceipt
from rigpool.ledger.receipts import ReceiptProof


@dataclass(frozen=True)
class Verified:
    """A verified receipt: the settlement transaction that paid it, and how much it paid."""

    request_id: str
    epoch_id: int
    signature: str
    paid: int


def verify_receipt(
    proof: ReceiptProof, chain: Chain, *, coordinator: str | None = None
) -> Verified:
    """Raise `InvalidReceipt` unless the receipt is signed, included and paid on chain.

    `coordinator` pins the coordinator's public key; without it the receipt's own claim is
    used, which still proves that *that* key's vault paid it.
    """
    body = proof.receipt.body
    proof.receipt.verify()
    if coordinator is not None and body.coordinator != coordinator:
        raise InvalidReceipt(f"receipt is countersigned by {body.coordinator}, not {coordinator}")
    if proof.mint != chain.mint:
        raise InvalidReceipt(f"receipt was paid in mint {proof.mint}, the chain uses {chain.mint}")
    if not merkle.verify(proof.receipt.leaf(), proof.steps(), proof.merkle_root):
        raise InvalidReceipt("the Merkle proof does not lead to the epoch's root")
    vault = chain.token_account(body.coordinator)
    payee = chain.token_account(body.provider)
    prefix = f"rigpool:epoch:{proof.epoch_id}:{proof.merkle_root}:"
    candidates = list(
        dict.fromkeys([*proof.settlement_signatures, *chain.signatures_for_address(payee)])
    )
    for sig in candidates:
        tx = chain.get_transaction(sig)
        if tx is None or not tx.ok or body.coordinator not in tx.signers:
            continue
        if not any(m.startswith(prefix) for m in tx.memos):
            continue
        paid = sum(t.amount for t in tx.transfers if t.source == vault and t.destination == payee)
        if paid >= body.provider_amount and (paid > 0 or body.provider_amount == 0):
            return Verified(body.request_id, proof.epoch_id, sig, paid)
    raise InvalidReceipt(
        f"no settlement transaction on chain pays {body.provider_amount} to {body.provider} "
        f"under epoch {proof.epoch_id} root {proof.merkle_root[:16]}..."
    )
