"""The end of every request, in one place and one order.

1. **escrow**: capture what the client is billed for at the serving provider's price (fee to the
   treasury), release the rest of the hold;
2. **row**: the request's final row (status, provider, tokens, timings; a failed request frees
   its idempotency key); the key's daily token count;
3. **metering**: the agent's token claim against what it returned (inflation is evidence);
4. **receipt**: for a paid request, the agent signs the receipt and the coordinator countersigns
   it (in the background: the client already has its answer);
5. **verifier**: a served request is offered to the verifier, which samples it.

Who pays is one rule: **the client pays for the tokens it received**, whatever ended the request
(its own hang-up, or a failure no failover could rescue), and the payment goes to the provider
that was serving when the stream ended. A non-streamed client receives the answer only at the
end, so one that hangs up or gets an error pays nothing (its generation is cancelled at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any

from rigpool.core.errors import RigpoolError
from rigpool.gateway.ports import GatewayPorts
from rigpool.gateway.provider_claims import check_metering, live_claim
from rigpool.gateway.request import Ending, Outcome, RequestSpec
from rigpool.ledger.receipts import ReceiptBody, countersign_checked

log = logging.getLogger(__name__)


def billable_tokens(spec: RequestSpec, out: Outcome, ending: Ending) -> int:
    """The completion tokens the client pays for: those it received."""
    if not out.tokens or (ending is not Ending.OK and not spec.stream):
        return 0
    return out.completion_tokens(spec)


async def finish(
    ports: GatewayPorts,
    spec: RequestSpec,
    out: Outcome,
    hold: Any,
    ending: Ending,
    *,
    error: str | None = None,
    response: dict[str, Any] | None = None,
) -> None:
    """End the request: escrow, row, metering, receipt, verifier (see the module doc).

    The writes of steps 1-3 are queued to the group-commit writer in that order (so they
    usually share one transaction with other requests' writes) and awaited together: when
    `finish` returns they are durable. The receipt is collected meanwhile: the agent's
    countersigned copy is what recovers a capture a crash kept from the database
    (docs/money.md). Nothing here blocks the event loop.
    """
    out.billed_tokens = billable_tokens(spec, out, ending)
    writes: list[Awaitable[Any]] = []
    if ports.escrow is not None:  # 1. escrow
        settled = ports.escrow.settle(spec, out, hold, billable=out.billed_tokens)
        if settled is not None:
            writes.append(settled)
    writes.append(  # 2. row
        ports.store.finish(spec, out, status=ending.value, error=error, response=response)
    )
    ports.limiter.charge(spec.api_key_id, spec.prompt_tokens + out.billed_tokens)
    if ending is Ending.OK:  # 3. metering
        evidence = check_metering(spec, out, ports.trust)
        if evidence is not None:
            writes.append(evidence)
    if out.charged:  # 4. receipt: needs the charge (known at once), not its durability
        spawn(collect_receipt(ports, spec, out))
    for result in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(result, BaseException):
            # The answer stands; what was not written is recovered (docs/money.md).
            log.error("request %s: a final write failed: %r", spec.request_id, result)
    if ending is Ending.OK and out.provider_id is not None:  # 5. verifier
        backend = ports.agents.backend_of(out.provider_id)
        ports.trust.offer(
            out.provider_id,
            # built on the verifier's thread, and only if the request is sampled
            partial(live_claim, spec, out, backend),
            metering_evidence=spec.consumer if out.metering_evidence else None,
        )


async def collect_receipt(ports: GatewayPorts, spec: RequestSpec, out: Outcome) -> None:
    """After a paid request: the agent signs the receipt, the coordinator countersigns, stores.

    The countersigned receipt goes back to the agent at once (protocol 1.6), before the capture
    is durable: the agent keeps it until told that the receipt and the capture are committed,
    and presents it after a coordinator crash (docs/money.md, "What is durable when").
    An agent that is gone or refuses leaves the capture in place and logs why: the ledger is
    already balanced; only the provable receipt is missing.
    """
    identity = ports.trust.identity
    agent = out.provider_id
    if (
        identity is None
        or ports.escrow is None
        or agent is None
        or out.attempt_id is None
        or not ports.agents.connected(agent)
    ):
        return
    price_in, price_out = ports.escrow.receipt_terms(agent, spec.model.name)
    body = ReceiptBody(
        request_id=spec.request_id,
        model=spec.model.name,
        prompt_tokens=spec.prompt_tokens,
        completion_tokens=out.billed_tokens,
        price_input_per_million=price_in,
        price_output_per_million=price_out,
        amount=out.charged,
        fee=out.fee,
        provider_amount=out.charged - out.fee,
        provider=agent,
        consumer=spec.consumer,
        coordinator=identity.agent_id,
        time=datetime.now(UTC).replace(tzinfo=None),
    )
    try:
        answer = await ports.agents.sign_receipt(agent, out.attempt_id, body.canonical().decode())
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        log.warning("no receipt signature for %s: %s", spec.request_id, exc or "timeout")
        return
    if answer.refused or not answer.signature:
        log.warning("agent refused the receipt of %s: %s", spec.request_id, answer.refused)
        return
    try:
        # The agent's signature is checked here and the countersignature is our own: the
        # escrow stores this `CheckedReceipt` without checking either again.
        signed = countersign_checked(body, answer.signature, identity)
    except RigpoolError as exc:
        log.warning("receipt of %s not countersigned: %s", spec.request_id, exc.message)
        return
    await ports.agents.hand_receipt(agent, out.attempt_id, signed.payload)
    try:
        await ports.escrow.record_receipt(signed)
    except RigpoolError as exc:
        log.warning("receipt of %s not recorded: %s", spec.request_id, exc.message)
        return
    except Exception as exc:  # the writer stopped (shutting down): the agent keeps its copy
        log.warning("receipt of %s not recorded: %r", spec.request_id, exc)
        return
    ports.agents.receipt_durable(agent, spec.request_id)


_background: set[asyncio.Task[None]] = set()


def spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` in a task of its own, kept referenced until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def drain_background(timeout_s: float = 10.0) -> None:
    """Wait (bounded) for the finish steps and receipts still running on this loop."""
    loop = asyncio.get_running_loop()
    mine = [t for t in _background if t.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=timeout_s)
