"""The coordinator's side of attestation: challenge agents at join and at random times after.

A session that said a valid hello is in the hub (its receive loop runs, so `attest_data` frames
arrive) but is not routable until `admit` decides:

* emulated agents (and every agent while `settings.attestation` is off) skip the challenge:
  emulated ones are `unverified`, the others `not attested`;
* an agent claiming a GPU gets `size_challenge(<the catalog card>)`, a CPU-only agent (or one
  claiming a card the catalog does not know) one sized for `hardware.catalog.cpu_spec()`; both
  rounds are timed on this coordinator's clock and judged by `verify_attestation`;
* refused -> `refused` frame with the reasons, the socket is closed; `unverified` where
  `allow_unverified_agents` is off -> the same; otherwise the agent joins the fleet index;
* then, while it stays connected, it is challenged again after exponential waits of mean
  `attest_interval_s`: new work stops going to it, in-flight work finishes, the challenge
  leaves out the VRAM its last heartbeat reported in use (its loaded model), and a failure takes
  it out of routing and closes it with the reason.

The outcome per agent (status, reasons, round times and limits) is kept on the session and in
`CoordinatorState.attestations`, and shown by `GET /v1/providers`. Nothing is written to the
database. See docs/trust.md, "Attestation".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from rigpool.coordinator.attest_records import AttestationRecord, AttestInbox
from rigpool.core.errors import NotFound
from rigpool.hardware.catalog import GpuSpec, cpu_spec, find_gpu, match_nvml_name
from rigpool.protocol.messages import (
    AttestChallenge,
    AttestProbe,
    Capabilities,
    Refused,
    encode,
)
from rigpool.trust.attestation import (
    AttestationResult,
    Challenge,
    make_probe,
    refuse_timeout,
    size_challenge,
    verify_attestation,
)
from rigpool.trust.attestation_wire import (
    WireError,
    answer_from_text,
    answer_size_bound,
    challenge_to_json,
    probe_to_json,
    reply_size_bound,
    response_from_text,
)

if TYPE_CHECKING:
    from rigpool.coordinator.hub import AgentSession
    from rigpool.coordinator.settings import Settings
    from rigpool.coordinator.state import CoordinatorState

log = logging.getLogger(__name__)

#: threads that check probe answers (numpy over up to a few MiB each); bounds them in all cases
_VERIFY_POOL = ThreadPoolExecutor(2, thread_name_prefix="rigpool-attest")

#: how long past a round's deadline the coordinator still listens, so that an agent's own
#: explanation ("cannot hold...", "not finished within...") reaches the refusal reason
GRACE_S = 1.0
#: the first protocol version whose agents answer challenges
ATTEST_SINCE = (1, 4)

# --- what to challenge ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The card a challenge is sized for, and how a pass is judged."""

    spec: GpuSpec
    segment: str
    note: str = ""


def claimed_card(caps: Capabilities) -> Claim:
    """The first claimed GPU as a catalog card; CPU figures for CPU agents and unknown cards."""
    if not caps.gpus:
        return Claim(cpu_spec(), "cpu")
    gpu = caps.gpus[0]
    spec = match_nvml_name(gpu.name, gpu.vram_mb)
    if spec is None:
        with contextlib.suppress(NotFound):
            spec = find_gpu(gpu.name)
    if spec is None:
        return Claim(
            cpu_spec(ram_gb=max(1, gpu.vram_mb) / 1024),
            "cpu",
            f"unknown GPU {gpu.name!r}: challenged with CPU figures, so at most unverified",
        )
    return Claim(spec, spec.segment)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, x))))


def new_challenge(settings: Settings, claim: Claim, reserved_bytes: float = 0.0) -> Challenge:
    """A challenge for the claimed card under the coordinator's settings."""
    extra: dict[str, Any] = {}
    cap = None
    if settings.attest_max_buffer_mb is not None:
        cap = settings.attest_max_buffer_mb * float(1 << 20)
        # A development-sized buffer: 8 rows of 16 chunks keep the fill and the probe cheap.
        extra = {"rows": 8, "chunk_bytes": min(256 << 10, max(4096, _pow2_floor(cap / 128)))}
    return size_challenge(
        claim.spec,
        target_s=settings.attest_target_s,
        reserved_bytes=reserved_bytes,
        matrix_size=settings.attest_matrix_size,
        max_buffer_bytes=cap,
        allowance_s=settings.attest_allowance_s,
        **extra,
    )


def reserved_bytes(session: AgentSession, claim: Claim, max_share: float) -> float:
    """VRAM the agent's last heartbeat reports in use (its model), at most `max_share`."""
    if session.vram_free_mb is None or claim.segment == "cpu":
        return 0.0
    used = claim.spec.vram_bytes - session.vram_free_mb * float(1 << 20)
    return min(max(0.0, used), max_share * claim.spec.vram_bytes)


# --- one attestation ------------------------------------------------------------------------


def _refused(challenge: Challenge, reason: str, reply_s: float = 0.0) -> AttestationResult:
    return AttestationResult(
        status="refused",
        gpu=challenge.gpu,
        reasons=(reason,),
        reply_s=reply_s,
        limit_s=challenge.limit_s,
        expected_s=challenge.expected_s,
    )


async def _round(
    session: AgentSession, inbox: AttestInbox, frame: AttestChallenge | AttestProbe, wait_s: float
) -> tuple[str, str, float]:
    """Send `frame`, wait for the round's answer: (text, error, seconds).

    Raises:
        TimeoutError: nothing complete within `wait_s`.
        ConnectionError: the socket is gone (the receive loop ends the session).

    """
    session.attest_inbox = inbox
    start = time.perf_counter()
    try:
        try:
            await session.send_text(encode(frame))
        except Exception as exc:
            raise ConnectionError(f"could not reach agent: {exc}") from exc
        text, error = await asyncio.wait_for(inbox.result, wait_s)
    finally:
        session.attest_inbox = None
    return text, error, (inbox.done_at or time.perf_counter()) - start


async def attest_once(
    settings: Settings,
    session: AgentSession,
    claim: Claim,
    reserved: float = 0.0,
    verify_slots: asyncio.Semaphore | None = None,
) -> AttestationResult:
    """Both rounds against a live session, timed on this coordinator's clock."""
    challenge = new_challenge(settings, claim, reserved)
    cid = challenge.challenge_id
    inbox = AttestInbox(cid, "reply", 2 * reply_size_bound(challenge))
    try:
        text, error, reply_s = await _round(
            session,
            inbox,
            AttestChallenge(challenge=challenge_to_json(challenge)),
            challenge.limit_s + GRACE_S,
        )
    except TimeoutError:
        return refuse_timeout(challenge, challenge.limit_s + GRACE_S)
    if error:
        return _refused(challenge, f"no reply for a {challenge.gpu}: {error}", reply_s)
    try:
        response = await asyncio.to_thread(response_from_text, text)
    except WireError as exc:
        return _refused(challenge, f"malformed reply: {exc}", reply_s)
    probe = make_probe(challenge)
    inbox = AttestInbox(cid, "answer", 2 * answer_size_bound(challenge))
    wait_s = challenge.probe_limit_s + GRACE_S
    try:
        text, error, probe_s = await _round(
            session, inbox, AttestProbe(challenge_id=cid, probe=probe_to_json(probe)), wait_s
        )
    except TimeoutError:
        return _refused(
            challenge,
            f"no probe answer within {wait_s:.3g} s (limit {challenge.probe_limit_s:.3g} s): "
            "the buffer was not held in memory",
            reply_s,
        )
    if error:
        return _refused(challenge, f"probe not answered: {error}", reply_s)
    loop = asyncio.get_running_loop()
    async with verify_slots or contextlib.nullcontext():
        # On a pool of their own: an agent that hangs up cancels this task but not the thread,
        # and its work must neither outgrow the pool's bound nor queue up the request path's.
        try:
            answer = await loop.run_in_executor(_VERIFY_POOL, answer_from_text, text)
        except WireError as exc:
            return _refused(challenge, f"malformed probe answer: {exc}", reply_s)
        return await loop.run_in_executor(
            _VERIFY_POOL,
            partial(
                verify_attestation,
                challenge,
                response,
                reply_s,
                probe,
                answer,
                probe_s,
                claimed_segment=claim.segment,
            ),
        )


# --- the session's attestation life -----------------------------------------------------------


def _record(state: CoordinatorState, session: AgentSession, record: AttestationRecord) -> None:
    session.attestation = record
    state.attestations[session.agent_id] = record


def _verdict(
    settings: Settings, claim: Claim, result: AttestationResult, passed: int
) -> AttestationRecord:
    """The record of a result, plus this coordinator's own rule.

    A development-sized challenge (capped buffer) never verifies a card.
    """
    record = AttestationRecord.of(result, passed)
    if result.status == "verified" and settings.attest_max_buffer_mb is not None:
        record.status = "unverified"
        record.reasons = (
            f"development-sized challenge (buffer capped at {settings.attest_max_buffer_mb} "
            "MiB): the card's memory is not proven; development networks only",
        )
    if claim.note and record.status != "refused":
        record.reasons = (claim.note, *record.reasons)
    return record


def _protocol_at_least(version: str, need: tuple[int, int]) -> bool:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= need


async def refuse(
    state: CoordinatorState, session: AgentSession, reason: str, *, retry: bool = False
) -> None:
    """Take the agent out of routing, tell it why, close its socket."""
    log.warning("refused agent %s: %s", session.agent_id, reason)
    session.refused = reason
    session.admitted = False
    state.hub.remove(session, reason)
    state.agent_left(session.agent_id)
    with contextlib.suppress(Exception):
        await session.send_text(encode(Refused(reason=reason, retry=retry)))
    await session.close()


def _allowed(state: CoordinatorState, record: AttestationRecord) -> str | None:
    """Why an agent with this record may not serve here, or None."""
    if record.status == "refused":
        return "attestation failed: " + "; ".join(record.reasons)
    if record.status == "unverified" and not state.settings.allow_unverified_agents:
        return (
            "unverified agent (" + "; ".join(record.reasons) + ") and this network does not "
            "allow unverified agents"
        )
    return None


def _admit(state: CoordinatorState, session: AgentSession) -> None:
    session.admitted = True
    state.agent_joined(session)


def start(
    state: CoordinatorState, session: AgentSession, protocol_version: str
) -> asyncio.Task[None] | None:
    """Admit the session now when there is nothing to challenge, else start its attestation.

    Returns the task that challenges it (at join and after, or refuses it), for the caller to
    cancel when the connection ends.
    """
    caps = session.capabilities
    if state.settings.attestation and not caps.emulated:
        return asyncio.create_task(_life(state, session, protocol_version))
    record = AttestationRecord(
        status="unverified" if caps.emulated else "not attested",
        gpu=caps.gpus[0].name if caps.gpus else "",
        reasons=("emulated agent: nothing to attest; development networks only",)
        if caps.emulated
        else ("attestation is turned off on this coordinator",),
    )
    _record(state, session, record)
    reason = _allowed(state, record)
    if reason is not None:
        return asyncio.create_task(refuse(state, session, reason))
    _admit(state, session)  # at once, as before attestation: no window where it is unroutable
    return None


async def _wait_first_heartbeat(session: AgentSession, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(session.heard.wait(), timeout_s)


async def _pause_routing(state: CoordinatorState, session: AgentSession) -> None:
    """No new work while a live agent is challenged; in-flight work may finish first."""
    session.attesting = True
    if session.agent_id in state.fleet:
        state.fleet.set_health(session.agent_id, False)
    deadline = time.monotonic() + state.settings.request_timeout_s
    while session.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _judge(
    state: CoordinatorState, session: AgentSession, claim: Claim, passed: int
) -> AttestationRecord:
    """One attestation of the live session, recorded."""
    settings = state.settings
    reserved = reserved_bytes(session, claim, settings.attest_max_reserved)
    result = await attest_once(settings, session, claim, reserved, state.attestations.verify_slots)
    record = _verdict(settings, claim, result, passed + (result.status != "refused"))
    _record(state, session, record)
    log.info(
        "agent %s attested as %s %s (reply %.3g s, limit %.3g s) %s",
        session.agent_id,
        record.gpu,
        record.status,
        record.reply_s or 0.0,
        record.limit_s or 0.0,
        "; ".join(record.reasons),
    )
    return record


async def _life(state: CoordinatorState, session: AgentSession, protocol_version: str) -> None:
    settings = state.settings
    try:
        if not _protocol_at_least(protocol_version, ATTEST_SINCE):
            await refuse(
                state,
                session,
                f"agent protocol {protocol_version} cannot answer attestation challenges "
                "(needs 1.4): upgrade the agent",
            )
            return
        claim = claimed_card(session.capabilities)
        _record(state, session, AttestationRecord(status="pending", gpu=claim.spec.name))
        # The first heartbeat says how much VRAM the loaded model already holds.
        await _wait_first_heartbeat(session, min(5.0, settings.heartbeat_interval_s))
        record = await _judge(state, session, claim, 0)
        reason = _allowed(state, record)
        if reason is not None:
            await refuse(state, session, reason)
            return
        _admit(state, session)
        rng = random.SystemRandom()
        while True:
            wait = rng.expovariate(1.0 / settings.attest_interval_s)
            record.next_at = time.time() + wait
            await asyncio.sleep(wait)
            if session.draining:  # leaving anyway: it gets no new work to cheat on
                continue
            await _pause_routing(state, session)
            try:
                record = await _judge(state, session, claim, record.passed)
            finally:
                session.attesting = False
            reason = _allowed(state, record)
            if reason is not None:
                # A live agent that misses once may have been unlucky (load, a late stream):
                # it may reconnect, and must then pass the join challenge again.
                await refuse(state, session, "re-attestation: " + reason, retry=True)
                return
            if session.agent_id in state.fleet:
                state.agent_heartbeat(session)  # routable again
    except ConnectionError:
        return  # the agent went away; its receive loop cleans up
    except Exception:
        log.exception("attestation of agent %s failed on the coordinator", session.agent_id)
        await refuse(state, session, "coordinator error during attestation", retry=True)
    finally:
        # An agent that left in the middle of a challenge has no verdict: say so, rather than
        # leave "pending" in the providers view for ever.
        last = session.attestation
        if last is not None and last.status == "pending":
            _record(
                state,
                session,
                AttestationRecord(
                    status="not attested",
                    gpu=last.gpu,
                    reasons=("the agent left before its attestation finished",),
                ),
            )
