"""The hub: live WebSocket sessions of agents, and the streams of requests running on them.

This is the one place that knows where an agent's connection lives. Behind the `send` callable of
a session there is a WebSocket today; with several coordinator replicas it becomes a hop over a
message bus (NATS/Redis) to the replica holding the socket, and nothing above the hub changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from rigpool.coordinator.attest_records import AttestationRecord, AttestInbox
from rigpool.protocol.messages import (
    Cancel,
    Capabilities,
    Done,
    Error,
    Generate,
    ReceiptSignature,
    SignReceipt,
    Token,
    encode,
)

log = logging.getLogger(__name__)

Frame = Token | Done | Error
Sender = Callable[[str], Awaitable[None]]


@dataclass
class AgentSession:
    """One connected agent."""

    agent_id: str
    capabilities: Capabilities
    send_text: Sender
    close: Callable[[], Awaitable[None]]
    #: models the coordinator accepted from the agent's offer (registered ones only)
    models: frozenset[str] = frozenset()
    connected_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)
    reported_active: int = 0
    streams: dict[str, asyncio.Queue[Frame]] = field(default_factory=dict)
    garbage_frames: int = 0
    draining: bool = False
    receipts: dict[str, asyncio.Future[ReceiptSignature]] = field(default_factory=dict)
    #: routable: attestation let it in (coordinator/attest_link.py) and it joined the fleet
    admitted: bool = False
    #: being re-attested: no new work goes to it
    attesting: bool = False
    attestation: AttestationRecord | None = None
    #: the attestation round waiting for this agent's `attest_data` frames
    attest_inbox: AttestInbox | None = None
    #: set by the first heartbeat, which reports the VRAM its loaded model holds
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    vram_free_mb: int | None = None
    #: why the coordinator closed this session itself ("" when it did not)
    refused: str = ""

    @property
    def active(self) -> int:
        return len(self.streams)


class Hub:
    """Registry of live sessions plus per-request frame queues."""

    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}

    def add(self, session: AgentSession) -> AgentSession | None:
        """Register a session; returns the one it replaces (same agent reconnecting)."""
        old = self.sessions.get(session.agent_id)
        self.sessions[session.agent_id] = session
        return old

    def remove(self, session: AgentSession, reason: str) -> None:
        """Forget a session and fail its in-flight requests with a retryable error."""
        if self.sessions.get(session.agent_id) is session:
            del self.sessions[session.agent_id]
        for request_id, queue in list(session.streams.items()):
            queue.put_nowait(Error(request_id=request_id, message=reason, retryable=True))
        session.streams.clear()

    def serving(self, model: str) -> list[AgentSession]:
        return [
            s for s in self.sessions.values() if model in s.models and s.admitted and not s.draining
        ]

    def deliver(self, session: AgentSession, frame: Frame) -> None:
        """Route a frame from an agent to the request waiting for it (late frames are dropped)."""
        queue = session.streams.get(frame.request_id)
        if queue is not None:
            queue.put_nowait(frame)

    def deliver_receipt(self, session: AgentSession, frame: ReceiptSignature) -> None:
        waiter = session.receipts.pop(frame.attempt_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    async def sign_receipt(
        self, session: AgentSession, attempt_id: str, body: str, timeout_s: float = 10.0
    ) -> ReceiptSignature:
        """Ask the agent to sign a receipt; raises TimeoutError/ConnectionError."""
        waiter: asyncio.Future[ReceiptSignature] = asyncio.get_running_loop().create_future()
        session.receipts[attempt_id] = waiter
        try:
            await session.send_text(encode(SignReceipt(attempt_id=attempt_id, body=body)))
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            session.receipts.pop(attempt_id, None)

    async def stream(self, session: AgentSession, request: Generate) -> AsyncGenerator[Frame, None]:
        """Send `request` to the agent and yield its frames until done/error.

        Leaving the iteration early (client gone, timeout, hedge lost) cancels the request on
        the agent, so no provider keeps working for nobody.
        """
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        session.streams[request.request_id] = queue
        finished = False
        try:
            try:
                await session.send_text(encode(request))
            except Exception as exc:  # the socket died under us
                raise ConnectionError(f"could not reach agent: {exc}") from exc
            while True:
                frame = await queue.get()
                if isinstance(frame, Done | Error):
                    finished = True
                yield frame
                if finished:
                    return
        finally:
            session.streams.pop(request.request_id, None)
            if not finished and self.sessions.get(session.agent_id) is session:
                with contextlib.suppress(Exception):
                    await session.send_text(encode(Cancel(request_id=request.request_id)))
