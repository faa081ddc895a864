"""The writer's lean paths keep their guarantees.

* A receipt the coordinator has just countersigned (`countersign_checked`) is stored without
  its signatures being checked a second time; a `SignedReceipt` from anywhere else is still
  checked in full, and a bad signature is still refused.
* Request rows go to the driver's `executemany`: a colliding admission in a group-committed
  batch fails alone and the rest of the batch commits; on SQLite a lone insert needs no
  SAVEPOINT (the failed statement is undone by SQLite itself), on PostgreSQL it has one.
* One `Session` serves every batch: what one batch did is not seen as pending by the next.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from rigpool.coordinator.db import open_database
from rigpool.coordinator.request_store import _RowWrite
from rigpool.coordinator.tables import RequestRecord
from rigpool.gateway.billing import Billing
from rigpool.ledger import Ledger, ReceiptBody, SignedReceipt, agent_sign
from rigpool.ledger import receipts as receipts_module
from rigpool.ledger.errors import InvalidReceipt
from rigpool.ledger.group_commit import GroupCommit
from rigpool.ledger.receipts import CheckedReceipt, check_receipt, countersign_checked
from rigpool.ledger.tables import Receipt
from rigpool.protocol.signing import Identity

AGENT = Identity.generate()
COORDINATOR = Identity.generate()


def body(request_id: str, *, amount: int = 1_000, fee: int = 50) -> ReceiptBody:
    return ReceiptBody(
        request_id=request_id,
        model="toy",
        prompt_tokens=10,
        completion_tokens=20,
        price_input_per_million=1,
        price_output_per_million=2,
        amount=amount,
        fee=fee,
        provider_amount=amount - fee,
        provider=AGENT.agent_id,
        consumer="c",
        coordinator=COORDINATOR.agent_id,
        time=datetime(2026, 1, 1),
    )


class CountingVerify:
    """Counts the ed25519 checks made (the real `verify` does each one)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.real = receipts_module.verify

    def __call__(self, public_key: str, message: bytes, signature: str) -> bool:
        with self.lock:
            self.calls += 1
        return self.real(public_key, message, signature)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> CountingVerify:
    counter = CountingVerify()
    monkeypatch.setattr(receipts_module, "verify", counter)
    return counter


def test_countersign_checked_is_what_check_receipt_makes_of_the_same_receipt():
    b = body("r-same")
    checked = countersign_checked(b, agent_sign(b, AGENT), COORDINATOR)
    again = check_receipt(checked.receipt)  # both signatures checked from scratch
    assert (checked.leaf, checked.payload, checked.payload_json) == (
        again.leaf,
        again.payload,
        again.payload_json,
    )
    assert checked.payload == checked.receipt.model_dump(mode="json")
    assert checked.leaf == checked.receipt.leaf().hex()


def test_countersign_checked_refuses_a_bad_agent_signature_and_bad_amounts():
    b = body("r-bad")
    with pytest.raises(InvalidReceipt, match="bad agent signature"):
        countersign_checked(b, agent_sign(body("r-other"), AGENT), COORDINATOR)
    skewed = body("r-skew").model_copy(update={"provider_amount": 1})
    with pytest.raises(InvalidReceipt, match="provider_amount"):
        countersign_checked(skewed, agent_sign(skewed, AGENT), COORDINATOR)


def test_a_just_countersigned_receipt_is_stored_without_a_second_check(tmp_path, checks):
    ledger = Ledger(open_database(f"sqlite:///{tmp_path / 'r.db'}"))
    billing = Billing(ledger, 500)
    try:
        b = body("r-fast")
        signature = agent_sign(b, AGENT)
        checks.calls = 0
        checked = countersign_checked(b, signature, COORDINATOR)
        assert checks.calls == 1  # the agent's signature, once
        assert billing.record_receipt_later(checked).result(10) is True
        assert checks.calls == 1  # stored: nothing checked again
        assert billing.record_receipt_later(checked).result(10) is False  # same receipt
        external: SignedReceipt = checked.receipt  # the same receipt, presented from outside
        checks.calls = 0
        assert billing.record_receipt_later(external).result(10) is False
        assert checks.calls == 2  # both signatures checked
    finally:
        billing.close()
    with ledger.sessions() as s:
        assert s.scalar(select(Receipt.leaf).where(Receipt.request_id == "r-fast")) == (
            checked.leaf
        )


def test_an_external_receipt_with_a_bad_signature_is_still_refused(tmp_path):
    ledger = Ledger(open_database(f"sqlite:///{tmp_path / 'r.db'}"))
    billing = Billing(ledger, 500)
    try:
        good = countersign_checked(body("r-ext"), agent_sign(body("r-ext"), AGENT), COORDINATOR)
        forged = good.receipt.model_copy(
            update={"coordinator_signature": AGENT.sign(b"something else")}
        )
        with pytest.raises(InvalidReceipt, match="bad coordinator signature"):
            billing.record_receipt_later(forged).result(10)
        tampered = good.receipt.model_copy(
            update={"body": good.receipt.body.model_copy(update={"completion_tokens": 999})}
        )
        with pytest.raises(InvalidReceipt, match="bad agent signature"):
            billing.record_receipt_later(tampered).result(10)
    finally:
        billing.close()
    with ledger.sessions() as s:
        assert s.scalar(select(Receipt.request_id)) is None  # nothing stored


def test_the_async_fast_path_resolves_after_the_commit(tmp_path):
    import asyncio

    ledger = Ledger(open_database(f"sqlite:///{tmp_path / 'r.db'}"))
    billing = Billing(ledger, 500)
    b = body("r-async")
    checked = countersign_checked(b, agent_sign(b, AGENT), COORDINATOR)
    assert isinstance(checked, CheckedReceipt)
    try:
        assert asyncio.run(billing.record_receipt_async(checked)) is True
        with ledger.sessions() as s:  # durable once awaited
            assert s.scalar(select(Receipt.request_id)) == "r-async"
    finally:
        billing.close()


def _row(request_id: str, key: str) -> _RowWrite:
    return _RowWrite(
        "insert",
        {
            "id": request_id,
            "api_key_id": 1,
            "idempotency_key": key,
            "endpoint": "chat",
            "model": "m",
            "created": datetime(2026, 1, 1),
        },
    )


def _savepoints(engine: Any) -> list[str]:
    """Every SAVEPOINT statement the engine sends from now on."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("SAVEPOINT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen


def test_a_colliding_admission_fails_alone_in_a_group_committed_batch(db_url):
    db = open_database(db_url)
    engine = db.kw["bind"]
    gate = threading.Event()
    with GroupCommit(db) as group:
        assert group.submit(_row("a", "k-a")).result(10) is None
        savepoints = _savepoints(engine)
        blocker = group.submit(lambda _s: gate.wait(5))  # holds the writer: the rest queue up
        futures = [
            group.submit(_RowWrite("update", {"_id": "a", "status": "ok", "attempts": 2})),
            group.submit(_row("c", "k-a")),  # the key of "a": collides, alone of its kind
            group.submit(lambda s: s.get(RequestRecord, "a") is not None),
        ]
        gate.set()
        assert blocker.result(10)
        assert futures[0].result(10) is None
        with pytest.raises(IntegrityError):
            futures[1].result(10)
        assert futures[2].result(10) is True
        stats = dict(group.stats)
    assert stats["retried"] == 0  # the batch was not re-run unit by unit
    # The plain unit has its SAVEPOINT either way; the lone insert only on PostgreSQL.
    plain = 1
    if engine.dialect.name == "sqlite":
        assert len(savepoints) == plain, savepoints
    else:
        assert len(savepoints) == plain + 1, savepoints
    with db() as s:
        found = {r.id: r for r in s.scalars(select(RequestRecord))}
    assert set(found) == {"a"} and found["a"].status == "ok" and found["a"].attempts == 2
    engine.dispose()


def test_several_admissions_with_one_collision_fail_alone(db_url):
    db = open_database(db_url)
    gate = threading.Event()
    with GroupCommit(db) as group:
        assert group.submit(_row("a", "k-a")).result(10) is None
        blocker = group.submit(lambda _s: gate.wait(5))
        futures = [
            group.submit(_row("b", "k-b")),
            group.submit(_row("c", "k-a")),  # collides: rows b and d must still be written
            group.submit(_row("d", "k-d")),
        ]
        gate.set()
        assert blocker.result(10)
        outcomes = [f.exception(10) is None for f in futures]
    assert outcomes == [True, False, True]
    with db() as s:
        assert set(s.scalars(select(RequestRecord.id))) == {"a", "b", "d"}
    db.kw["bind"].dispose()


def test_one_session_serves_every_batch_without_carrying_objects_over(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 's.db'}")

    def add(request_id: str) -> Any:
        def unit(s: Any) -> str:
            s.add(
                RequestRecord(
                    id=request_id,
                    api_key_id=2,
                    idempotency_key=request_id,
                    endpoint="chat",
                    model="m",
                    created=datetime(2026, 1, 1),
                )
            )
            return request_id

        return unit

    with GroupCommit(db) as group:
        assert group.submit(add("x")).result(10) == "x"
        # A unit whose flush fails (the same primary key) fails alone and leaves the session
        # usable for the next batch.
        with pytest.raises(IntegrityError):
            group.submit(add("x")).result(10)
        assert group.submit(add("y")).result(10) == "y"
        assert group.submit(lambda s: len(s.identity_map)).result(10) == 0
    with db() as s:
        assert set(s.scalars(select(RequestRecord.id))) == {"x", "y"}
    db.kw["bind"].dispose()
