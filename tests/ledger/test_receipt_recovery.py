"""`Ledger.recover_from_receipt`: a countersigned receipt makes the ledger whole, exactly once.

The capture of a served request may not reach the database (group commit, then a crash). The
agent holds the countersigned receipt; presented later, it captures the hold, or charges the
consumer when start-up recovery already released it, or finds the capture and moves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.recovery import recover_interrupted
from rigpool.ledger import Ledger, SignedReceipt, audit, capture_key, hold_key
from rigpool.ledger.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidReceipt,
)
from rigpool.ledger.tables import AccountKind
from rigpool.protocol.signing import Identity

K = AccountKind
CONSUMER = "consumer-1"
PROVIDER = Identity.generate()
FEE_BPS = 500  # the fixture's receipts: amount 160, fee 8, provider 152


@pytest.fixture
def book(db: sessionmaker[Session]) -> Ledger:
    ledger = Ledger(db)
    ledger.credit_deposit(CONSUMER, 10_000, "1" * 88)
    return ledger


def money(ledger: Ledger) -> dict[str, int]:
    return {
        "consumer": ledger.balance(K.CONSUMER, CONSUMER),
        "held": ledger.balance(K.CONSUMER_HOLD, CONSUMER),
        "provider": ledger.balance(K.PROVIDER_EARNINGS, PROVIDER.agent_id),
        "treasury": ledger.balance(K.TREASURY, "network"),
    }


def served(
    ledger: Ledger, make_receipt: Callable[..., SignedReceipt], rid: str = "req-1"
) -> tuple[int, SignedReceipt]:
    """A request whose hold is durable and whose receipt was countersigned."""
    hold_id = ledger.hold(CONSUMER, 1_000, hold_key(rid))
    return hold_id, make_receipt(rid, PROVIDER, CONSUMER)


def test_a_lost_capture_is_captured_from_the_receipt_once(
    book: Ledger, make_receipt: Callable[..., SignedReceipt], coordinator_key: Identity
) -> None:
    _, receipt = served(book, make_receipt)
    first = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert (first.action, first.charged, first.receipt_recorded) == ("captured", 160, True)
    assert money(book) == {"consumer": 9_840, "held": 0, "provider": 152, "treasury": 8}
    again = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert (again.action, again.receipt_recorded) == ("already_captured", False)
    assert money(book) == {"consumer": 9_840, "held": 0, "provider": 152, "treasury": 8}
    assert audit(book) == []


def test_a_hold_released_at_restart_is_charged_from_the_balance(
    book: Ledger,
    db: sessionmaker[Session],
    make_receipt: Callable[..., SignedReceipt],
    coordinator_key: Identity,
) -> None:
    _, receipt = served(book, make_receipt)
    assert recover_interrupted(db) == (0, 1)  # the restart gives the hold back
    assert money(book)["consumer"] == 10_000
    result = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert (result.action, result.charged) == ("charged", 160)
    assert money(book) == {"consumer": 9_840, "held": 0, "provider": 152, "treasury": 8}
    again = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert again.action == "already_captured"
    assert money(book)["consumer"] == 9_840
    assert audit(book) == []


def test_a_capture_that_reached_the_ledger_is_not_charged_twice(
    book: Ledger, make_receipt: Callable[..., SignedReceipt], coordinator_key: Identity
) -> None:
    hold_id, receipt = served(book, make_receipt)
    book.capture(hold_id, 160, PROVIDER.agent_id, FEE_BPS, capture_key("req-1"))
    before = money(book)
    result = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert (result.action, result.receipt_recorded) == ("already_captured", True)
    assert money(book) == before
    # a receipt that disagrees with the recorded capture is refused
    other = make_receipt("req-2", PROVIDER, CONSUMER)
    hold2 = book.hold(CONSUMER, 1_000, hold_key("req-2"))
    book.capture(hold2, 100, PROVIDER.agent_id, FEE_BPS, capture_key("req-2"))
    with pytest.raises(InvalidReceipt, match="receipt says"):
        book.recover_from_receipt(other, coordinator=coordinator_key.agent_id)
    assert audit(book) == []


def test_with_the_fee_rate_a_late_gateway_capture_replays(
    book: Ledger, make_receipt: Callable[..., SignedReceipt], coordinator_key: Identity
) -> None:
    hold_id, receipt = served(book, make_receipt)
    book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id, fee_bps=FEE_BPS)
    late = book.capture(hold_id, 160, PROVIDER.agent_id, FEE_BPS, capture_key("req-1"))
    assert (late.charged, late.fee) == (160, 8)
    assert money(book)["consumer"] == 9_840
    # without the rate, the recovered row is its own movement: a late capture is refused
    hold2, receipt2 = served(book, make_receipt, "req-2")
    book.recover_from_receipt(receipt2, coordinator=coordinator_key.agent_id)
    with pytest.raises(IdempotencyConflict):
        book.capture(hold2, 160, PROVIDER.agent_id, FEE_BPS, capture_key("req-2"))
    assert money(book)["consumer"] == 9_680
    assert audit(book) == []


def refused(book: Ledger, snapshot: dict[str, Any], call: Callable[[], Any], match: str) -> None:
    with pytest.raises(InvalidReceipt, match=match):
        call()
    assert money(book) == snapshot


def test_receipts_that_must_not_move_money_are_refused(
    book: Ledger, make_receipt: Callable[..., SignedReceipt], coordinator_key: Identity
) -> None:
    _, receipt = served(book, make_receipt)
    before = money(book)
    me = coordinator_key.agent_id
    # another coordinator's countersignature, however valid, moves nothing here
    stranger = "x" * 44
    refused(
        book, before, lambda: book.recover_from_receipt(receipt, coordinator=stranger), "not by"
    )
    forged = receipt.model_copy(update={"coordinator_signature": receipt.agent_signature})
    refused(book, before, lambda: book.recover_from_receipt(forged, coordinator=me), "signature")
    tampered = receipt.model_copy(
        update={"body": receipt.body.model_copy(update={"amount": 161, "provider_amount": 153})}
    )
    refused(book, before, lambda: book.recover_from_receipt(tampered, coordinator=me), "agent")
    # a request whose hold never reached the ledger was never served
    orphan = make_receipt("never-held", PROVIDER, CONSUMER)
    refused(book, before, lambda: book.recover_from_receipt(orphan, coordinator=me), "no hold")
    # a receipt above its hold
    book.hold(CONSUMER, 100, hold_key("small"))
    big = make_receipt("small", PROVIDER, CONSUMER)
    before = money(book)
    refused(book, before, lambda: book.recover_from_receipt(big, coordinator=me), "above its")
    assert audit(book) == []


def test_a_consumer_who_spent_the_released_hold_is_charged_when_funds_return(
    book: Ledger,
    db: sessionmaker[Session],
    make_receipt: Callable[..., SignedReceipt],
    coordinator_key: Identity,
) -> None:
    _, receipt = served(book, make_receipt)
    recover_interrupted(db)
    book.withdraw(CONSUMER, 9_900, "w", destination=PROVIDER.agent_id)
    before = money(book)
    with pytest.raises(InsufficientFunds):
        book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert money(book) == before
    book.credit_deposit(CONSUMER, 500, "2" * 88)
    result = book.recover_from_receipt(receipt, coordinator=coordinator_key.agent_id)
    assert result.action == "charged"
    assert money(book)["consumer"] == 100 + 500 - 160
    assert audit(book) == []
