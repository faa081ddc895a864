"""Money: a double-entry ledger with holds, stakes, slashes, receipts and Solana settlement.

Ledger      every movement one balanced, idempotent database transaction (ledger.py)
pricing     prices per million tokens -> integer costs; the network fee
receipts    agent-signed, coordinator-countersigned receipts; merkle trees over epochs
Settler     queued payouts -> chain transactions, crash-safe (settlement.py)
audit       every invariant, in plain words
solana/     the only package that imports solders / solana-py (LiteSVM and RPC chains)
"""

from rigpool.ledger.audit import audit
from rigpool.ledger.ledger import Capture, EpochClose, Ledger
from rigpool.ledger.pricing import Price, network_fee
from rigpool.ledger.receipts import (
    ReceiptBody,
    ReceiptProof,
    SignedReceipt,
    agent_sign,
    countersign,
)
from rigpool.ledger.settlement import Settler
from rigpool.ledger.verify import verify_receipt

__all__ = [
    "Capture",
    "EpochClose",
    "Ledger",
    "Price",
    "ReceiptBody",
    "ReceiptProof",
    "Settler",
    "SignedReceipt",
    "agent_sign",
    "audit",
    "countersign",
    "network_fee",
    "verify_receipt",
]
