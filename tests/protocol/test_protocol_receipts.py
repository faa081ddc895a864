"""Protocol 1.6: the receipt frames, and checking a countersigned receipt without the ledger.

The receipts here are made by the ledger's own `agent_sign`/`countersign`, so the protocol's
check (what the agent runs) is tested against what the coordinator really produces.
"""

from __future__ import annotations

import json

import pytest

import receiptsupport
from receiptsupport import wire
from rigpool.ledger.receipts import COORDINATOR_DOMAIN, SignedReceipt
from rigpool.protocol.messages import (
    PROTOCOL_VERSION,
    RECEIPT_COORDINATOR_DOMAIN,
    RECEIPTS_VERSION,
    ReceiptCountersigned,
    ReceiptRefusal,
    Receipts,
    ReceiptsAck,
    Welcome,
    at_least,
    decode_agent_frame,
    decode_coordinator_frame,
    encode,
)
from rigpool.protocol.receipts import canonical_body, receipt_problem
from rigpool.protocol.signing import Identity

AGENT = Identity.generate()
COORDINATOR = Identity.generate()


def signed_receipt(
    request_id: str = "cmpl-1", *, agent: Identity = AGENT, coordinator: Identity = COORDINATOR
) -> SignedReceipt:
    return receiptsupport.signed_receipt(request_id, agent=agent, coordinator=coordinator)


def test_version_1_6_has_the_receipt_frames():
    assert RECEIPTS_VERSION == "1.6"
    assert at_least(PROTOCOL_VERSION, RECEIPTS_VERSION)
    assert not at_least("1.5", RECEIPTS_VERSION)


def test_the_coordinator_domain_is_the_ledgers():
    assert RECEIPT_COORDINATOR_DOMAIN == COORDINATOR_DOMAIN


def test_receipt_frames_round_trip():
    receipt = wire(signed_receipt())
    handed = ReceiptCountersigned(attempt_id="cmpl-1.1", receipt=receipt)
    assert decode_coordinator_frame(encode(handed)) == handed
    presented = Receipts(receipts=[receipt, wire(signed_receipt("cmpl-2"))])
    assert decode_agent_frame(encode(presented)) == presented
    ack = ReceiptsAck(
        durable=["cmpl-1"], refused=[ReceiptRefusal(request_id="x", reason="bad")], note=""
    )
    assert decode_coordinator_frame(encode(ack)) == ack
    # what travels is what the ledger reads back, signatures intact
    decoded = decode_agent_frame(encode(presented))
    assert isinstance(decoded, Receipts)
    again = SignedReceipt.model_validate(decoded.receipts[0].model_dump())
    again.verify()
    assert again == signed_receipt()


def test_old_and_new_peers_ignore_what_they_do_not_know():
    # a 1.5 welcome (no coordinator_id) decodes with the default
    old = json.dumps({"type": "welcome", "protocol_version": "1.5", "agent_id": "a" * 32})
    welcome = decode_coordinator_frame(old)
    assert isinstance(welcome, Welcome) and welcome.coordinator_id == ""
    # a later version's extra fields are ignored
    newer = json.dumps({"type": "receipts_ack", "durable": ["r"], "someday": 1})
    assert decode_coordinator_frame(newer) == ReceiptsAck(durable=["r"])


def test_an_empty_or_oversized_presentation_is_refused():
    from rigpool.protocol.messages import MAX_RECEIPTS_PER_FRAME, ProtocolError

    with pytest.raises(ProtocolError):
        decode_agent_frame(json.dumps({"type": "receipts", "receipts": []}))
    many = [wire(signed_receipt(f"r{i}")).model_dump() for i in range(MAX_RECEIPTS_PER_FRAME + 1)]
    with pytest.raises(ProtocolError):
        decode_agent_frame(json.dumps({"type": "receipts", "receipts": many}))


def test_canonical_body_is_the_bytes_the_ledger_signs():
    signed = signed_receipt()
    assert canonical_body(wire(signed).body) == signed.body.canonical()


def test_a_genuine_receipt_passes():
    assert receipt_problem(wire(signed_receipt()), provider=AGENT.agent_id) is None


def test_both_signatures_are_checked():
    good = wire(signed_receipt())
    # the body altered after signing: the agent's signature no longer covers it
    tampered = good.model_copy(update={"body": {**good.body, "completion_tokens": 7}})
    assert "agent signature" in (receipt_problem(tampered, provider=AGENT.agent_id) or "")
    # the agent's signature swapped for another of its signatures (another receipt's)
    other = wire(signed_receipt("cmpl-other"))
    swapped = good.model_copy(update={"agent_signature": other.agent_signature})
    assert "agent signature" in (receipt_problem(swapped, provider=AGENT.agent_id) or "")
    # a countersignature that is not the named coordinator's
    forged = wire(signed_receipt(coordinator=Identity.generate()))
    forged = forged.model_copy(update={"body": {**forged.body}})
    bad_counter = good.model_copy(update={"coordinator_signature": forged.coordinator_signature})
    assert "countersignature" in (receipt_problem(bad_counter, provider=AGENT.agent_id) or "")
    # amounts that do not add up are refused before any signature is checked
    skewed = good.model_copy(update={"body": {**good.body, "fee": 6}})
    assert "amounts" in (receipt_problem(skewed, provider=AGENT.agent_id) or "")


def test_a_receipt_for_another_provider_is_not_ours():
    theirs = wire(signed_receipt(agent=Identity.generate()))
    assert "another provider" in (receipt_problem(theirs, provider=AGENT.agent_id) or "")
