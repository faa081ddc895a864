"""The provider daemon: dials out to the coordinator and serves generations from a backend.

Why dial out: home rigs sit behind NAT and firewalls, so the agent opens the one WebSocket and the
coordinator never needs an inbound port. The connection is re-established with exponential
backoff and jitter whenever it drops, so a coordinator restart heals by itself without a
thundering herd of agents reconnecting in the same millisecond.

Token frames are batched (protocol 1.5, when the coordinator's `welcome` says it understands
them): a token produced while the last message went out less than `flush_window_s` ago waits
for the end of that window, and everything waiting then travels as one sealed `batch` message.
The first token after a quiet spell, and every `done` or `error`, go out at once, so a slow
stream gains no latency and a fast one costs one message per window instead of one per token.

Receipts (protocol 1.6): the coordinator hands the agent each receipt it countersigned; the
agent checks both signatures and keeps it in its journal (`agent/receipt_journal.py`, on its
own thread) until the coordinator acknowledges that its ledger holds it. After each welcome
from a 1.6 coordinator the agent presents the receipts that coordinator countersigned and did
not acknowledge: that is how a capture lost in a coordinator crash is charged after all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from rigpool.agent.attest import Attester
from rigpool.agent.backends.base import Backend, Finish, GenerationRequest, SamplingParams
from rigpool.agent.receipt_journal import MAX_HELD_RECEIPTS, ReceiptJournal
from rigpool.core.errors import BackendError
from rigpool.protocol.channel import Sealer, agent_session_key
from rigpool.protocol.messages import (
    BATCH_VERSION,
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_RECEIPTS_BYTES,
    MAX_RECEIPTS_PER_FRAME,
    MAX_VERIFIED_TOKENS,
    RECEIPT_AGENT_DOMAIN,
    RECEIPTS_VERSION,
    AttestChallenge,
    AttestData,
    AttestProbe,
    Cancel,
    Capabilities,
    Done,
    Error,
    Generate,
    Heartbeat,
    Hello,
    ProtocolError,
    ReceiptCountersigned,
    Receipts,
    ReceiptsAck,
    ReceiptSignature,
    Refused,
    SignReceipt,
    Token,
    TopLogprob,
    Welcome,
    at_least,
    decode_coordinator_frame,
    encode,
    encode_batch,
    encode_token,
)
from rigpool.protocol.receipts import receipt_problem
from rigpool.protocol.signing import Identity, canonical_bytes, new_nonce
from rigpool.trust.evidence import claimed_sampling, provider_statement

log = logging.getLogger(__name__)

#: how many finished requests an agent remembers for signing their receipts
SERVED_MEMORY = 10_000

#: default wait (s) for more tokens before a batch goes out (see the module docstring)
FLUSH_WINDOW_S = 0.002

#: a batch goes out as soon as its frames' JSON reaches this many UTF-8 bytes: sealing at most
#: doubles it (the JSON escaping of the body; non-ASCII text is not escaped), so even with one
#: more frame of the largest kind the message stays far below MAX_FRAME_BYTES
MAX_BATCH_BYTES = 256 * 1024


class AgentRefused(RuntimeError):
    """The coordinator refused this agent for a reason that retrying will not fix."""


def agent_url(coordinator: str) -> str:
    """http(s)://host:port -> ws(s)://host:port/agent/v1/connect."""
    base = coordinator.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif not base.startswith(("ws://", "wss://")):
        base = "ws://" + base
    return base + "/agent/v1/connect"


def signed_hello(identity: Identity, capabilities: Capabilities) -> Hello:
    hello = Hello(
        agent_id=identity.agent_id,
        nonce=new_nonce(),
        timestamp=time.time(),
        capabilities=capabilities,
    )
    return hello.model_copy(update={"signature": identity.sign(canonical_bytes(hello))})


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0


class Agent:
    """One provider: an identity, a backend, and a connection loop."""

    def __init__(
        self,
        coordinator: str,
        identity: Identity,
        backend: Backend,
        capabilities: Capabilities,
        *,
        on_status: Callable[[str], None] | None = None,
        flush_window_s: float = FLUSH_WINDOW_S,
        receipts_path: Path | None = None,
        max_receipts: int = MAX_HELD_RECEIPTS,
    ):
        self.url = agent_url(coordinator)
        self.identity = identity
        self.backend = backend
        self.capabilities = capabilities
        self.on_status = on_status or (lambda msg: log.info("%s", msg))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(capabilities.max_concurrency)
        self._send_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._draining = False
        self._sealer: Sealer | None = None
        #: token batching (1.5 coordinators): frames waiting to go out, as wire JSON
        self.flush_window_s = flush_window_s
        self._batching = False
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_tasks: set[asyncio.Task[None]] = set()
        #: recently finished requests -> tokens produced (what receipts may be signed for)
        self._served: OrderedDict[str, int] = OrderedDict()
        self.drain_timeout_s = 30.0
        #: attestation challenges run on the backend's device (agent/attest.py)
        self._attester = Attester(str(getattr(backend, "device", "auto")))
        self._attest_tasks: set[asyncio.Task[None]] = set()
        #: countersigned receipts not yet acknowledged (on disk at `receipts_path`; memory only
        #: without one), read and written on one thread of their own, in arrival order
        self.receipts = ReceiptJournal(receipts_path, max_receipts=max_receipts)
        self._journal_io = ThreadPoolExecutor(1, thread_name_prefix="rigpool-receipts")
        self._receipt_tasks: set[asyncio.Future[Any]] = set()

    def stop(self) -> None:
        self._stopping.set()

    async def run_forever(self) -> None:
        """Connect, serve, reconnect with backoff; return when stopped, raise when refused."""
        backoff = Backoff()
        await self._journal(self.receipts.load)
        if not self.capabilities.emulated:
            await self._attester.warm_up()  # torch and the device context, off the clock
        while not self._stopping.is_set():
            try:
                # No permessage-deflate: frames are small and compressing every one costs both
                # sides more CPU than the bytes it saves.
                async with connect(
                    self.url,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=10,
                    ping_interval=10,
                    compression=None,
                ) as ws:
                    await self._serve_connection(ws, backoff)
            except AgentRefused:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                if self._stopping.is_set():
                    break
                delay = backoff.next_delay()
                self.on_status(
                    f"coordinator unreachable ({type(exc).__name__}); retry in {delay:.1f} s"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            except InvalidURI as exc:
                raise AgentRefused(f"bad coordinator URL: {exc}") from exc
        if self._receipt_tasks:  # receipts still being written to the journal
            await asyncio.wait(list(self._receipt_tasks), timeout=10)
        self._journal_io.shutdown(wait=True)
        await self.backend.close()

    def _journal(self, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run a journal method on the journal's thread (calls run in the order made)."""
        future = asyncio.get_running_loop().run_in_executor(self._journal_io, call, *args)
        self._receipt_tasks.add(future)
        future.add_done_callback(self._receipt_tasks.discard)
        return future

    async def _send(
        self,
        ws: ClientConnection,
        frame: Token | Done | Error | Heartbeat | Hello | ReceiptSignature | AttestData | Receipts,
    ) -> None:
        if self._batching and isinstance(frame, Token | Done | Error):
            await self._send_stream_frame(ws, frame)
            return
        if self._pending:
            await self._flush(ws)  # what was produced before this frame goes before it
        text = encode(frame)
        async with self._send_lock:
            # Sealing inside the lock keeps sequence numbers in the order frames hit the wire.
            if self._sealer is not None:
                text = self._sealer.seal(text)
            await ws.send(text)

    async def _send_stream_frame(self, ws: ClientConnection, frame: Token | Done | Error) -> None:
        """Queue a stream frame for the next batch; send the batch now if it should go now.

        A token waits when the last message went out less than `flush_window_s` ago (a timer
        sends the batch at the end of that window); a done or error frame, a full batch, or a
        token after a quiet spell sends everything waiting at once.
        """
        text = encode_token(frame) if isinstance(frame, Token) else encode(frame)
        self._pending.append(text)
        self._pending_bytes += len(text) if text.isascii() else len(text.encode())
        if (
            isinstance(frame, Token)
            and self._pending_bytes < MAX_BATCH_BYTES
            and len(self._pending) < MAX_BATCH_FRAMES
        ):
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_flush < self.flush_window_s:
                if self._flush_timer is None:
                    self._flush_timer = loop.call_at(
                        self._last_flush + self.flush_window_s, self._flush_later, ws
                    )
                return
        await self._flush(ws)

    def _flush_later(self, ws: ClientConnection) -> None:
        """The flush window ended: send the waiting batch from a task of its own."""
        self._flush_timer = None

        async def flush() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._flush(ws)

        task = asyncio.get_running_loop().create_task(flush())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)

    async def _flush(self, ws: ClientConnection) -> None:
        """Send every waiting stream frame as one sealed message (a lone frame as itself)."""
        async with self._send_lock:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            if not self._pending:
                return
            frames, self._pending, self._pending_bytes = self._pending, [], 0
            self._last_flush = asyncio.get_running_loop().time()
            text = frames[0] if len(frames) == 1 else encode_batch(frames)
            if self._sealer is not None:
                text = self._sealer.seal(text)
            await ws.send(text)

    def _reset_batching(self, batching: bool) -> None:
        """A new connection: nothing waiting, batches only if the coordinator takes them."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for task in list(self._flush_tasks):
            task.cancel()
        self._pending, self._pending_bytes, self._last_flush = [], 0, 0.0
        self._batching = batching

    async def _serve_connection(self, ws: ClientConnection, backoff: Backoff) -> None:
        hello = signed_hello(self.identity, self.capabilities)
        self._sealer = None
        self._reset_batching(False)
        await self._send(ws, hello)
        reply = decode_coordinator_frame(await asyncio.wait_for(ws.recv(), 15))
        if isinstance(reply, Refused):
            if reply.retry:
                self.on_status(f"coordinator turned this agent away for now: {reply.reason}")
                raise ConnectionClosed(None, None)
            raise AgentRefused(f"coordinator refused this agent: {reply.reason}")
        if not isinstance(reply, Welcome):
            raise AgentRefused(f"unexpected answer to hello: {reply.type}")
        backoff.reset()
        self._sealer = None
        if reply.session_pubkey:
            key = agent_session_key(
                self.identity.keypair_bytes(), bytes.fromhex(reply.session_pubkey), hello.nonce
            )
            self._sealer = Sealer(key)
            # Batches are sealed stream frames: only a 1.5+ coordinator knows them.
            self._reset_batching(at_least(reply.protocol_version, BATCH_VERSION))
        models = ", ".join(m.name for m in self.capabilities.models)
        self.on_status(f"connected as {self.identity.agent_id} serving {models}")
        if reply.coordinator_id and at_least(reply.protocol_version, RECEIPTS_VERSION):
            self._present_receipts(ws, reply.coordinator_id)
        heartbeat = asyncio.create_task(self._heartbeats(ws, reply.heartbeat_interval_s))
        stop_wait = asyncio.create_task(self._stopping.wait())
        loop = asyncio.get_running_loop()
        drain_deadline: float | None = None
        try:
            while True:
                if self._stopping.is_set() and drain_deadline is None:
                    # Graceful departure: say so first (the router stops sending work), then
                    # finish what is in flight, bounded by the drain timeout.
                    drain_deadline = loop.time() + self.drain_timeout_s
                    self._draining = True
                    await self._send(ws, Heartbeat(active=len(self._tasks), draining=True))
                    if self._tasks:
                        self.on_status(f"draining {len(self._tasks)} request(s) before leaving")
                if drain_deadline is not None and (not self._tasks or loop.time() > drain_deadline):
                    return
                recv = asyncio.create_task(ws.recv())
                waiters: set[asyncio.Task[Any]] = {recv} if self._draining else {recv, stop_wait}
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=0.1 if self._draining else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if recv not in done:
                    recv.cancel()  # safe: websockets' recv() may be cancelled
                    continue
                raw = recv.result()
                try:
                    frame = decode_coordinator_frame(raw)
                except ProtocolError as exc:
                    log.warning("ignoring invalid frame from coordinator: %s", exc)
                    continue
                if isinstance(frame, Generate):
                    if self._draining:
                        await self._send(
                            ws,
                            Error(request_id=frame.request_id, message="agent is leaving"),
                        )
                        continue
                    task = asyncio.create_task(self._run(ws, frame))
                    self._tasks[frame.request_id] = task
                    task.add_done_callback(self._forget_task(frame.request_id))
                elif isinstance(frame, SignReceipt):
                    await self._send(ws, self._receipt_signature(frame))
                elif isinstance(frame, ReceiptCountersigned):
                    self._keep_receipt(frame)
                elif isinstance(frame, ReceiptsAck):
                    self._acknowledged(frame)
                elif isinstance(frame, AttestChallenge | AttestProbe):
                    self._attest(ws, frame)
                elif isinstance(frame, Refused):  # e.g. a failed attestation
                    if frame.retry:
                        self.on_status(f"coordinator closed the session: {frame.reason}")
                        raise ConnectionClosed(None, None)
                    raise AgentRefused(f"coordinator refused this agent: {frame.reason}")
                elif isinstance(frame, Cancel):
                    running = self._tasks.get(frame.request_id)
                    if running is not None:
                        running.cancel()
        finally:
            heartbeat.cancel()
            stop_wait.cancel()
            for task in list(self._tasks.values()):
                task.cancel()
            for attest_task in list(self._attest_tasks):
                attest_task.cancel()
            self._reset_batching(False)
            self._attester.release_soon()
            self.on_status("disconnected from coordinator")

    def _attest(self, ws: ClientConnection, frame: AttestChallenge | AttestProbe) -> None:
        """Answer a challenge or probe from the attestation worker thread, then send it."""

        async def work() -> None:
            if isinstance(frame, AttestChallenge):
                frames = await self._attester.reply(frame.challenge)
            else:
                frames = await self._attester.answer(frame.challenge_id, frame.probe)
            with contextlib.suppress(ConnectionClosed):
                for data in frames:
                    await self._send(ws, data)

        task = asyncio.create_task(work())
        self._attest_tasks.add(task)
        task.add_done_callback(self._attest_tasks.discard)

    def _keep_receipt(self, frame: ReceiptCountersigned) -> None:
        """Check a countersigned receipt and journal it (on the journal's thread)."""

        def check_and_keep() -> None:
            problem = receipt_problem(frame.receipt, provider=self.identity.agent_id)
            if problem is not None:
                log.warning(
                    "not keeping the countersigned receipt of %s: %s",
                    frame.receipt.request_id or frame.attempt_id,
                    problem,
                )
                return
            self.receipts.add(frame.receipt)

        self._journal(check_and_keep).add_done_callback(_log_journal_error)

    def _acknowledged(self, frame: ReceiptsAck) -> None:
        """The coordinator holds these receipts (or refuses them for good): forget them."""
        for refusal in frame.refused:
            log.warning(
                "coordinator refused the receipt of %s: %s (dropped)",
                refusal.request_id,
                refusal.reason,
            )
        if frame.note:
            log.warning("coordinator on receipts: %s", frame.note)
        done = [*frame.durable, *(r.request_id for r in frame.refused)]
        if done:
            self._journal(self.receipts.ack, done).add_done_callback(_log_journal_error)

    def _present_receipts(self, ws: ClientConnection, coordinator_id: str) -> None:
        """Send the receipts `coordinator_id` countersigned and did not acknowledge."""

        async def present() -> None:
            held = await self._journal(self.receipts.pending, coordinator_id)
            if not held:
                return
            self.on_status(f"presenting {len(held)} countersigned receipt(s) not acknowledged")
            chunk: list[Any] = []
            size = 0
            with contextlib.suppress(ConnectionClosed):
                for receipt in held:
                    text = receipt.model_dump_json()
                    if chunk and (
                        size + len(text) > MAX_RECEIPTS_BYTES
                        or len(chunk) >= MAX_RECEIPTS_PER_FRAME
                    ):
                        await self._send(ws, Receipts(receipts=chunk))
                        chunk, size = [], 0
                    chunk.append(receipt)
                    size += len(text)
                if chunk:
                    await self._send(ws, Receipts(receipts=chunk))

        task = asyncio.create_task(present())
        self._attest_tasks.add(task)  # cancelled with the connection, like attestation work
        task.add_done_callback(self._attest_tasks.discard)

    def _receipt_signature(self, frame: SignReceipt) -> ReceiptSignature:
        """Sign a receipt only for work this agent did, naming it, at its own posted price."""
        refused = ""
        try:
            body = json.loads(frame.body)
        except ValueError:
            body = {}
        offer = next((m for m in self.capabilities.models if m.name == body.get("model")), None)
        if frame.attempt_id not in self._served:
            refused = "no such request served here"
        elif body.get("provider") != self.identity.agent_id:
            refused = "the receipt names another provider"
        elif offer is None or body.get("price_output_per_million") != round(
            offer.price_out_per_mtok * 1_000_000
        ):
            refused = "the receipt's price is not this agent's posted price"
        if refused:
            log.warning("refused to sign receipt for %s: %s", frame.attempt_id, refused)
            return ReceiptSignature(attempt_id=frame.attempt_id, refused=refused)
        signature = self.identity.sign(RECEIPT_AGENT_DOMAIN + frame.body.encode())
        return ReceiptSignature(attempt_id=frame.attempt_id, signature=signature)

    def _done(self, frame: Generate, finish: Finish) -> Done:
        """The closing frame, with the signed verification data when the backend has it.

        The agent signs `provider_statement` over exactly what it reports (token ids, logprobs,
        commitments, its token count), so a validator's evidence against it can only ever use
        output this agent really returned (docs/trust.md).
        """
        done = Done(
            request_id=frame.request_id,
            finish_reason="length" if finish.finish_reason == "length" else "stop",
            completion_tokens_claimed=finish.completion_tokens,
        )
        if finish.prompt_ids is None or finish.output_ids is None:
            return done
        if max(len(finish.prompt_ids), len(finish.output_ids)) > MAX_VERIFIED_TOKENS:
            return done  # too long to carry in one frame: served unverifiable
        logprobs = None if finish.logprobs is None else [round(x, 6) for x in finish.logprobs]
        commitments = None if finish.commitments is None else list(finish.commitments)
        statement = provider_statement(
            request_id=frame.request_id,
            model=frame.model,
            prompt_ids=finish.prompt_ids,
            output_ids=finish.output_ids,
            sampling=claimed_sampling(frame.sampling),
            logprobs=logprobs,
            commitments=commitments,
            prompt_tokens=len(finish.prompt_ids),
            completion_tokens=finish.completion_tokens,
        )
        return done.model_copy(
            update={
                "prompt_ids": list(finish.prompt_ids),
                "output_ids": list(finish.output_ids),
                "logprobs": logprobs,
                "commitments": None
                if commitments is None
                else [base64.b64encode(c).decode() for c in commitments],
                "statement_signature": self.identity.sign(statement),
            }
        )

    def _forget_task(self, request_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(request_id, None)

        return forget

    async def _heartbeats(self, ws: ClientConnection, interval_s: float) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while True:
                await self._send(
                    ws,
                    Heartbeat(
                        active=len(self._tasks),
                        draining=self._draining,
                        vram_free_mb=self._attester.vram_free_mb(),
                    ),
                )
                await asyncio.sleep(interval_s)

    async def _run(self, ws: ClientConnection, frame: Generate) -> None:
        request = GenerationRequest(
            request_id=frame.request_id,
            model=frame.model,
            prompt=frame.prompt,
            messages=tuple(frame.messages) if frame.messages else None,
            sampling=SamplingParams(
                max_tokens=frame.sampling.max_tokens,
                temperature=frame.sampling.temperature,
                top_p=frame.sampling.top_p,
                seed=frame.sampling.seed,
                stop=tuple(frame.sampling.stop),
                logprobs=frame.sampling.logprobs,
                top_logprobs=frame.sampling.top_logprobs,
            ),
        )
        index = 0
        try:
            async with self._slots:
                stream = self.backend.generate(request)
                try:
                    async for item in stream:
                        if isinstance(item, Finish):
                            self._served[frame.request_id] = index
                            while len(self._served) > SERVED_MEMORY:
                                self._served.popitem(last=False)
                            await self._send(ws, self._done(frame, item))
                            return
                        await self._send(
                            ws,
                            Token(
                                request_id=frame.request_id,
                                index=index,
                                text=item.text,
                                token_id=item.token_id,
                                logprob=item.logprob,
                                top_logprobs=[
                                    TopLogprob(text=t, logprob=lp) for t, lp in item.top_logprobs
                                ],
                            ),
                        )
                        index += 1
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
            raise BackendError("backend ended without finishing", retryable=True)
        except BackendError as exc:
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    ws,
                    Error(
                        request_id=frame.request_id, message=exc.message, retryable=exc.retryable
                    ),
                )
        except ConnectionClosed:
            pass
        except Exception as exc:  # a backend bug must not kill the agent
            log.exception("backend crashed on %s", frame.request_id)
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    ws,
                    Error(
                        request_id=frame.request_id,
                        message=f"backend crashed: {type(exc).__name__}",
                    ),
                )


def _log_journal_error(done: asyncio.Future[Any]) -> None:
    """A journal write that failed (disk full, permissions): say so, keep serving."""
    if not done.cancelled() and done.exception() is not None:
        log.error("receipt journal: %r", done.exception())
