"""The hub: live WebSocket sessions of agents, and the streams of requests running on them.

This is the one place that knows where an agent's connection lives. Behind the `send` callable of
a session there is a WebSocket today; with several coordinator replicas it becomes a hop over a
message bus (NATS/Redis) to the replica holding the socket, and nothing above the hub changes.

Frames reach a request through its `Mailbox`: a delivery appends however many frames arrived
(one, or a whole `batch` from a 1.5 agent) and wakes the reader once, so a stream costs one
wake-up per batch rather than one queue hop per token. Readers take either one frame at a time
(`Hub.stream`) or everything that has arrived (`Hub.stream_batches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from rigpool.coordinator.attest_records import AttestationRecord, AttestInbox
from rigpool.core.errors import BadRequest
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


class Mailbox:
    """The frames of one request waiting for its reader (one reader, any number of writers).

    Cheaper than an `asyncio.Queue` per request: a delivery appends its frames and wakes the
    reader at most once, and the reader takes everything that has arrived in one step.
    """

    __slots__ = ("_frames", "_waiter")

    def __init__(self) -> None:
        self._frames: list[Frame] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, frame: Frame) -> None:
        """Append one frame and wake the reader."""
        self._frames.append(frame)
        self._wake()

    def put_many(self, frames: Iterable[Frame]) -> None:
        """Append frames (in order) and wake the reader once."""
        self._frames.extend(frames)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._frames)

    async def take(self) -> list[Frame]:
        """Every frame that has arrived, oldest first; waits while there is none."""
        while not self._frames:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames, self._frames = self._frames, []
        return frames


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
    #: request id -> the mailbox its reader takes frames from (see `Hub.stream`)
    streams: dict[str, Mailbox] = field(default_factory=dict)
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
    #: the protocol version of the agent's hello (1.6 agents keep countersigned receipts)
    protocol_version: str = ""
    #: request ids of receipts now durable, acknowledged together (coordinator/receipt_link.py)
    acks: list[str] = field(default_factory=list)
    #: presented receipts being recovered (bounded per session)
    receipt_work: set[asyncio.Task[None]] = field(default_factory=set)

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
        for request_id, mailbox in list(session.streams.items()):
            mailbox.put(Error(request_id=request_id, message=reason, retryable=True))
        session.streams.clear()

    def serving(self, model: str) -> list[AgentSession]:
        return [
            s for s in self.sessions.values() if model in s.models and s.admitted and not s.draining
        ]

    def deliver(self, session: AgentSession, frame: Frame) -> None:
        """Route a frame from an agent to the request waiting for it (late frames are dropped)."""
        mailbox = session.streams.get(frame.request_id)
        if mailbox is not None:
            mailbox.put(frame)

    def deliver_many(self, session: AgentSession, frames: Iterable[Frame]) -> None:
        """Route a batch of frames (several requests' frames, each request's in order).

        Each request's frames go to its mailbox in one step and wake its reader once; frames of
        requests no longer waiting are dropped, as in `deliver`.
        """
        streams = session.streams
        grouped: dict[str, list[Frame]] = {}
        for frame in frames:
            pending = grouped.get(frame.request_id)
            if pending is None:
                grouped[frame.request_id] = [frame]
            else:
                pending.append(frame)
        for request_id, group in grouped.items():
            mailbox = streams.get(request_id)
            if mailbox is not None:
                mailbox.put_many(group)

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
        the agent, so no provider keeps working for nobody. Raises ConnectionError (on the
        first `anext`) when the agent cannot be reached.
        """
        mailbox = self._open(session, request)
        finished = False
        try:
            await self._send_request(session, request)
            while True:
                for frame in await mailbox.take():
                    if isinstance(frame, Done | Error):
                        finished = True
                    yield frame
                    if finished:
                        return
        finally:
            await self._close(session, request, finished)

    async def stream_batches(
        self, session: AgentSession, request: Generate
    ) -> AsyncGenerator[list[Frame], None]:
        """`stream`, one list of frames at a time: everything that has arrived when asked.

        Each list is non-empty and in order; the last one ends with the request's Done or
        Error (anything the agent sent after that is dropped). The caller pays one wake-up per
        list instead of one per token: a 1.5 agent sends the tokens it produces within a short
        window as one `batch`, and they arrive here together. Leaving early cancels the request
        on the agent; ConnectionError (on the first `anext`) when the agent cannot be reached.
        """
        mailbox = self._open(session, request)
        finished = False
        try:
            await self._send_request(session, request)
            while True:
                frames = await mailbox.take()
                for i, frame in enumerate(frames):
                    if isinstance(frame, Done | Error):
                        finished = True
                        del frames[i + 1 :]
                        break
                yield frames
                if finished:
                    return
        finally:
            await self._close(session, request, finished)

    def _open(self, session: AgentSession, request: Generate) -> Mailbox:
        mailbox = Mailbox()
        session.streams[request.request_id] = mailbox
        return mailbox

    @staticmethod
    async def _send_request(session: AgentSession, request: Generate) -> None:
        try:
            text = encode(request)
        except Exception as exc:  # the request itself cannot go on the wire: not the agent's
            raise BadRequest(f"the request cannot be sent to a provider: {exc}") from exc
        try:
            await session.send_text(text)
        except Exception as exc:  # the socket died under us
            raise ConnectionError(f"could not reach agent: {exc}") from exc

    async def _close(self, session: AgentSession, request: Generate, finished: bool) -> None:
        session.streams.pop(request.request_id, None)
        if not finished and self.sessions.get(session.agent_id) is session:
            with contextlib.suppress(Exception):
                await session.send_text(encode(Cancel(request_id=request.request_id)))
