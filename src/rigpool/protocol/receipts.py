"""Checking a countersigned receipt with nothing but the protocol (what an agent can do).

The ledger (`rigpool.ledger.receipts`) defines receipts and checks them where money moves; the
agent ships without the ledger, yet must not keep a receipt it cannot later prove. The bytes
both signatures cover are the body's canonical JSON (sorted keys, no spaces, ASCII), which a
body kept as a plain JSON object reproduces exactly:

- the agent signs RECEIPT_AGENT_DOMAIN + canonical body;
- the coordinator signs RECEIPT_COORDINATOR_DOMAIN + canonical body + b"|" + agent signature.
"""

from __future__ import annotations

import json
from typing import Any

from rigpool.protocol.messages import (
    RECEIPT_AGENT_DOMAIN,
    RECEIPT_COORDINATOR_DOMAIN,
    CountersignedReceipt,
)
from rigpool.protocol.signing import verify


def canonical_body(body: dict[str, Any]) -> bytes:
    """The bytes a receipt's signatures cover (as the ledger's `ReceiptBody.canonical`)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def countersigned_message(canonical: bytes, agent_signature: str) -> bytes:
    """What the coordinator signs: the canonical body and the agent's signature."""
    return RECEIPT_COORDINATOR_DOMAIN + canonical + b"|" + agent_signature.encode()


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return value if type(value) is int and value >= 0 else None


def receipt_problem(receipt: CountersignedReceipt, *, provider: str) -> str | None:
    """Why `receipt` is not a valid countersigned receipt for `provider`, or None when it is.

    Checks that the body names `provider` and a coordinator, that its amounts add up
    (provider_amount + fee == amount), that the agent's signature is `provider`'s over exactly
    this body (so it is the body the agent signed), and that the countersignature is the named
    coordinator's over the body and that signature.
    """
    body = receipt.body
    if not receipt.request_id:
        return "the receipt has no request id"
    if body.get("provider") != provider:
        return "the receipt names another provider"
    coordinator = body.get("coordinator")
    if not isinstance(coordinator, str) or not coordinator:
        return "the receipt names no coordinator"
    amount, fee, share = _int(body, "amount"), _int(body, "fee"), _int(body, "provider_amount")
    if amount is None or fee is None or share is None or share + fee != amount:
        return "the receipt's amounts do not add up"
    canonical = canonical_body(body)
    if not verify(provider, RECEIPT_AGENT_DOMAIN + canonical, receipt.agent_signature):
        return "bad agent signature (not the body this agent signed)"
    countersigned = countersigned_message(canonical, receipt.agent_signature)
    if not verify(coordinator, countersigned, receipt.coordinator_signature):
        return "bad coordinator countersignature"
    return None
