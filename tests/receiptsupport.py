"""Test helpers for receipts as they travel: a ledger receipt both sides signed, on the wire."""

from __future__ import annotations

from datetime import datetime

from rigpool.ledger.receipts import ReceiptBody, SignedReceipt, agent_sign, countersign
from rigpool.protocol.messages import CountersignedReceipt
from rigpool.protocol.signing import Identity


def signed_receipt(request_id: str, *, agent: Identity, coordinator: Identity) -> SignedReceipt:
    """A receipt for `request_id` signed by `agent` and countersigned by `coordinator`."""
    body = ReceiptBody(
        request_id=request_id,
        model="toy",
        prompt_tokens=12,
        completion_tokens=8,
        price_input_per_million=2_000_000,
        price_output_per_million=4_000_000,
        amount=56,
        fee=5,
        provider_amount=51,
        provider=agent.agent_id,
        consumer="alice",
        coordinator=coordinator.agent_id,
        time=datetime(2026, 1, 2, 3, 4, 5, 678901),
    )
    return countersign(body, agent_sign(body, agent), coordinator)


def wire(signed: SignedReceipt) -> CountersignedReceipt:
    """What the coordinator sends: the ledger receipt as a JSON object."""
    return CountersignedReceipt.model_validate(signed.model_dump(mode="json"))
