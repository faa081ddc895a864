"""The agents' side of the coordinator: the WebSocket endpoint agents dial out to.

Life of a connection: the agent sends a signed `hello` within a few seconds; the coordinator checks
the protocol version, the timestamp window, the signature and the nonce (replays refused, durable
across restarts), keeps the registered models of the offer and answers `welcome`. From then on
the agent sends heartbeats and request frames; it becomes routable once its attestation admits
it (`attest_link`: at once for emulated agents, after a challenge for the others). A frame
that is not valid protocol is logged and, past a few, ends the session: its requests fail with
a retryable error and move elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import base58
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from rigpool.coordinator import attest_link, receipt_link
from rigpool.coordinator.hub import AgentSession
from rigpool.coordinator.registry import provider_offline, provider_online, remember_nonce
from rigpool.coordinator.state import CoordinatorState
from rigpool.protocol.channel import Opener, coordinator_session_key, new_ephemeral
from rigpool.protocol.messages import (
    PROTOCOL_VERSION,
    AttestData,
    Batch,
    Done,
    Error,
    Heartbeat,
    Hello,
    ProtocolError,
    Receipts,
    ReceiptSignature,
    Refused,
    Sealed,
    Token,
    Welcome,
    decode_agent_frame,
    decode_sealed,
    encode,
    major,
)
from rigpool.protocol.signing import canonical_bytes, verify

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
MAX_GARBAGE_FRAMES = 3

router = APIRouter()


def check_hello(state: CoordinatorState, hello: Hello, now: float) -> str | None:
    """Why a hello is refused, or None when it is accepted (nonce recorded)."""
    settings = state.settings
    if major(hello.protocol_version) != major(PROTOCOL_VERSION):
        return (
            f"protocol version {hello.protocol_version} is not compatible with the "
            f"coordinator's {PROTOCOL_VERSION}"
        )
    if abs(now - hello.timestamp) > settings.hello_window_s:
        return (
            f"hello timestamp is {now - hello.timestamp:+.0f} s off the coordinator's clock "
            f"(window {settings.hello_window_s:.0f} s); check the agent's clock"
        )
    if not verify(hello.agent_id, canonical_bytes(hello), hello.signature):
        return "bad signature on hello"
    if hello.agent_id in state.banned:
        return f"this provider was slashed and is expelled: {state.banned[hello.agent_id]}"
    # Emulated and CPU-only agents can at best be unverified (attestation proves the work, not
    # a GPU): where that is not allowed, refuse them before spending a challenge on them.
    unverified = hello.capabilities.emulated or not hello.capabilities.gpus
    if unverified and not settings.allow_unverified_agents:
        return "emulated/CPU agents are unverified and only allowed on a development network"
    if settings.min_stake and state.billing is not None:
        staked = state.billing.ledger.balance("provider_stake", hello.agent_id)
        if staked < settings.min_stake:
            return (
                f"this agent has {staked} base units staked; serving needs at least "
                f"{settings.min_stake} (bond a stake first)"
            )
    if not remember_nonce(
        state.db, hello.agent_id, hello.nonce, hello.timestamp, settings.hello_window_s
    ):
        return "replayed hello (nonce already used)"
    return None


@router.websocket("/agent/v1/connect")
async def agent_connect(ws: WebSocket) -> None:
    state: CoordinatorState = ws.app.state.coordinator
    await ws.accept()
    try:
        raw = await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT_S)
        frame = decode_agent_frame(raw)
        if not isinstance(frame, Hello):
            raise ProtocolError(f"first frame must be hello, got {frame.type}")
    except (TimeoutError, ProtocolError, WebSocketDisconnect, KeyError) as exc:
        log.warning("agent refused before hello: %s", exc)
        with contextlib.suppress(Exception):
            await ws.send_text(encode(Refused(reason=f"expected a valid hello: {exc}")))
            await ws.close(code=1008)
        return

    reason = await asyncio.to_thread(check_hello, state, frame, time.time())
    if reason is not None:
        log.warning("refused agent %s: %s", frame.agent_id, reason)
        await ws.send_text(encode(Refused(reason=reason)))
        await ws.close(code=1008)
        return

    accepted = [m.name for m in frame.capabilities.models if m.name in state.model_names()]
    ignored = [m.name for m in frame.capabilities.models if m.name not in accepted]
    if ignored:
        log.warning("agent %s offers unregistered models %s (ignored)", frame.agent_id, ignored)

    async def close() -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1001)

    session = AgentSession(
        agent_id=frame.agent_id,
        capabilities=frame.capabilities,
        send_text=ws.send_text,
        close=close,
        models=frozenset(accepted),
        protocol_version=frame.protocol_version,
    )
    await asyncio.to_thread(provider_online, state.db, frame.agent_id, frame.capabilities, accepted)
    ephemeral_private, ephemeral_public = new_ephemeral()
    opener = Opener(
        coordinator_session_key(ephemeral_private, base58.b58decode(frame.agent_id), frame.nonce)
    )
    # Welcome goes out before the agent becomes routable, so it is always the first reply.
    await ws.send_text(
        encode(
            Welcome(
                agent_id=frame.agent_id,
                heartbeat_interval_s=state.settings.heartbeat_interval_s,
                session_pubkey=ephemeral_public.hex(),
                # whose countersigned receipts this agent may present here (1.6)
                coordinator_id=state.identity.agent_id if state.identity is not None else "",
            )
        )
    )
    replaced = state.hub.add(session)
    if replaced is not None:
        state.hub.remove(replaced, "agent reconnected elsewhere")
        state.agent_left(frame.agent_id)  # the new session routes only once admitted
        await replaced.close()
    # In the hub (its frames arrive) but routable only once attestation admits it.
    attestation = attest_link.start(state, session, frame.protocol_version)
    log.info("agent %s online: %s, models %s", frame.agent_id, frame.capabilities.backend, accepted)
    reason = "agent disconnected"
    try:
        reason = await _receive_frames(state, ws, session, opener)
    except TimeoutError:
        reason = "agent missed its heartbeats"
    except (WebSocketDisconnect, RuntimeError):
        reason = "agent disconnected"
    finally:
        if attestation is not None:
            attestation.cancel()
        reason = session.refused or reason
        state.hub.remove(session, reason)
        state.agent_left(frame.agent_id)
        log.info("agent %s offline: %s", frame.agent_id, reason)
        if frame.agent_id not in state.hub.sessions:
            await asyncio.to_thread(provider_offline, state.db, frame.agent_id)
        await close()


async def _receive_frames(
    state: CoordinatorState, ws: WebSocket, session: AgentSession, opener: Opener
) -> str:
    """Read the agent's sealed frames until the session ends; returns why it ended here.

    Raises TimeoutError after a silence and WebSocketDisconnect when the agent hangs up.

    The hot loop of the agent link: one pass per WebSocket message, and since 1.5 one message
    carries a whole `batch` of stream frames. The envelope takes orjson's fast path
    (`decode_sealed`); the heartbeat timeout is one deadline moved forward at most every
    `slack` seconds (not a timer per message), so the agent is dropped after between
    `heartbeat_timeout_s` and `heartbeat_timeout_s + slack` seconds without a frame.
    """
    agent_id = session.agent_id
    hub = state.hub
    timeout_s = state.settings.heartbeat_timeout_s
    slack = min(1.0, timeout_s / 4)
    loop = asyncio.get_running_loop()
    armed = loop.time()
    async with asyncio.timeout_at(armed + timeout_s + slack) as deadline:
        while True:
            raw = await ws.receive_text()
            now = loop.time()
            if now - armed > slack:
                armed = now
                deadline.reschedule(now + timeout_s + slack)
            try:
                parts = decode_sealed(raw)
                if parts is not None:
                    body = opener.open_parts(*parts)
                else:
                    sealed = decode_agent_frame(raw)
                    if not isinstance(sealed, Sealed):
                        raise ProtocolError(f"unsealed {sealed.type} frame after hello")
                    body = opener.open(sealed)
                msg = decode_agent_frame(body)
                if isinstance(msg, Sealed):
                    raise ProtocolError("nested sealed frame")
            except ProtocolError as exc:
                session.garbage_frames += 1
                log.warning("agent %s sent garbage (%s)", agent_id, exc)
                if session.garbage_frames >= MAX_GARBAGE_FRAMES:
                    return "agent sent invalid frames"
                continue
            session.last_heartbeat = time.time()
            if isinstance(msg, Batch):
                hub.deliver_many(session, msg.frames)
            elif isinstance(msg, Token | Done | Error):
                hub.deliver(session, msg)
            elif isinstance(msg, Heartbeat):
                session.reported_active = msg.active
                if msg.draining and not session.draining:
                    log.info("agent %s is draining", agent_id)
                session.draining = msg.draining
                session.vram_free_mb = msg.vram_free_mb
                session.heard.set()
                state.agent_heartbeat(session)
            elif isinstance(msg, AttestData):
                if session.attest_inbox is not None:
                    session.attest_inbox.add(msg)
            elif isinstance(msg, ReceiptSignature):
                hub.deliver_receipt(session, msg)
            elif isinstance(msg, Receipts):
                coordinator_id = state.identity.agent_id if state.identity is not None else None
                receipt_link.accept_presented(session, msg, state.billing, coordinator_id)
            elif isinstance(msg, Hello):
                log.warning("agent %s sent a second hello; ignored", agent_id)
