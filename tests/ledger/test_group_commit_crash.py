"""Crash injection in the group-committed money pipeline: nothing created, lost or paid twice.

The pipeline of a request, as the gateway runs it through `Billing`:

    hold_async (durable before dispatch) -> serve -> settle (capture, group-committed, not
    awaited) -> the agent signs the receipt, the coordinator countersigns, the agent keeps it
    -> record_receipt_later (group-committed)

The writer is killed at every fault point (`commit.before_apply`, `commit.mid_batch`,
`commit.before_commit`, `commit.after_commit`) in each phase (the holds, the captures, the
receipts); and a real process is killed with SIGKILL while it commits batches. Then the
coordinator restarts as it does (`recover_interrupted` releases every active hold), the agents
present the receipts they hold (`recover_from_receipt`), and:

- the audit is clean (no token created or destroyed, every invariant holds);
- the consumer paid exactly the receipts the agents hold, the provider and the treasury got
  exactly their parts: a request that served tokens is paid once, one that did not costs nothing;
- every key replays: presenting the receipts again, retrying the holds and the captures moves
  nothing.

Everything runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.db import open_database
from rigpool.coordinator.recovery import recover_interrupted
from rigpool.gateway.billing import Billing, Hold
from rigpool.ledger import (
    EscrowWriter,
    Ledger,
    Price,
    ReceiptBody,
    SignedReceipt,
    WriterStopped,
    agent_sign,
    audit,
    capture_key,
    countersign,
    hold_key,
)
from rigpool.ledger.errors import IdempotencyConflict, InvalidState
from rigpool.ledger.faults import COMMIT_POINTS, Faults
from rigpool.ledger.tables import AccountKind, Receipt
from rigpool.ledger.tables import Hold as HoldRow
from rigpool.protocol.signing import Identity

K = AccountKind
PRICE = Price(100_000, 300_000)
FEE_BPS = 500
FUNDS = 10_000_000
PROMPT, MAX_TOKENS = 1_000, 500
CONSUMER = "consumer-1"
PHASES = ("hold", "capture", "receipt")


def completion(i: int) -> int:
    return 50 + (i * 37) % 400


class Agents:
    """The providers' side: they sign receipts and keep the countersigned ones."""

    def __init__(self, coordinator: Identity, n: int = 3) -> None:
        self.coordinator = coordinator
        self.keys = [Identity.generate() for _ in range(n)]
        self.kept: dict[str, SignedReceipt] = {}

    def receipt(self, rid: str, i: int, charged: int, fee: int) -> SignedReceipt:
        agent = self.keys[i % len(self.keys)]
        body = ReceiptBody(
            request_id=rid,
            model="toy",
            prompt_tokens=PROMPT,
            completion_tokens=completion(i),
            price_input_per_million=PRICE.input_per_million,
            price_output_per_million=PRICE.output_per_million,
            amount=charged,
            fee=fee,
            provider_amount=charged - fee,
            provider=agent.agent_id,
            consumer=CONSUMER,
            coordinator=self.coordinator.agent_id,
            time=datetime(2026, 1, 1),
        )
        signed = countersign(body, agent_sign(body, agent), self.coordinator)
        self.kept[rid] = signed
        return signed


async def until_done_or_dead(futures: list[Any], writer: EscrowWriter) -> None:
    """Wait for every future, or until the writer died (then the rest never resolve)."""
    pending = {
        asyncio.ensure_future(f) if asyncio.isfuture(f) else asyncio.wrap_future(f) for f in futures
    }
    done: set[Any] = set()
    while pending and writer.group.alive:
        finished, pending = await asyncio.wait(pending, timeout=0.05)
        done |= finished
    for p in pending:
        p.cancel()
    for d in done:
        d.exception()  # retrieved: a crash leaves some failed (the writer stopped)


def run_pipeline(
    billing: Billing, agents: Agents, n: int, crash_phase: str | None, point: str | None
) -> dict[str, Any]:
    """Serve `n` requests phase by phase; arm `point` before `crash_phase`. What resolved."""
    writer = billing.writer

    def arm(phase: str) -> None:
        if phase == crash_phase and point is not None:
            target = billing.ledger.faults if point == "commit.mid_batch" else writer.group.faults
            target.armed.add(point)

    seen: dict[str, Any] = {"holds": {}, "settled": {}, "recorded": {}}

    async def main() -> None:
        rids = [f"req-{i}" for i in range(n)]
        arm("hold")
        tasks = {
            rid: asyncio.ensure_future(billing.hold_async(CONSUMER, rid, PRICE, PROMPT, MAX_TOKENS))
            for rid in rids
        }
        await until_done_or_dead(list(tasks.values()), writer)
        for rid, task in tasks.items():
            if task.done() and not task.cancelled():
                seen["holds"][rid] = task.result()
        if not writer.group.alive:
            return
        # Served: tokens went out only for requests whose hold is durable (all of them here).
        arm("capture")
        settlements = {}
        for i, rid in enumerate(rids):
            hold: Hold = seen["holds"][rid]
            provider = agents.keys[i % 3].agent_id
            try:
                s = billing.settle(hold, rid, PRICE, PROMPT, completion(i), provider)
            except WriterStopped:  # the writer died meanwhile: this process is gone
                break
            settlements[rid] = s
            # the receipt is built from what the settlement charges, before it is durable
            agents.receipt(rid, i, s.capture.charged, s.capture.fee)
        await until_done_or_dead([s.durable for s in settlements.values()], writer)
        for rid, s in settlements.items():
            if s.durable.done() and not s.durable.exception():
                seen["settled"][rid] = s.durable.result()
        if not writer.group.alive:
            return
        arm("receipt")
        recorded = {}
        for rid, signed in agents.kept.items():
            try:
                recorded[rid] = billing.record_receipt_later(signed)
            except WriterStopped:
                break
        await until_done_or_dead(list(recorded.values()), writer)
        seen["recorded"] = {
            rid: f.result() for rid, f in recorded.items() if f.done() and not f.exception()
        }

    asyncio.run(main())
    return seen


def restart_and_recover(url: str, agents: Agents) -> tuple[Ledger, sessionmaker[Session]]:
    """A new coordinator process: start-up recovery, then the agents present their receipts."""
    db = open_database(url)
    recover_interrupted(db)
    ledger = Ledger(db, faults=Faults(""))
    for signed in agents.kept.values():
        ledger.recover_from_receipt(
            signed, coordinator=agents.coordinator.agent_id, fee_bps=FEE_BPS
        )
    return ledger, db


def assert_paid_exactly_the_receipts(
    ledger: Ledger, db: sessionmaker[Session], agents: Agents
) -> None:
    assert audit(ledger) == []
    kept = list(agents.kept.values())
    charged = sum(r.body.amount for r in kept)
    assert ledger.balance(K.CONSUMER, CONSUMER) == FUNDS - charged
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 0
    for key in agents.keys:
        earned = sum(r.body.provider_amount for r in kept if r.body.provider == key.agent_id)
        assert ledger.balance(K.PROVIDER_EARNINGS, key.agent_id) == earned
    assert ledger.balance(K.TREASURY, "network") == sum(r.body.fee for r in kept)
    with db() as s:
        stored = set(s.scalars(select(Receipt.request_id)))
        active = s.scalar(
            select(func.count()).select_from(HoldRow).where(HoldRow.state == "active")
        )
    assert stored == set(agents.kept)
    assert active == 0


def assert_every_key_replays(ledger: Ledger, agents: Agents, n: int) -> None:
    """Retrying anything (receipts, captures, holds twice) moves nothing the second time."""
    before = ledger.balances()
    for signed in agents.kept.values():
        again = ledger.recover_from_receipt(signed, coordinator=agents.coordinator.agent_id)
        assert again.action == "already_captured" and not again.receipt_recorded
    for rid, signed in agents.kept.items():
        hold_id = ledger.hold(CONSUMER, PRICE.worst_case(PROMPT, MAX_TOKENS), hold_key(rid))
        b = signed.body
        # the gateway's own capture, retried: replays, or is refused; never charges twice
        with contextlib.suppress(IdempotencyConflict, InvalidState):
            ledger.capture(hold_id, b.amount, b.provider, FEE_BPS, capture_key(rid))
    assert ledger.balances() == before
    # a hold that never reached the database is made by its first retry, replayed by the next
    first = {
        f"req-{i}": ledger.hold(
            CONSUMER, PRICE.worst_case(PROMPT, MAX_TOKENS), hold_key(f"req-{i}")
        )
        for i in range(n)
    }
    after_first = ledger.balances()
    second = {
        rid: ledger.hold(CONSUMER, PRICE.worst_case(PROMPT, MAX_TOKENS), hold_key(rid))
        for rid in first
    }
    assert second == first
    assert ledger.balances() == after_first
    for hold_id in first.values():
        if ledger.hold_info(hold_id).state == "active":  # made by the retry: give it back
            ledger.release(hold_id)
    assert audit(ledger) == []


@pytest.fixture
def coordinator_id() -> Identity:
    return Identity.generate()


@pytest.fixture
def funded(db_url: str) -> Iterator[str]:
    db = open_database(db_url)
    Ledger(db).credit_deposit(CONSUMER, FUNDS, "1" * 88)
    db.kw["bind"].dispose()
    yield db_url


@pytest.mark.parametrize("point", COMMIT_POINTS)
@pytest.mark.parametrize("phase", PHASES)
def test_writer_killed_at_each_point_of_each_phase(
    funded: str, coordinator_id: Identity, phase: str, point: str
) -> None:
    # Prepare
    n = 24
    db = open_database(funded)
    billing = Billing(Ledger(db, faults=Faults("")), FEE_BPS)
    agents = Agents(coordinator_id)
    # Execute: the writer dies at `point` in `phase`
    seen = run_pipeline(billing, agents, n, phase, point)
    group = billing.writer.group
    assert not group.alive and group.crashed is not None
    if phase == "hold":
        assert seen["holds"] == {} and agents.kept == {}  # nobody learnt of a hold: nothing served
    if phase == "capture":
        assert len(seen["holds"]) == n and seen["settled"] == {}
    if phase == "receipt":
        assert len(seen["settled"]) == n and seen["recorded"] == {}
    db.kw["bind"].dispose()
    ledger, db2 = restart_and_recover(funded, agents)
    # Assert
    assert_paid_exactly_the_receipts(ledger, db2, agents)
    assert_every_key_replays(ledger, agents, n)
    db2.kw["bind"].dispose()


def test_without_a_crash_the_pipeline_pays_every_request(
    funded: str, coordinator_id: Identity
) -> None:
    db = open_database(funded)
    billing = Billing(Ledger(db), FEE_BPS)
    agents = Agents(coordinator_id)
    seen = run_pipeline(billing, agents, 40, None, None)
    billing.close()
    assert len(seen["recorded"]) == 40 and all(seen["recorded"].values())
    ledger = Ledger(db)
    assert_paid_exactly_the_receipts(ledger, db, agents)
    db.kw["bind"].dispose()


CHILD = """
import asyncio, json, sys
from datetime import datetime
from rigpool.coordinator.db import open_database
from rigpool.gateway.billing import Billing
from rigpool.ledger import Ledger, Price, ReceiptBody, agent_sign, countersign
from rigpool.protocol.signing import Identity
from nacl.signing import SigningKey

url, store, coordinator_seed, agent_seed, fee_bps = sys.argv[1:6]
coordinator = Identity(SigningKey(bytes.fromhex(coordinator_seed)))
agent = Identity(SigningKey(bytes.fromhex(agent_seed)))
price = Price(100_000, 300_000)
billing = Billing(Ledger(open_database(url)), int(fee_bps))
out = open(store, "a")

async def request(i):
    rid = f"req-{i}"
    hold = await billing.hold_async("consumer-1", rid, price, 1000, 500)
    s = billing.settle(hold, rid, price, 1000, 50 + (i * 37) % 400, agent.agent_id)
    body = ReceiptBody(
        request_id=rid, model="toy", prompt_tokens=1000, completion_tokens=50 + (i * 37) % 400,
        price_input_per_million=100_000, price_output_per_million=300_000,
        amount=s.capture.charged, fee=s.capture.fee,
        provider_amount=s.capture.charged - s.capture.fee, provider=agent.agent_id,
        consumer="consumer-1", coordinator=coordinator.agent_id, time=datetime(2026, 1, 1),
    )
    signed = countersign(body, agent_sign(body, agent), coordinator)
    out.write(signed.model_dump_json() + "\\n")  # the agent keeps it (another process, really)
    out.flush()
    billing.record_receipt_later(signed)

async def main():
    i = 0
    while True:  # until killed
        await asyncio.gather(*(request(i + k) for k in range(64)))
        i += 64
        print(i, flush=True)

asyncio.run(main())
"""


def seed_hex(identity: Identity) -> str:
    return bytes(identity.signing_key).hex()


@pytest.mark.slow
def test_a_process_killed_mid_batch_loses_no_money(
    funded: str, coordinator_id: Identity, tmp_path: Path
) -> None:
    # Prepare: a coordinator process serving requests as fast as it can
    agent = Identity.generate()
    store = tmp_path / "agent-receipts.jsonl"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            funded,
            str(store),
            seed_hex(coordinator_id),
            seed_hex(agent),
            str(FEE_BPS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "RIGPOOL_FAULT": ""},
    )
    # Execute: let it commit a few hundred requests, then SIGKILL it in the middle of its work
    assert child.stdout is not None
    deadline = time.monotonic() + 120
    served = 0
    while served < 320 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        served = int(line)
    time.sleep(0.013)  # land somewhere inside the next batches
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert served >= 320, child.stderr.read().decode() if child.stderr else ""
    # Restart: the agent presents every complete receipt it kept
    agents = Agents(coordinator_id, 0)
    agents.keys = [agent]
    for line in store.read_text().splitlines():
        try:
            signed = SignedReceipt.model_validate(json.loads(line))
        except ValueError:
            continue  # the line being written when the process died
        agents.kept[signed.body.request_id] = signed
    ledger, db = restart_and_recover(funded, agents)
    # Assert
    assert len(agents.kept) >= 320
    assert_paid_exactly_the_receipts(ledger, db, agents)
    with db() as s:
        holds = s.scalar(select(func.count()).select_from(HoldRow))
    assert holds is not None and holds >= len(agents.kept)
    before = ledger.balances()
    for signed in agents.kept.values():
        assert ledger.recover_from_receipt(signed, coordinator=coordinator_id.agent_id).action == (
            "already_captured"
        )
    assert ledger.balances() == before
    db.kw["bind"].dispose()


def test_submitting_to_a_crashed_writer_is_refused(funded: str) -> None:
    db = open_database(funded)
    writer = EscrowWriter(Ledger(db), faults=Faults("commit.before_commit"))
    doomed: Future[int] = writer.hold(CONSUMER, 10, "k")
    deadline = time.monotonic() + 10
    while writer.group.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not doomed.done()
    with pytest.raises(WriterStopped):
        writer.hold(CONSUMER, 10, "k2")
    db.kw["bind"].dispose()
