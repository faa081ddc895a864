"""Money: a double-entry ledger with holds, stakes, slashes, receipts and Solana settlement.

Ledger      every movement one balanced, idempotent database transaction (ledger.py)
book        the escrow hot path (hold, capture, release, receipts, recovery) applied in bulk
GroupCommit many units of work per transaction, each told once durable (group_commit.py)
EscrowWriter the ledger's escrow operations through one GroupCommit (writer.py)
pricing     prices per million tokens -> integer costs; the network fee
receipts    agent-signed, coordinator-countersigned receipts; merkle trees over epochs
Settler     queued payouts -> chain transactions, crash-safe (settlement.py)
audit       every invariant, in plain words
solana/     the only package that imports solders / solana-py (LiteSVM and RPC chains)
"""

from rigpool.ledger.audit import audit
from rigpool.ledger.book import Recovery, capture_key, hold_key, release_key
from rigpool.ledger.group_commit import GroupCommit, WriterStopped
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
from rigpool.ledger.writer import EscrowWriter

__all__ = [
    "Capture",
    "EpochClose",
    "EscrowWriter",
    "GroupCommit",
    "Ledger",
    "Price",
    "ReceiptBody",
    "ReceiptProof",
    "Recovery",
    "Settler",
    "SignedReceipt",
    "WriterStopped",
    "agent_sign",
    "audit",
    "capture_key",
    "countersign",
    "hold_key",
    "network_fee",
    "release_key",
    "verify_receipt",
]
