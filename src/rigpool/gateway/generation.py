"""Running one generation for the gateway: admit, route, dispatch, retry, meter, record.

Retry rule: a request may move to another agent as long as nothing has reached the client yet
(before the first token). After that, a failure ends the stream with a retryable error; the
failover issue continues such streams on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from rigpool.coordinator.hub import AgentSession, Frame
from rigpool.coordinator.state import CoordinatorState
from rigpool.coordinator.tables import Model, RequestRecord
from rigpool.core.errors import (
    BackendError,
    BadRequest,
    ContextTooLong,
    NoCapacity,
    NotFound,
    RigpoolError,
)
from rigpool.gateway.auth import Caller
from rigpool.gateway.billing import Hold
from rigpool.gateway.common_schemas import SamplingFields
from rigpool.gateway.provider_claims import check_metering
from rigpool.gateway.tokenization import ModelTokenizer, load_tokenizer
from rigpool.ledger import Ledger, ReceiptBody, countersign
from rigpool.protocol.messages import Done, Error, Generate, Sampling, Token
from rigpool.scheduler.routing import Constraints, NoCandidate

log = logging.getLogger(__name__)

#: chat requests without max_tokens get this many at most (OpenAI: "until the context ends";
#: a shared network needs a bound, and the client can always ask for more).
DEFAULT_CHAT_MAX_TOKENS = 256


class IdempotentReplay(Exception):
    """The idempotency key was used before; carries the stored response or a conflict."""

    def __init__(self, response: dict[str, Any] | None):
        super().__init__("idempotent replay")
        self.response = response


@dataclass
class Job:
    """One admitted request."""

    request_id: str
    api_key_id: int
    consumer: str
    idempotency_key: str
    endpoint: str
    model: Model
    tokenizer: ModelTokenizer
    prompt: str
    messages: list[dict[str, str]] | None
    sampling: Sampling
    stream: bool
    prompt_tokens: int
    include_usage: bool = False
    constraints: Constraints = field(default_factory=Constraints)
    created: float = field(default_factory=time.time)
    provider_id: str | None = None
    attempts: int = 0
    ttft_s: float | None = None
    texts: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str = "stop"
    claimed_tokens: int | None = None
    hold: Hold | None = None
    charged: int = 0
    fee: int = 0
    attempt_id: str | None = None
    #: the finishing agent's `done` frame (its token claim and verification data)
    done: Done | None = None
    #: tokens the finishing attempt continued from (0 unless a failover continued the stream)
    attempt_offset: int = 0
    #: the agent's token claim became metering evidence signed by the agent
    metering_evidence: bool = False
    #: whether the agent's signature covers its verification data (checked once, on demand)
    statement_ok: bool | None = None

    @property
    def output(self) -> str:
        return "".join(self.texts)

    def completion_tokens(self) -> int:
        """Metered by the gateway from the text the client received.

        Re-encoding text can give more tokens than were generated (BPE is not canonical for
        odd token sequences, e.g. from an untrained model); the client never pays for more
        than the max_tokens it asked for.
        """
        return min(self.tokenizer.count(self.output), self.sampling.max_tokens)


def new_job(
    body: SamplingFields,
    *,
    endpoint: str,
    caller: Caller,
    idempotency_key: str | None,
    model: Model,
    tokenizer: ModelTokenizer,
    prompt: str,
    messages: list[dict[str, str]] | None,
    prompt_tokens: int,
    max_tokens: int,
    logprobs: bool,
    top_logprobs: int,
) -> Job:
    """A Job from the fields chat and completions share; each endpoint supplies the rest."""
    request_id = new_request_id("chatcmpl" if endpoint == "chat" else "cmpl")
    return Job(
        request_id=request_id,
        api_key_id=caller.key_id,
        consumer=caller.consumer,
        idempotency_key=idempotency_key or request_id,
        endpoint=endpoint,
        model=model,
        tokenizer=tokenizer,
        prompt=prompt,
        messages=messages,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        ),
        stream=body.stream,
        prompt_tokens=prompt_tokens,
        include_usage=body.include_usage(),
        constraints=body.constraints(),
    )


def resolve_model(state: CoordinatorState, name: str) -> tuple[Model, ModelTokenizer]:
    model = state.model(name)
    if model is None:
        known = ", ".join(sorted(state.model_names())) or "none registered"
        raise NotFound(
            f"The model '{name}' does not exist or you do not have access to it. "
            f"Available: {known}.",
            param="model",
            code="model_not_found",
        )
    return model, load_tokenizer(model.path)


def check_context(model: Model, prompt_tokens: int, max_tokens: int) -> None:
    total = prompt_tokens + max_tokens
    if total > model.context_length:
        raise ContextTooLong(
            f"This model's maximum context length is {model.context_length} tokens. However, "
            f"you requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the "
            f"completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < model.context_length else "messages",
        )


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def admit(state: CoordinatorState, job: Job) -> None:
    """Record the request; a reused idempotency key replays the first answer instead."""
    try:
        with state.db.begin() as session:
            session.add(
                RequestRecord(
                    id=job.request_id,
                    api_key_id=job.api_key_id,
                    idempotency_key=job.idempotency_key,
                    endpoint=job.endpoint,
                    model=job.model.name,
                    stream=job.stream,
                    prompt_tokens=job.prompt_tokens,
                    created=_utcnow(),
                )
            )
    except IntegrityError:
        with state.db() as session:
            prior = session.scalar(
                select(RequestRecord).where(
                    RequestRecord.api_key_id == job.api_key_id,
                    RequestRecord.idempotency_key == job.idempotency_key,
                )
            )
        raise IdempotentReplay(prior.response if prior is not None else None) from None


def open_hold(state: CoordinatorState, job: Job) -> None:
    """Escrow the request's worst-case cost (raises InsufficientBalance)."""
    if state.billing is None:
        return
    cap = state.price_cap(job.model.name, job.constraints)
    job.hold = state.billing.hold(
        job.consumer, job.request_id, cap, job.prompt_tokens, job.sampling.max_tokens
    )


#: the error recorded when the client hangs up; it pays for the tokens it had received
CLIENT_GONE = "client went away"


def close_hold(state: CoordinatorState, job: Job, *, ok: bool) -> None:
    """Capture what the client received at the serving provider's price, or release all.

    A request that failed costs nothing; a client that hung up mid-stream pays for the tokens
    it had already received (the provider did that work at its request).
    """
    if state.billing is None or job.hold is None:
        return
    if not ok or job.provider_id is None or not job.tokens:
        state.billing.release(job.hold, job.request_id)
        return
    capture = state.billing.capture(
        job.hold,
        job.request_id,
        state.price(job.provider_id, job.model.name),
        job.prompt_tokens,
        job.completion_tokens(),
        job.provider_id,
    )
    job.charged, job.fee = capture.charged, capture.fee


def finish_record(
    state: CoordinatorState, job: Job, *, error: str | None, response: dict[str, Any] | None
) -> None:
    """End the request: settle its escrow, then write its final row."""
    close_hold(state, job, ok=error is None or error == CLIENT_GONE)
    if error is None:
        check_metering(state, job)
    now = time.time()
    values: dict[str, Any] = {
        "status": "ok" if not error else ("cancelled" if error == CLIENT_GONE else "error"),
        "provider_id": job.provider_id,
        "attempts": job.attempts,
        "completion_tokens": job.completion_tokens(),
        "completion_tokens_claimed": job.claimed_tokens,
        "ttft_ms": job.ttft_s * 1000 if job.ttft_s is not None else None,
        "latency_ms": (now - job.created) * 1000,
        "error": error,
        "response": response,
        "finished": _utcnow(),
    }
    if error:
        # A failed request frees its idempotency key, so the client may retry with it.
        values["idempotency_key"] = f"{job.idempotency_key}:failed:{job.request_id}"[:128]
    with state.db.begin() as session:
        session.execute(
            update(RequestRecord).where(RequestRecord.id == job.request_id).values(**values)
        )
    state.limiter.charge(job.api_key_id, job.prompt_tokens + values["completion_tokens"])


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class _Attempt:
    """One dispatch of (part of) a job to one agent."""

    session: AgentSession
    frames: AsyncGenerator[Frame, None]
    started: float
    attempt_id: str
    offset: int = 0
    next_frame: asyncio.Task[Frame] | None = None

    def pull(self) -> asyncio.Task[Frame]:
        if self.next_frame is None:
            self.next_frame = asyncio.ensure_future(anext(self.frames))
        return self.next_frame

    async def abandon(self) -> None:
        """Stop listening; the hub sends `cancel` to the agent."""
        if self.next_frame is not None and not self.next_frame.done():
            self.next_frame.cancel()
            with contextlib.suppress(BaseException):
                await self.next_frame
        with contextlib.suppress(Exception):
            await self.frames.aclose()


class _Dispatcher:
    """Routing, hedging and failover for one job. Every failure path ends in a RigpoolError."""

    def __init__(self, state: CoordinatorState, job: Job):
        self.state = state
        self.job = job
        self.settings = state.settings
        self.deadline = job.created + self.settings.request_timeout_s
        self.tried: set[str] = set()
        self.last_error = ""

    def _remaining(self) -> float:
        return self.deadline - time.time()

    def _start(self) -> _Attempt:
        """Route and dispatch one attempt, continuing from whatever was already delivered."""
        job = self.job
        if job.attempts >= self.settings.max_attempts or self._remaining() <= 0:
            raise self._gave_up()
        pick = self.state.pick_agent(job.model.name, job.constraints, self.tried)
        if isinstance(pick, NoCandidate):
            if job.attempts:
                raise self._gave_up()
            raise pick.to_error()
        session = self.state.hub.sessions.get(pick)
        if session is None:  # left between the index and now
            self.tried.add(pick)
            return self._start()
        self.tried.add(pick)
        job.attempts += 1
        delivered = len(job.tokens)
        continuing = delivered > 0
        request = Generate(
            request_id=f"{job.request_id}.{job.attempts}",
            model=job.model.name,
            # Failover continues from the prompt plus the text the client already has.
            prompt=job.prompt + job.output if continuing else job.prompt,
            messages=None if continuing else job.messages,
            sampling=job.sampling.model_copy(
                update={"max_tokens": job.sampling.max_tokens - delivered}
            ),
            deadline=self.deadline,
        )
        self.state.router.on_dispatch(session.agent_id)
        return _Attempt(
            session,
            self.state.hub.stream(session, request),
            time.monotonic(),
            request.request_id,
            offset=delivered,
        )

    def _gave_up(self) -> RigpoolError:
        job = self.job
        where = "mid-stream " if job.tokens else ""
        return NoCapacity(
            f"The request failed {where}on {job.attempts} provider(s) "
            f"(last: {self.last_error or 'none available'}); retry later.",
        )

    def _failed(self, attempt: _Attempt, exc: BaseException) -> None:
        self.last_error = _describe(exc)
        log.warning(
            "request %s failed on agent %s: %s",
            self.job.request_id,
            attempt.session.agent_id,
            self.last_error,
        )
        self.state.router.on_end(attempt.session.agent_id, ok=False, now=time.monotonic())
        self.state.observed(attempt.session.agent_id, ok=False)
        if isinstance(exc, BackendError) and not exc.retryable:
            raise BadRequest(f"the provider refused the request: {self.last_error}") from None

    async def _first_frame(self) -> tuple[_Attempt, Frame]:
        """Race for the first frame: hedge a slow agent, replace failed ones.

        Returns the winning attempt and its first Token/Done frame; losers are cancelled.
        """
        state, settings = self.state, self.settings
        racing = [self._start()]
        hedged = not settings.hedging or bool(self.job.tokens)  # never hedge a continuation
        try:
            while True:
                now = time.monotonic()
                limits = [a.started + settings.first_token_timeout_s - now for a in racing]
                wait = min([*limits, self._remaining()])
                if not hedged:
                    hedge_at = racing[0].started + state.hedge.hedge_delay_s(
                        racing[0].session.agent_id
                    )
                    wait = min(wait, hedge_at - now)
                done, _ = await asyncio.wait(
                    [a.pull() for a in racing],
                    timeout=max(0.0, wait),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    now = time.monotonic()
                    if not hedged and now >= hedge_at - 1e-3:
                        hedged = True
                        if state.hedge.try_take_hedge(now):
                            # Nobody to hedge to: keep waiting on the first agent.
                            with contextlib.suppress(RigpoolError):
                                racing.append(self._start())
                        continue
                    expired = [
                        a for a in racing if now >= a.started + settings.first_token_timeout_s
                    ]
                    if self._remaining() <= 0:
                        expired = list(racing)
                    for attempt in expired:
                        racing.remove(attempt)
                        self._failed(attempt, TimeoutError())
                        await attempt.abandon()
                    if not racing:
                        racing.append(self._start())
                    continue
                for attempt in list(racing):
                    task = attempt.next_frame
                    if task is None or task not in done:
                        continue
                    attempt.next_frame = None
                    try:
                        frame = task.result()
                        if isinstance(frame, Error):
                            raise BackendError(frame.message, retryable=frame.retryable)
                        if isinstance(frame, Token) and frame.index != 0:
                            raise BackendError(f"agent sent token {frame.index} first")
                    except (BackendError, ConnectionError, StopAsyncIteration) as exc:
                        racing.remove(attempt)
                        await attempt.abandon()
                        self._failed(attempt, exc)
                        if not racing:
                            racing.append(self._start())
                        continue
                    racing.remove(attempt)
                    return attempt, frame
        finally:
            for loser in racing:
                # A slower twin: its elapsed time is a lower bound on its TTFT.
                elapsed = time.monotonic() - loser.started
                state.router.on_first_token(loser.session.agent_id, elapsed, time.monotonic())
                state.router.on_end(loser.session.agent_id, ok=True, now=time.monotonic())
                await loser.abandon()

    async def run(self) -> AsyncGenerator[Token, None]:
        job, state, settings = self.job, self.state, self.settings
        state.hedge.on_request(time.monotonic())
        while True:
            attempt, frame = await self._first_frame()
            agent_id = attempt.session.agent_id
            job.provider_id = agent_id
            job.attempt_id = attempt.attempt_id
            job.attempt_offset = attempt.offset
            first_s = time.monotonic() - attempt.started
            state.router.on_first_token(agent_id, first_s, time.monotonic())
            state.hedge.observe_ttft(agent_id, first_s, time.monotonic())
            if job.ttft_s is None:
                job.ttft_s = time.time() - job.created
            state.observed(agent_id, ok=True, ttft_s=first_s)
            expected = 0
            ok = False
            try:
                while True:
                    if isinstance(frame, Done):
                        job.done = frame
                        job.finish_reason = frame.finish_reason
                        job.claimed_tokens = (job.claimed_tokens or 0) + (
                            frame.completion_tokens_claimed
                        )
                        ok = True
                        return
                    if isinstance(frame, Error):
                        raise BackendError(frame.message, retryable=frame.retryable)
                    if frame.index != expected:
                        raise BackendError(f"agent sent token {frame.index}, expected {expected}")
                    expected += 1
                    job.texts.append(frame.text)
                    job.tokens.append(frame)
                    yield frame
                    if len(job.tokens) >= job.sampling.max_tokens:
                        # The budget is spent: the answer is complete whatever follows. The
                        # agent's Done (its token claim, for the metering check) comes right
                        # after the last token; wait for it only briefly.
                        job.finish_reason = "length"
                        ok = True
                        with contextlib.suppress(Exception):
                            done = await asyncio.wait_for(anext(attempt.frames), 0.5)
                            if isinstance(done, Done):
                                job.done = done
                                job.claimed_tokens = (job.claimed_tokens or 0) + (
                                    done.completion_tokens_claimed
                                )
                        return
                    remaining = self._remaining()
                    if remaining <= 0:
                        raise TimeoutError("the request deadline passed")
                    frame = await asyncio.wait_for(
                        anext(attempt.frames), min(settings.inter_token_timeout_s, remaining)
                    )
            except (BackendError, TimeoutError, ConnectionError, StopAsyncIteration) as exc:
                self._failed(attempt, exc)
                # Failover: the loop continues the stream on another agent.
            finally:
                if ok:
                    state.router.on_end(agent_id, ok=True, now=time.monotonic())
                await attempt.abandon()


async def generate(state: CoordinatorState, job: Job) -> AsyncGenerator[Token, None]:
    """Yield the job's tokens in order; raise a RigpoolError when it cannot complete.

    Before the first token, a slow agent is hedged (a copy to a second agent after about its
    p95 time to first token, within the hedge budget) and a failed one is replaced. After the
    first token, a failed agent's stream is continued on another agent from the prompt plus
    the text already delivered, so the client sees one stream without gaps or repeats. Every
    wait is bounded by the first-token, inter-token and request timeouts: nothing hangs.
    """
    async for token in _Dispatcher(state, job).run():
        yield token


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no token within the timeout"
    if isinstance(exc, StopAsyncIteration):
        return "stream ended without done"
    return str(exc) or type(exc).__name__


async def collect_receipt(state: CoordinatorState, job: Job) -> None:
    """After a paid request: the agent signs the receipt, the coordinator countersigns, stores.

    Runs in the background (the client already has its answer). An agent that is gone or
    refuses leaves the capture in place and logs why: the ledger is already balanced; only the
    provable receipt is missing, which the trust checks can count against the provider.
    """
    session = state.hub.sessions.get(job.provider_id or "")
    if state.identity is None or job.charged == 0 or session is None or job.attempt_id is None:
        return
    price = state.price(session.agent_id, job.model.name)
    body = ReceiptBody(
        request_id=job.request_id,
        model=job.model.name,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens(),
        price_input_per_million=price.input_per_million,
        price_output_per_million=price.output_per_million,
        amount=job.charged,
        fee=job.fee,
        provider_amount=job.charged - job.fee,
        provider=session.agent_id,
        consumer=job.consumer,
        coordinator=state.identity.agent_id,
        time=datetime.now(UTC).replace(tzinfo=None),
    )
    try:
        answer = await state.hub.sign_receipt(session, job.attempt_id, body.canonical().decode())
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        log.warning("no receipt signature for %s: %s", job.request_id, exc or "timeout")
        return
    if answer.refused or not answer.signature:
        log.warning("agent refused the receipt of %s: %s", job.request_id, answer.refused)
        return
    try:
        signed = countersign(body, answer.signature, state.identity)
        await asyncio.to_thread(Ledger(state.db).record_receipt, signed)
    except RigpoolError as exc:
        log.warning("receipt of %s not recorded: %s", job.request_id, exc.message)
