"""Countersigned receipts between the coordinator and its agents (protocol 1.6).

Why: the capture of a served request is group-committed, not awaited (docs/money.md, "What is
durable when"). If the coordinator dies before it is durable, the countersigned receipt the
agent holds is what charges the consumer after all. So:

- **handing out**: right after countersigning, the coordinator sends the receipt to the agent
  that signed it (`receipt_countersigned`; best effort: an agent that is gone gets nothing,
  and the receipt is recorded as before);
- **acknowledging**: once the receipt *and* the capture it proves are committed, the agent is
  told (`receipts_ack`, request ids gathered over `ACK_WINDOW_S`) and forgets it;
- **presenting**: after each welcome, an agent sends the receipts this coordinator
  countersigned and never acknowledged (`receipts`). Each is checked (it names the presenting
  agent as provider, this coordinator's key countersigned it, both signatures hold) and handed
  to `Billing.recover_receipt`, which captures the hold, charges a released one, or does
  nothing when the capture is there. Durable ones are acknowledged; ones that can never be
  accepted are acknowledged as refused (so the agent stops presenting them); the others (the
  consumer's balance is short, the writer is stopped) stay with the agent for next time.

A presented receipt never counts against its provider (a bad one is not a garbage frame, it is
just refused) and never blocks the session's frame loop: the work runs in tasks of its own, at
most `MAX_PRESENTATIONS_IN_FLIGHT` per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Future
from typing import Any, Protocol

from pydantic import ValidationError

from rigpool.coordinator.hub import AgentSession
from rigpool.ledger import SignedReceipt
from rigpool.ledger.book import Recovery
from rigpool.ledger.errors import InsufficientFunds, InvalidReceipt
from rigpool.protocol.messages import (
    MAX_ACKS_PER_FRAME,
    RECEIPTS_VERSION,
    CountersignedReceipt,
    ReceiptCountersigned,
    ReceiptRefusal,
    Receipts,
    ReceiptsAck,
    at_least,
    encode,
)

log = logging.getLogger(__name__)

#: acknowledgements of receipts that became durable within this window go out together
ACK_WINDOW_S = 0.05

#: `receipts` frames of one agent being worked on at once; more are ignored (presented again
#: at the next connection)
MAX_PRESENTATIONS_IN_FLIGHT = 4

#: how long a presented receipt may wait for its commit before it counts as "not now"
RECOVERY_TIMEOUT_S = 60.0

BILLING_OFF = "billing is off on this coordinator: receipts are not recorded (keep them)"


class Recoverer(Protocol):
    """What presented receipts need of billing (`gateway.billing.Billing`)."""

    def recover_receipt(self, signed: SignedReceipt, coordinator: str) -> Future[Recovery]:
        """`Ledger.recover_from_receipt`, group-committed (idempotent)."""
        ...


def speaks_receipts(session: AgentSession) -> bool:
    """Whether the agent's protocol has the receipt frames (1.6 or later)."""
    return at_least(session.protocol_version, RECEIPTS_VERSION)


async def hand_receipt(session: AgentSession, attempt_id: str, receipt: dict[str, Any]) -> None:
    """Send the agent its countersigned receipt (best effort; never raises)."""
    if not speaks_receipts(session):
        return
    try:
        frame = ReceiptCountersigned(
            attempt_id=attempt_id, receipt=CountersignedReceipt.model_validate(receipt)
        )
        await session.send_text(encode(frame))
    except Exception as exc:  # the agent is gone: the receipt is recorded as before
        log.info("countersigned receipt not handed to %s: %r", session.agent_id, exc)


def ack_later(session: AgentSession, request_id: str) -> None:
    """Tell the agent (within `ACK_WINDOW_S`) that this receipt is durable here."""
    if not speaks_receipts(session):
        return
    session.acks.append(request_id)
    if len(session.acks) == 1:
        asyncio.get_running_loop().call_later(ACK_WINDOW_S, _flush_acks, session)


def _flush_acks(session: AgentSession) -> None:
    acks, session.acks = session.acks, []
    for i in range(0, len(acks), MAX_ACKS_PER_FRAME):
        _spawn(session, _send(session, ReceiptsAck(durable=acks[i : i + MAX_ACKS_PER_FRAME])))


async def _send(session: AgentSession, frame: ReceiptsAck) -> None:
    with contextlib.suppress(Exception):  # gone: it presents them at its next connection
        await session.send_text(encode(frame))


def _spawn(session: AgentSession, coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    session.receipt_work.add(task)
    task.add_done_callback(session.receipt_work.discard)


def accept_presented(
    session: AgentSession, frame: Receipts, billing: Recoverer | None, coordinator_id: str | None
) -> None:
    """Recover the receipts an agent presents and answer with `receipts_ack` (in a task)."""
    if len(session.receipt_work) >= MAX_PRESENTATIONS_IN_FLIGHT:
        log.warning(
            "agent %s presents receipts faster than they are recorded; %d ignored for now",
            session.agent_id,
            len(frame.receipts),
        )
        return

    async def answer() -> None:
        ack = await recover_presented(frame.receipts, session.agent_id, billing, coordinator_id)
        await _send(session, ack)

    _spawn(session, answer())


async def recover_presented(
    receipts: list[CountersignedReceipt],
    agent_id: str,
    billing: Recoverer | None,
    coordinator_id: str | None,
) -> ReceiptsAck:
    """Check and recover presented receipts; the acknowledgement to send back.

    `durable`: the ledger holds the receipt and its charge (recovered now, or there already).
    `refused`: never acceptable here. Neither: not now (the agent keeps it).
    """
    if billing is None or coordinator_id is None:
        return ReceiptsAck(note=BILLING_OFF)
    refused: list[ReceiptRefusal] = []
    waiting: dict[asyncio.Future[Any], str] = {}
    for wire in receipts:
        request_id = wire.request_id[:128]
        problem = _precheck(wire, agent_id, coordinator_id)
        if isinstance(problem, str):
            log.warning("agent %s presented a bad receipt %r: %s", agent_id, request_id, problem)
            refused.append(ReceiptRefusal(request_id=request_id, reason=problem))
            continue
        try:
            waiting[asyncio.wrap_future(billing.recover_receipt(problem, coordinator_id))] = (
                request_id
            )
        except Exception as exc:  # the writer is stopped: not now
            log.warning("receipt %s of %s not recovered now: %r", request_id, agent_id, exc)
    durable: list[str] = []
    if waiting:
        done, pending = await asyncio.wait(list(waiting), timeout=RECOVERY_TIMEOUT_S)
        for future in pending:
            future.cancel()
        for future in done:
            request_id = waiting[future]
            failure = future.exception()
            if failure is None:
                durable.append(request_id)
                log.info(
                    "receipt %s presented by %s: %s", request_id, agent_id, future.result().action
                )
            elif isinstance(failure, InsufficientFunds):
                log.warning(
                    "receipt %s of %s waits: the consumer's balance no longer covers it",
                    request_id,
                    agent_id,
                )
            elif isinstance(failure, InvalidReceipt):
                log.warning("agent %s presented receipt %s: %s", agent_id, request_id, failure)
                refused.append(ReceiptRefusal(request_id=request_id, reason=str(failure)[:512]))
            else:
                log.warning("receipt %s of %s not recovered now: %r", request_id, agent_id, failure)
    return ReceiptsAck(durable=durable, refused=refused)


def _precheck(
    wire: CountersignedReceipt, agent_id: str, coordinator_id: str
) -> SignedReceipt | str:
    """The ledger's receipt, or why it is refused before any signature is checked.

    Both signatures are checked by `Billing.recover_receipt` (on its checker threads), which
    also refuses any countersignature but this coordinator's.
    """
    if not wire.request_id:
        return "the receipt has no request id"
    try:
        signed = SignedReceipt.model_validate(
            {
                "body": wire.body,
                "agent_signature": wire.agent_signature,
                "coordinator_signature": wire.coordinator_signature,
            }
        )
    except ValidationError as exc:
        return f"malformed receipt: {exc.errors()[0].get('msg', 'invalid')}"
    if signed.body.provider != agent_id:
        return "the receipt names another provider than the agent presenting it"
    if signed.body.coordinator != coordinator_id:
        return "the receipt was countersigned by another coordinator"
    return signed
