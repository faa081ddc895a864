"""Group commit: many units per transaction, each resolved only once committed, failing alone.

Every test runs on SQLite and on PostgreSQL (`db_url`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from rigpool.ledger import EscrowWriter, GroupCommit, Ledger, WriterStopped, audit
from rigpool.ledger.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidState,
    UnknownAccount,
)
from rigpool.ledger.tables import AccountKind, Hold, JournalTx
from rigpool.protocol.signing import Identity

K = AccountKind
CONSUMER = Identity.generate().agent_id
PROVIDER = Identity.generate().agent_id


@pytest.fixture
def ledger(db: sessionmaker[Session]) -> Ledger:
    ledger = Ledger(db)
    ledger.credit_deposit(CONSUMER, 1_000_000, "1" * 88)
    return ledger


@pytest.fixture
def writer(ledger: Ledger) -> Iterator[EscrowWriter]:
    with EscrowWriter(ledger) as w:
        yield w


class Gate:
    """A unit that holds the writer until opened: what is submitted meanwhile is one batch."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    def __call__(self, _s: Session) -> str:
        self.started.set()
        assert self.go.wait(10)
        return "gate"


def hold_count(db: sessionmaker[Session]) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(Hold)) or 0)


def test_a_lone_unit_commits_at_once_and_is_visible_when_it_resolves(
    ledger: Ledger, writer: EscrowWriter
) -> None:
    seen: list[int] = []
    checked = threading.Event()

    def on_done(f: Future[int]) -> None:
        # Runs on the writer right after the commit: another session must already see the hold.
        with ledger.sessions() as s:
            seen.append(int(s.scalar(select(func.count()).select_from(Hold)) or 0))
        checked.set()

    t = time.perf_counter()
    future = writer.hold(CONSUMER, 100, "lone")
    future.add_done_callback(on_done)
    hold_id = future.result(timeout=10)
    assert time.perf_counter() - t < 2  # no timer: a lone unit is not held back
    assert checked.wait(10)
    assert seen == [1]
    assert ledger.hold_info(hold_id).amount == 100
    assert writer.group.stats["batches"] == 1


def test_concurrent_requests_share_transactions_and_every_cent_adds_up(
    ledger: Ledger, writer: EscrowWriter
) -> None:
    n = 400
    hold_futures = [writer.hold(CONSUMER, 1_000, f"h{i}") for i in range(n)]
    holds = [f.result(timeout=30) for f in hold_futures]
    captures = [writer.capture(h, 600, PROVIDER, 500, f"c{i}") for i, h in enumerate(holds)]
    results = [f.result(timeout=30) for f in captures]
    assert len(set(holds)) == n
    assert {(c.charged, c.fee, c.provider_amount, c.released) for c in results} == {
        (600, 30, 570, 400)
    }
    assert writer.group.stats["batches"] < 2 * n  # batched, not one transaction each
    assert ledger.balance(K.CONSUMER, CONSUMER) == 1_000_000 - n * 600
    assert ledger.balance(K.PROVIDER_EARNINGS, PROVIDER) == n * 570
    assert ledger.balance(K.TREASURY, "network") == n * 30
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 0
    assert audit(ledger) == []


def test_one_bad_unit_fails_alone_in_its_batch(
    ledger: Ledger, writer: EscrowWriter, db: sessionmaker[Session]
) -> None:
    # Prepare: hold the writer so that everything below lands in one batch
    gate = Gate()
    held = writer.submit(gate)
    assert gate.started.wait(10)
    good = writer.hold(CONSUMER, 100, "good")
    overdraft = writer.hold(CONSUMER, 10**9, "too-much")
    unknown = writer.capture(999_999, 5, PROVIDER, 0, "no-such-hold")

    def broken(s: Session) -> None:
        s.execute(text("INSERT INTO no_such_table VALUES (1)"))

    def fine(s: Session) -> int:
        return int(s.scalar(select(func.count()).select_from(JournalTx)) or 0)

    failing_sql = writer.submit(broken)
    generic = writer.submit(fine)
    after = writer.hold(CONSUMER, 200, "after")
    # Execute
    gate.go.set()
    wait([held, good, overdraft, unknown, failing_sql, generic, after], timeout=30)
    # Assert: each failure is its own; the rest committed together
    assert held.result() == "gate"
    assert isinstance(overdraft.exception(), InsufficientFunds)
    assert isinstance(unknown.exception(), UnknownAccount)
    assert failing_sql.exception() is not None
    assert generic.result() >= 2
    assert ledger.hold_info(good.result()).amount == 100
    assert ledger.hold_info(after.result()).amount == 200
    assert hold_count(db) == 2
    assert writer.group.stats["retried"] == 0  # failures were isolated, not a batch retry
    assert ledger.balance(K.CONSUMER, CONSUMER) == 1_000_000 - 300
    assert audit(ledger) == []


def test_a_key_replayed_inside_one_batch_moves_money_once(
    ledger: Ledger, writer: EscrowWriter, db: sessionmaker[Session]
) -> None:
    first_hold = writer.hold(CONSUMER, 500, "setup").result(timeout=10)
    gate = Gate()
    writer.submit(gate)
    assert gate.started.wait(10)
    a = writer.hold(CONSUMER, 100, "same")
    b = writer.hold(CONSUMER, 100, "same")
    conflict = writer.hold(CONSUMER, 999, "same")
    cap1 = writer.capture(first_hold, 50, PROVIDER, 0, "cap")
    cap1_again = writer.capture(first_hold, 50, PROVIDER, 0, "cap")
    cap2 = writer.capture(first_hold, 70, PROVIDER, 0, "cap-other-key")
    gate.go.set()
    wait([a, b, conflict, cap1, cap1_again, cap2], timeout=30)
    assert a.result() == b.result()
    assert isinstance(conflict.exception(), IdempotencyConflict)
    assert cap1.result() == cap1_again.result()
    assert cap1.result().charged == 50
    assert isinstance(cap2.exception(), InvalidState)
    assert hold_count(db) == 2
    assert ledger.balance(K.CONSUMER, CONSUMER) == 1_000_000 - 50 - 100
    # and the same keys replay through the one-transaction path too
    assert ledger.hold(CONSUMER, 100, "same") == a.result()
    assert ledger.capture(first_hold, 50, PROVIDER, 0, "cap") == cap1.result()
    assert audit(ledger) == []


class FailsOnce:
    """A batcher whose first batch breaks the transaction (a real SQL error): the writer must
    roll back and re-run the batch one unit at a time, each in its own SAVEPOINT."""

    def __init__(self) -> None:
        self.calls = 0

    def run_batch(self, s: Session, units: Sequence[Any]) -> list[tuple[bool, Any]]:
        self.calls += 1
        if self.calls == 1:
            s.execute(text("INSERT INTO ledger_holds (id) VALUES (NULL)"))  # violates NOT NULL
        return [(True, unit(s)) for unit in units]


class Note:
    def __init__(self, batcher: FailsOnce, value: int) -> None:
        self.batcher, self.value = batcher, value

    def __call__(self, s: Session) -> int:
        if self.value < 0:
            raise ValueError("negative note")
        return int(s.scalar(select(func.count()).select_from(Hold)) or 0) + self.value


def test_a_batch_that_cannot_be_written_is_retried_one_unit_at_a_time(
    ledger: Ledger, db: sessionmaker[Session]
) -> None:
    batcher = FailsOnce()
    with GroupCommit(db, lock=ledger.lock) as group:
        gate = Gate()
        group.submit(gate)
        assert gate.started.wait(10)
        hold = group.submit(ledger.hold_op(CONSUMER, 100, "h"))
        notes = [group.submit(Note(batcher, v)) for v in (1, -1, 2)]
        gate.go.set()
        wait([hold, *notes], timeout=30)
        assert group.stats["retried"] == 1
    hold_id = hold.result()
    assert ledger.hold_info(hold_id).amount == 100
    assert [notes[0].result(), notes[2].result()] == [2, 3]
    assert isinstance(notes[1].exception(), ValueError)
    assert audit(ledger) == []


def test_cancelled_units_are_skipped_and_close_drains_the_queue(ledger: Ledger) -> None:
    writer = EscrowWriter(ledger)
    gate = Gate()
    writer.submit(gate)
    assert gate.started.wait(10)
    cancelled = writer.hold(CONSUMER, 100, "never")
    assert cancelled.cancel()
    queued = [writer.hold(CONSUMER, 10, f"q{i}") for i in range(20)]
    gate.go.set()
    writer.close()
    assert all(f.done() and f.exception() is None for f in queued)
    assert not writer.group.alive
    with pytest.raises(WriterStopped):
        writer.hold(CONSUMER, 10, "late")
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 200
    assert audit(ledger) == []


def test_asyncio_callers_await_durability(ledger: Ledger, writer: EscrowWriter) -> None:
    async def main() -> list[int]:
        holds = await asyncio.gather(
            *(writer.hold_async(CONSUMER, 1_000, f"a{i}") for i in range(50))
        )
        count: Callable[[Session], int] = lambda s: int(  # noqa: E731
            s.scalar(select(func.count()).select_from(Hold)) or 0
        )
        assert await writer.group.run(count) == 50
        with pytest.raises(InsufficientFunds):
            await writer.hold_async(CONSUMER, 10**12, "too-much")
        return list(holds)

    holds = asyncio.run(main())
    assert len(set(holds)) == 50
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 50_000
    assert audit(ledger) == []
